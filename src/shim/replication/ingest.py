"""Replication's write requests, inside the writer's transaction: a peer's batch of entries
(dedupe, policy, fold, outcome, the peer's cursor), held entries the clock has reached, a
peer registration, a link's state, retention.

Each entry that changes a key is handed to the applier's one primitive
(``RevisionSink.emit``), which turns it into local revisions; nothing else of the write path
is touched here. An entry whose application raises is set apart (quarantined, inside a
savepoint the sink offers) and the batch goes on: no stored entry may stop its key or its link.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shim import metrics
from shim.backend.base import WriteTxn
from shim.mvcc.hlc import LOGICAL_BITS, wall_ms
from shim.mvcc.replica import ReplicaAnswer, ReplicaRequest, RevisionSink
from shim.mvcc.store import Store
from shim.replication.entry_signing import chained, message_of
from shim.replication.link_state import LinkStatus
from shim.replication.merge import AUTH, Entry
from shim.replication.quarantine import OUTCOME as QUARANTINED
from shim.replication.quarantine import Refusal, quarantine
from shim.replication.requests import (
    MergeRequest,
    MergeResult,
    PeerRegistration,
    PruneEntries,
    ReleaseHeld,
)
from shim.replication.tables import ReplicationTables, tables

log = logging.getLogger(__name__)

# An entry further ahead of its origin's high-water mark than this is refused, not kept: an
# honest sender sends each origin's entries in order, so only a liar opens such a gap.
MAX_GAP = 100_000

if TYPE_CHECKING:
    from shim.replication.resolve import Replica


def apply_request(
    replica: Replica, txn: WriteTxn, request: ReplicaRequest, sink: RevisionSink
) -> int | ReplicaAnswer:
    repl = tables(txn)
    if isinstance(request, MergeRequest):
        return ingest(replica, repl, txn, request, sink)
    if isinstance(request, ReleaseHeld):
        return release_held(replica, repl, txn, request, sink)
    if isinstance(request, PeerRegistration):
        repl.upsert_peer(
            request.peer, request.name, request.address, request.role, _now_ms()
        )
        if request.origin:
            repl.name_origin(request.origin, request.peer)
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
    when an object incarnation replaces another: a DELETE, then a PUT). Entries the ingest
    checks refused are recorded; entries stamped beyond the clock-skew bound are stored and
    held until the clock reaches them."""
    result = MergeResult(len(req.entries) + len(req.refused), 0, 0, 0)
    now = _now_ms()
    arrivals = _Arrivals(replica, repl, txn, req.peer, now, sink, result)
    for refusal in req.refused:
        quarantine(repl, refusal, refusal.reason, peer=req.peer)
        result.quarantined += 1
        stub = refusal.place
        if stub is not None:
            # It keeps its place in its origin's sequence (so the origin's later entries
            # are not kept waiting for it), without its content: never folded, and every
            # node it is forwarded to leaves it out the same way.
            arrivals.arrive(stub)
    for entry in req.entries:
        arrivals.arrive(entry)
    arrivals.fold_late_keys()
    newest_hlc = arrivals.newest_hlc
    result.quarantined += replica.take_quarantined()
    if req.entries and result.duplicates == len(req.entries) and not req.refused:
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


class _Arrivals:
    """Entries of one batch arriving: each origin's entries are stored without gaps."""

    def __init__(
        self, replica: Replica, repl: ReplicationTables, txn: WriteTxn, peer: str, now: int,
        sink: RevisionSink, result: MergeResult,
    ) -> None:
        self._replica, self._repl, self._txn, self._sink = replica, repl, txn, sink
        self._peer, self._now, self._result = peer, now, result
        self.newest_hlc = 0  # the newest stamp applied
        self._forked = repl.forked()
        self._heads: dict[str, bytes] = {}  # each origin's chain as this batch extends it
        # Keys with entries that arrived late (stamped before an entry the key holds), with
        # those entries: each such key is folded again once, when the batch has arrived.
        self._late: dict[bytes, list[tuple[Entry, int]]] = {}

    def arrive(self, entry: Entry) -> None:
        repl, result = self._repl, self._result
        high = repl.high_water(entry.origin)
        if entry.seq <= high:
            self._compare(entry)
            result.duplicates += 1
            return
        if entry.origin == self._replica.origin:
            # Only this run of this node writes under its origin: a peer cannot hold more.
            self._refuse(entry, "an entry under this node's own origin")
            return
        if entry.seq > high + 1:
            # Entries before it are missing: it waits until they come, so the origin's
            # high-water mark never passes an entry this node does not hold.
            if entry.seq - high > MAX_GAP:
                self._refuse(entry, f"seq {entry.seq} is more than {MAX_GAP} ahead of {high} "
                                    "held here")
            elif repl.hold_pending(entry, self._peer, self._now):
                result.waiting += 1
            return
        self._store(entry, self._peer)
        # The entries that waited for this one follow it, in order.
        seq = entry.seq
        while (waiting := repl.take_pending(entry.origin, seq + 1)) is not None:
            follower, sender = waiting
            self._store(follower, sender)
            seq += 1

    def _refuse(self, entry: Entry, reason: str) -> None:
        """Record ``entry`` as refused, and answer the peer why."""
        quarantine(self._repl, entry, reason, peer=self._peer)
        self._result.quarantined += 1
        self._result.refused.append(Refusal(entry.origin, entry.seq, entry.hlc, entry.key, reason))

    def _compare(self, entry: Entry) -> None:
        """A signed entry under an (origin, seq) held here with other content proves that its
        origin equivocated."""
        if not entry.sig or entry.origin == self._replica.origin:
            return
        held = self._repl.stored(entry.origin, entry.seq)
        if held is None or not held.sig or message_of(held) == message_of(entry):
            return
        self._fork(held, entry)

    def _fork(self, held: Entry, other: Entry) -> None:
        """``other`` and ``held`` are two signed versions of one (origin, seq): keep both as
        the proof (sent on to every peer), flag the origin, and leave its entries from that
        seq on out of every fold, here as on every node that learns of it."""
        repl, origin = self._repl, other.origin
        found = repl.add_fork(other, self._now)
        found = repl.add_fork(held, self._now) or found
        cut = min(self._forked.get(origin, other.seq), other.seq)
        self._forked[origin] = cut
        repl.mark_forked(origin, cut, self._now)
        for key in repl.quarantine_from(origin, cut):
            failure = self._refold(key)
            if failure is not None:
                log.warning("folding %r again after an equivocation failed: %s", key, failure)
        if found:
            self._result.forks += 1  # the link adds it to forks_found once committed
            reason = (f"equivocation: origin {origin} signed two different entries as seq "
                      f"{other.seq}; its entries from seq {cut} on are left out")
            self._refuse(other, reason)

    def _refold(
        self, key: bytes, late: Sequence[tuple[Entry, int]] = ()
    ) -> BaseException | None:
        """Fold ``key`` again from all its entries (``late``: the entries of this batch that
        made it necessary, whose outcome it decides); the failure, if it could not be."""
        repl, result = self._repl, self._result

        def again() -> None:
            old = self._txn.get(key, 0)
            resolved = self._replica.refold(repl, key, old)
            if resolved.changed:
                self._sink.emit(key, old, resolved.value, resolved.lease,
                                resolved.new_incarnation)
            # Counted once nothing above can fail (a failure redoes the entries one by one).
            result.applied += resolved.changed
            result.unchanged += len(late) - resolved.changed if late else 0
            result.conflicts += len(late)
            result.conflict_rules.extend([resolved.rule] * len(late))
            for _, position in late:
                repl.set_outcome(position, "applied" if resolved.changed else "superseded")

        return self._sink.guarded(again)

    def fold_late_keys(self) -> None:
        """Fold each key that received late entries once (a heal brings many late entries of
        the same keys); if that fails, apply its late entries one by one, so only the entry
        that fails is set apart."""
        late_keys, self._late = self._late, {}
        for key, late in late_keys.items():
            if self._refold(key, late) is not None:
                for entry, position in late:
                    self._apply(entry, position, now=True)

    def _apply(self, entry: Entry, position: int, now: bool = False) -> None:
        """Apply a stored entry, or keep it for ``fold_late_keys`` if it is late."""
        replica, repl = self._replica, self._repl
        if not now and entry.kind == "" and replica.policy.replicates(entry.key) and (
            entry.key in self._late or replica.is_late(repl, entry, position)
        ):
            self._late.setdefault(entry.key, []).append((entry, position))
            return
        _apply_guarded(replica, repl, self._txn, entry, position, self._sink, self._result)

    def _store(self, entry: Entry, peer: str) -> None:
        """Store the next entry of its origin and apply it (unless held or pruned)."""
        replica, repl, result = self._replica, self._repl, self._result
        if entry.sig:
            previous = self._heads.get(entry.origin) or repl.origin_head(entry.origin)
            entry = chained(entry, previous)
            self._heads[entry.origin] = entry.chain
        forked = self._forked.get(entry.origin)
        if forked is not None and entry.seq >= forked:
            # Its origin equivocated before it: kept in the sequence, never folded.
            repl.insert(entry, peer, self._now, False, QUARANTINED)
            return
        if entry.pruned:
            # Only its place in the origin's sequence: stored and forwarded, never folded.
            repl.insert(entry, peer, self._now, False, "pruned")
            return
        due = replica.observe(entry)
        held = not due and entry.kind == ""
        position = repl.insert(entry, peer, self._now, not due, "held" if held else "applied")
        if position is None:
            result.duplicates += 1
            return
        if held:
            # A far-future stamp applied now would hide every write made meanwhile.
            replica.hold(entry)
            result.held += 1
            return
        self.newest_hlc = max(self.newest_hlc, entry.hlc)
        self._apply(entry, position)


def release_held(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, req: ReleaseHeld,
    sink: RevisionSink,
) -> MergeResult:
    """Apply held entries the clock has reached, as if they arrived now."""
    horizon = ((_now_ms() + replica.max_skew_ms + 1) << LOGICAL_BITS) - 1
    due = repl.held_due(horizon, req.limit)
    result = MergeResult(len(due), 0, 0, 0)
    for position, entry in due:
        replica.observe(entry)
        repl.set_outcome(position, "applied")
        _apply_guarded(replica, repl, txn, entry, position, sink, result)
    replica.min_held_hlc = repl.min_held_hlc()
    result.quarantined += replica.take_quarantined()
    return result


def _apply_guarded(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, entry: Entry, position: int,
    sink: RevisionSink, result: MergeResult,
) -> None:
    """``_apply_one``, but an entry that cannot be applied is set apart, never the end of its
    batch (which would come again, and fail again, for ever)."""
    failure = sink.guarded(lambda: _apply_one(replica, repl, txn, entry, position, sink, result))
    if failure is not None:
        reason = f"applying it failed ({type(failure).__name__}: {failure})"
        quarantine(repl, entry, reason, stored=True)
        result.quarantined += 1


def _apply_one(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, entry: Entry, position: int,
    sink: RevisionSink, result: MergeResult,
) -> None:
    if entry.kind == AUTH:
        # A user, role or setting: the auth store merges it (no key, no revision).
        changed = sink.merge_auth(entry.key, entry.value, entry.secret)
        repl.set_outcome(position, "applied" if changed else "unchanged")
        result.applied += changed
        result.unchanged += not changed
        return
    if not replica.policy.replicates(entry.key):
        repl.set_outcome(position, "unchanged")  # kept and forwarded, never applied
        return
    old = txn.get(entry.key, 0)
    resolved = replica.merge(repl, entry, position, old)
    if resolved.conflict:
        result.conflicts += 1
        result.conflict_rules.append(resolved.rule)
    if not resolved.changed:
        repl.set_outcome(position, "superseded" if resolved.conflict else "unchanged")
        result.unchanged += 1
        return
    result.applied += 1
    sink.emit(entry.key, old, resolved.value, resolved.lease, resolved.new_incarnation)


async def merge(store: Store, req: MergeRequest) -> MergeResult:
    """Apply a peer's batch through the store's write path (one transaction with its cursor)
    and count it once committed (a batch that rolls back is received again later)."""
    result = await store.write_expecting(MergeResult, req)
    if result.forks:
        metrics.REPLICATION_FORKS.inc(result.forks)
    metrics.record_merge(
        req.peer, result.applied, result.unchanged, result.duplicates,
        result.conflict_rules, result.lag_ms, result.held, result.quarantined,
    )
    return result


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
