"""Runs of an origin's entries on a link, for origins that sign their hash chain once for many
entries instead of each entry (``signing.head_message``).

A receiver checks such entries a run at a time: the origin's consecutive entries in a batch,
chained from the chain before the run's first entry (sent with it, ``prev_chain``) up to the
signature of the chain at the run's last entry (``head_sig``): one signature check for the
whole run. So a sender makes every run it sends start with the chain before it and end at an
entry whose chain the origin signed (it holds that signature: the origin's own entries have one
at the end of each write batch and every ``resolve.SIGN_EVERY`` entries, and a node keeps the
signature that ended each run it received), reading on to the next signed entry if a page of
the log stops short of one, and cutting batches only after a signed entry. Signatures inside
a run are left out but one every 64 entries or 1 MiB, which the receiver checks and keeps, so
runs stay that short however often an entry is relayed.
"""

from __future__ import annotations

from shim.pb import replication_pb2 as pb
from shim.replication.entry import Entry
from shim.replication.framing import BATCH_HEADER_BYTES, EntryTooLarge, framed_size
from shim.replication.signing import NO_CHAIN, is_signed_origin
from shim.replication.tables import ReplicationTables

# How far a sender reads on to reach an origin's next signed entry (more than any honest
# run between two signatures).
MAX_RUN = 10_000
# A signature inside a run is kept at least this often (the origin signs every 64 entries of
# a long write batch; each kept one costs the receiver one check).
KEEP_EVERY = 64
KEEP_BYTES = 1024 * 1024


def chain_signed(entry: Entry) -> bool:
    """Whether ``entry``'s origin signs its chain rather than each entry."""
    return not entry.sig and bool(entry.digest)


def signed_runs(
    repl: ReplicationTables, rows: list[tuple[int, Entry]], sent: dict[str, int]
) -> tuple[list[tuple[int, Entry]], set[int]]:
    """``rows`` (ingest position, entry) with each chain-signed run ending at a signed entry
    (the entries up to it read on and placed after the run's end) and starting with the chain
    before it, unless it goes on from the last entry of its origin sent on this link
    (``sent``: the receiver chains from there); and the positions of the entries read on."""
    held = {(e.origin, e.seq) for _, e in rows}
    out: list[tuple[int, Entry]] = []
    added: set[int] = set()
    previous = dict(sent)  # each origin's last seq placed so far
    for ingest, entry in rows:
        if not chain_signed(entry):
            out.append((ingest, entry))
            continue
        origin = entry.origin
        if previous.get(origin) != entry.seq - 1:
            before = repl.chain_at(origin, entry.seq - 1) if entry.seq > 1 else NO_CHAIN
            entry = entry.copy_with(prev_chain=before)
        out.append((ingest, entry))
        previous[origin] = entry.seq
        if entry.head_sig or (origin, entry.seq + 1) in held:
            continue
        for position, more in repl.up_to_signed(origin, entry.seq, MAX_RUN):
            if (origin, more.seq) in held:
                break
            out.append((position, more))
            added.add(position)
            held.add((origin, more.seq))
            previous[origin] = more.seq
    return out, added


def cut_runs(
    rows: list[tuple[int, pb.Entry]], target: int, limit: int
) -> list[tuple[int, pb.Entry]]:
    """The rows (ingest position, wire entry) for one batch: up to ``target`` encoded bytes and
    never more than ``limit``, cut only where every chain-signed run taken ends at a signed
    entry (a run longer than ``target`` goes alone). Signatures inside a run are dropped."""
    budget = limit - BATCH_HEADER_BYTES
    taken: list[tuple[int, pb.Entry]] = []
    size = 0
    for ingest, msg in rows:
        frame = framed_size(msg)
        if taken and size + frame > min(target, budget):
            break
        if frame > budget:
            raise EntryTooLarge(
                f"entry {msg.origin}/{msg.seq} ({frame} bytes) is larger than the peer "
                f"accepts in one message ({limit} bytes)"
            )
        taken.append((ingest, msg))
        size += frame
    if len(taken) < len(rows):
        taken = _to_signed_ends(taken) or _first_run(rows, budget, limit)
    _drop_inner_signatures(taken)
    return taken


def _to_signed_ends(taken: list[tuple[int, pb.Entry]]) -> list[tuple[int, pb.Entry]]:
    """``taken`` without each chain-signed origin's entries after its last signed one."""
    last: dict[str, int] = {}
    for index, (_, msg) in enumerate(taken):
        if msg.head_sig and not msg.sig:
            last[msg.origin] = index
    return [
        (ingest, msg) for index, (ingest, msg) in enumerate(taken)
        if msg.sig or not is_signed_origin(msg.origin) or index <= last.get(msg.origin, -1)
    ]


def _first_run(rows: list[tuple[int, pb.Entry]], budget: int, limit: int) -> list[
        tuple[int, pb.Entry]]:
    """The first entry's run up to its signed end, alone (it is longer than a batch)."""
    origin = rows[0][1].origin
    run: list[tuple[int, pb.Entry]] = []
    size = 0
    for ingest, msg in rows:
        if msg.origin != origin:
            continue
        run.append((ingest, msg))
        size += framed_size(msg)
        if size > budget:
            raise EntryTooLarge(
                f"entries {origin}/{run[0][1].seq}-{msg.seq} that one signature covers are "
                f"larger than the peer accepts in one message ({limit} bytes)"
            )
        if msg.head_sig:
            return run
    return run


def _drop_inner_signatures(taken: list[tuple[int, pb.Entry]]) -> None:
    """Leave out the signatures inside runs, but one every ``KEEP_EVERY`` entries or
    ``KEEP_BYTES``: the receiver checks and keeps those too, so it can send the origin's
    entries on in runs no longer than that."""
    following = {(msg.origin, msg.seq) for _, msg in taken}
    since: dict[str, tuple[int, int]] = {}  # per origin: entries and bytes since one kept
    for _, msg in taken:
        count, size = since.get(msg.origin, (0, 0))
        count, size = count + 1, size + msg.ByteSize()
        if msg.head_sig and not msg.sig and (msg.origin, msg.seq + 1) in following and (
                count < KEEP_EVERY and size < KEEP_BYTES):
            msg.ClearField("head_sig")
        elif msg.head_sig:
            count = size = 0
        since[msg.origin] = (count, size)
