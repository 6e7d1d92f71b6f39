"""Copying the trees objects are merged as (JSON, or Kubernetes protobuf read as the same
tree): dicts, lists and immutable leaves.

``copy.deepcopy`` would do, at about eight times the cost (it keeps a memo of every node for
shared references, which a tree read from bytes never has). Folding a key copies its object
once per entry with field operations, and a heal folds every key both sides wrote.
"""

from __future__ import annotations

import copy
from typing import Any

from shim.replication.k8sproto import ProtoObject

_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def copy_tree(node: Any) -> Any:
    """A deep copy of ``node``; what is not a dict, a list or an immutable leaf is copied
    by ``copy.deepcopy``."""
    kind = type(node)
    if kind in _LEAVES:
        return node
    if kind is dict or kind is ProtoObject:
        return kind({key: copy_tree(value) for key, value in node.items()})
    if kind is list:
        return [copy_tree(item) for item in node]
    return copy.deepcopy(node)
