"""Origins: the names entries are written under.

A node takes a new origin every time it starts. Its entries are numbered 1, 2, ... under that
origin, and only that run of the node writes under it, so an (origin, seq) can never be used
twice, not even by a node restarted on an older copy of its database or a restored snapshot:
the restored node writes under a new origin, and what its earlier runs wrote comes back from
its peers, whose version vectors hold more of those origins than it does.
"""

from __future__ import annotations

import secrets


def new_origin() -> str:
    """A fresh origin for this run of the node (128 random bits)."""
    return secrets.token_hex(16)
