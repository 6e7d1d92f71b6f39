"""Replication's write requests, inside the writer's transaction: a peer's batch of entries
(dedupe, policy, fold, outcome, the peer's cursor), a peer registration, retention.

Each entry that changes a key is handed to the applier's one primitive
(``RevisionSink.emit``), which turns it into local revisions; nothing else of the write path
is touched here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shim import metrics
from shim.backend.base import WriteTxn
from shim.mvcc.hlc import wall_ms
from shim.mvcc.replica import ReplicaAnswer, ReplicaRequest, RevisionSink
from shim.mvcc.store import Store
from shim.replication.link_state import LinkStatus
from shim.replication.merge import AUTH
from shim.replication.requests import MergeRequest, MergeResult, PeerRegistration, PruneEntries
from shim.replication.tables import ReplicationTables, tables

if TYPE_CHECKING:
    from shim.replication.resolve import Replica


def apply_request(
    replica: Replica, txn: WriteTxn, request: ReplicaRequest, sink: RevisionSink
) -> int | ReplicaAnswer:
    repl = tables(txn)
    if isinstance(request, MergeRequest):
        return ingest(replica, repl, txn, request, sink)
    if isinstance(request, PeerRegistration):
        repl.upsert_peer(
            request.peer, request.name, request.address, request.role, _now_ms()
        )
        row = repl.peer(request.peer)
        return row.cursor if row is not None else 0
    if isinstance(request, PruneEntries):
        return repl.prune(request.written_before_ms, request.limit)
    if isinstance(request, LinkStatus):
        return request.record(repl)
    raise TypeError(f"not a replication request: {type(request).__name__}")


def ingest(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, req: MergeRequest,
    sink: RevisionSink,
) -> MergeResult:
    """Store a peer's entries; each one that changes a key becomes a local revision (two
    when an object incarnation replaces another: a DELETE, then a PUT)."""
    result = MergeResult(len(req.entries), 0, 0, 0)
    newest_hlc = 0
    now = _now_ms()
    for entry in req.entries:
        skewed = not replica.observe(entry)
        position = repl.insert(entry, req.peer, now, skewed, "applied")
        if position is None:
            result.duplicates += 1
            continue
        newest_hlc = max(newest_hlc, entry.hlc)
        if entry.kind == AUTH:
            # A user, role or setting: the auth store merges it (no key, no revision).
            changed = sink.merge_auth(entry.key, entry.value, entry.secret)
            repl.set_outcome(position, "applied" if changed else "unchanged")
            result.applied += changed
            result.unchanged += not changed
            continue
        if not replica.policy.replicates(entry.key):
            repl.set_outcome(position, "unchanged")  # kept and forwarded, never applied
            continue
        old = txn.get(entry.key, 0)
        resolved = replica.merge(repl, entry, position, old)
        if resolved.conflict:
            result.conflicts += 1
            result.conflict_rules.append(resolved.rule)
        if not resolved.changed:
            repl.set_outcome(position, "superseded" if resolved.conflict else "unchanged")
            result.unchanged += 1
            continue
        result.applied += 1
        sink.emit(entry.key, old, resolved.value, resolved.lease, resolved.new_incarnation)
    if req.entries and result.duplicates == len(req.entries):
        # Nothing new (entries another path delivered first): leave the peer's row alone,
        # so this transaction writes nothing and costs no fsync. The cursor moves with
        # the next batch that brings something, or the next recorded heartbeat.
        return result
    lag = now - wall_ms(newest_hlc) if newest_hlc else None
    result.lag_ms = lag
    repl.record_batch(
        req.peer, req.cursor, req.peer_high, result.received - result.duplicates,
        result.applied, result.conflicts, lag, now, req.acked,
    )
    return result


async def merge(store: Store, req: MergeRequest) -> MergeResult:
    """Apply a peer's batch through the store's write path (one transaction with its cursor)
    and count it once committed (a batch that rolls back is received again later)."""
    result = await store.write_expecting(MergeResult, req)
    metrics.record_merge(
        req.peer, result.applied, result.unchanged, result.duplicates,
        result.conflict_rules, result.lag_ms,
    )
    return result


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
