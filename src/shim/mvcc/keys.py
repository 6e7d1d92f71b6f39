"""etcd's key range conventions."""

from __future__ import annotations

# A range is [key, end). Returned `end` values:
SINGLE_KEY: None = None  # no range_end: just `key`
UNBOUNDED = b""  # range_end "\0": every key >= key


def range_end(raw: bytes) -> bytes | None:
    """Translate a request's range_end into None (single key), b"" (no upper bound) or a bound."""
    if not raw:
        return SINGLE_KEY
    if raw == b"\x00":
        return UNBOUNDED
    return raw


def in_range(candidate: bytes, key: bytes, end: bytes | None) -> bool:
    if end is None:
        return candidate == key
    return candidate >= key and (end == UNBOUNDED or candidate < end)
