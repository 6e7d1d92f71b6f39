"""What a committed write looks like to its readers: the watch hub, its wire encoding and the
serving processes of ``--processes N`` (a separate module, so they need not import the write
engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shim.pb.kv_pb2 import KeyValue


@dataclass(slots=True)
class Change:
    """One event of a committed revision: a new version (or tombstone) and what it replaced."""

    kv: KeyValue
    prev: KeyValue | None
    deleted: bool


@dataclass(slots=True)
class Revision:
    """Everything one revision changed, in the order it happened."""

    revision: int
    changes: list[Change] = field(default_factory=list)


# Told of every committed write batch, with its revisions in order.
CommitListener = Callable[[list[Revision]], None]
