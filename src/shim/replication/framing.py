"""How large a Link message may be, cutting entries into batches that fit it, and the range
every number read from a link must be in.

Each side states in its Hello the largest message it accepts (its gRPC receive limit); a
sender cuts batches by their encoded size to at most the smaller of that and its own limit,
so a batch is never refused for its size. The limits admit the largest entry a client can
cause (a value of --max-request-bytes plus its field operations), so one entry always fits.
"""

from __future__ import annotations

from collections.abc import Iterable

from shim.pb import replication_pb2 as pb

# What a node that states no limit accepts: gRPC's default receive limit.
GRPC_DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024
# Room for the LinkMessage and Batch fields around the entries (cursor, high, hlc, acked).
BATCH_HEADER_BYTES = 128
# Positions, sequence numbers and clock stamps are stored as SQLite integers (signed 64 bit).
MAX_NUMBER = 2**63 - 1


class OutOfRange(ValueError):
    """A number from a peer that no honest node can have sent."""


class EntryTooLarge(ValueError):
    """An entry larger than the peer accepts in one message."""


def check_numbers(what: str, **numbers: int) -> None:
    """Refuse a number beyond what a node can store, with its name and value."""
    for name, value in numbers.items():
        if not 0 <= value <= MAX_NUMBER:
            raise OutOfRange(f"{what}: {name} {value} is out of range (at most 2^63-1)")


def message_limit(own: int, stated_by_peer: int) -> int:
    """The largest message to send on a link: what both sides accept."""
    return min(own, stated_by_peer or GRPC_DEFAULT_MESSAGE_BYTES)


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def framed_size(entry: pb.Entry) -> int:
    """What ``entry`` adds to a Batch's encoded size (its tag, length and bytes)."""
    size = entry.ByteSize()
    return 1 + _varint_bytes(size) + size


def cut_batch(
    rows: Iterable[tuple[int, pb.Entry]], target: int, limit: int
) -> tuple[list[pb.Entry], int | None]:
    """Entries from ``rows`` (log position, entry) for one batch: up to ``target`` encoded
    bytes, and never more than ``limit`` (a single entry over ``target`` goes alone). Answers
    the entries and, if it stopped early, the position of the last one taken."""
    budget = limit - BATCH_HEADER_BYTES
    entries: list[pb.Entry] = []
    size = 0
    last = 0
    for ingest, entry in rows:
        frame = framed_size(entry)
        if not entries and frame > budget:
            raise EntryTooLarge(
                f"entry {entry.origin}/{entry.seq} ({frame} bytes) is larger than the peer "
                f"accepts in one message ({limit} bytes)"
            )
        if entries and size + frame > min(target, budget):
            return entries, last
        entries.append(entry)
        size += frame
        last = ingest
    return entries, None
