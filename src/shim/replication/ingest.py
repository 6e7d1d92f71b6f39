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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shim import metrics
from shim.backend.base import WriteTxn
from shim.mvcc.errors import StoreError
from shim.mvcc.hlc import LOGICAL_BITS, wall_ms
from shim.mvcc.replica import ReplicaAnswer, ReplicaRequest, RevisionSink
from shim.mvcc.store import Store
from shim.pb.kv_pb2 import KeyValue
from shim.replication.entry import AUTH, Entry, Stamp
from shim.replication.entry_signing import chained, message_of
from shim.replication.link_state import LinkStatus
from shim.replication.quarantine import OUTCOME as QUARANTINED
from shim.replication.quarantine import Refusal, quarantine
from shim.replication.requests import (
    FoldDeferred,
    MergeRequest,
    MergeResult,
    PeerRecords,
    PeerRegistration,
    PruneEntries,
    ReleaseHeld,
)
from shim.replication.runs import MAX_RUN, chain_signed
from shim.replication.signing import NO_CHAIN
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
    if isinstance(request, PeerRecords):
        for record in request.records:
            ingest(replica, repl, txn, record, sink)
        return len(request.records)
    if isinstance(request, ReleaseHeld):
        return release_held(replica, repl, txn, request, sink)
    if isinstance(request, FoldDeferred):
        return fold_deferred_keys(replica, repl, txn, request, sink)
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
    held until the clock reaches them.

    The batch is applied under one savepoint; only if applying an entry raises is it rolled
    back and done again with a savepoint per entry, so the entry that raises is set apart
    and the rest goes on (a savepoint per entry costs more than the rest of a small entry's
    SQL)."""
    done: list[MergeResult] = []
    failure = sink.guarded(lambda: done.append(_ingest(replica, repl, txn, req, sink, False)))
    if failure is None:
        return done[0]
    replica.take_quarantined()  # the redo counts them again
    return _ingest(replica, repl, txn, req, sink, True)


def _ingest(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, req: MergeRequest,
    sink: RevisionSink, each_guarded: bool,
) -> MergeResult:
    result = MergeResult(len(req.entries) + len(req.refused), 0, 0, 0)
    now = _now_ms()
    arrivals = _Arrivals(replica, repl, txn, req, now, sink, result, each_guarded)
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
    arrivals.fold_late_keys(req.fold)
    arrivals.record_origins()
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


@dataclass(slots=True)
class _Held:
    """How far one origin's entries are held after this batch (``advance_origin``)."""

    seq: int
    advanced: bool = False  # this batch stored one of its entries
    max_hlc: int = 0
    max_skewed_hlc: int = 0
    head: bytes = b""


class _Arrivals:
    """Entries of one batch arriving: each origin's entries are stored without gaps.

    What the batch needs to know of the tables is read once for the whole batch and kept up
    to date as it goes: each origin's high-water mark and chain (written back once, by
    ``record_origins``), which origins have entries waiting, each key's live version
    (until an entry changes it), and which keys have no entry yet (so an entry of such a key
    is the newest of its key without asking)."""

    def __init__(
        self, replica: Replica, repl: ReplicationTables, txn: WriteTxn, req: MergeRequest,
        now: int, sink: RevisionSink, result: MergeResult, each_guarded: bool,
    ) -> None:
        self._replica, self._repl, self._txn, self._sink = replica, repl, txn, sink
        self._peer, self._now, self._result = req.peer, now, result
        self._req = req
        self._batch: dict[tuple[str, int], Entry] | None = None  # by (origin, seq), for proofs
        self._each_guarded = each_guarded
        self.newest_hlc = 0  # the newest stamp applied
        self._forked = repl.forked()
        # Keys with entries that arrived late (stamped before an entry the key holds), with
        # those entries' positions: each such key is folded again once, when the batch has
        # arrived, or when a later part of its catch-up has (``MergeRequest.fold``).
        self._late: dict[bytes, list[int]] = {}
        # Keys a part of a catch-up before this batch left to fold: every entry of theirs
        # waits for that fold too.
        self._deferred = repl.deferred_keys()
        self._held: dict[str, _Held] = {}  # each origin as this batch extends it
        self._waiting = repl.pending_origins()
        keys = {e.key for e in req.entries if e.kind == ""}
        self._old: dict[bytes, KeyValue | None] = dict.fromkeys(keys)
        self._old.update(repl.current_values(keys))
        # The newest stamp of each key's entries stored by this batch, for keys that had
        # none before it (a key missing here: ask the table).
        self._newest: dict[bytes, Stamp | None] = dict.fromkeys(
            keys - repl.keys_with_entries(keys))

    def _origin(self, origin: str) -> _Held:
        held = self._held.get(origin)
        if held is None:
            held = self._held[origin] = _Held(self._repl.high_water(origin))
        return held

    def record_origins(self) -> None:
        for origin, held in self._held.items():
            if held.advanced:
                self._repl.advance_origin(origin, held.seq, held.max_hlc, held.max_skewed_hlc,
                                          held.head)

    def arrive(self, entry: Entry) -> None:
        repl, result = self._repl, self._result
        held = self._origin(entry.origin)
        high = held.seq
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
                self._waiting.add(entry.origin)
                result.waiting += 1
            return
        self._store(entry, self._peer, held)
        if entry.origin not in self._waiting:
            return
        # The entries that waited for this one follow it, in order.
        seq = entry.seq
        while (waiting := repl.take_pending(entry.origin, seq + 1)) is not None:
            follower, sender = waiting
            self._store(follower, sender, held)
            seq += 1

    def _refuse(self, entry: Entry, reason: str) -> None:
        """Record ``entry`` as refused, and answer the peer why."""
        quarantine(self._repl, entry, reason, peer=self._peer)
        self._result.quarantined += 1
        self._result.refused.append(Refusal(entry.origin, entry.seq, entry.hlc, entry.key, reason))

    def _compare(self, entry: Entry) -> None:
        """A signed entry under an (origin, seq) held here with other content proves that its
        origin equivocated."""
        if not entry.digest or entry.origin == self._replica.origin:
            return  # an origin from before signatures: no proof possible
        held = self._repl.stored(entry.origin, entry.seq)
        if held is None or not held.digest or message_of(held) == message_of(entry):
            return
        self._fork(held, entry)

    def _fork(self, held: Entry, other: Entry) -> None:
        """``other`` and ``held`` are two signed versions of one (origin, seq): keep both as
        the proof (sent on to every peer), flag the origin, and leave its entries from that
        seq on out of every fold, here as on every node that learns of it."""
        repl, origin = self._repl, other.origin
        found = False
        for version in (self._proven(other), held_proof(repl, held)):
            if version is not None:
                found = repl.add_fork(version, self._now) or found
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

    def _proven(self, entry: Entry) -> Entry | None:
        """``entry`` (from this batch) with what proves its origin wrote it when it travels
        alone: its own signature, or the chain before it and the messages after it up to the
        signed entry that ended its run here."""
        if not chain_signed(entry) or entry.head_sig:
            return entry
        batch = self._batch
        if batch is None:
            places = [r.place for r in self._req.refused if r.place is not None]
            batch = self._batch = {(e.origin, e.seq): e for e in [*self._req.entries, *places]}
        tail = []
        seq = entry.seq
        while (after := batch.get((entry.origin, seq + 1))) is not None:
            tail.append(after.message or message_of(after))
            seq += 1
            if after.head_sig:
                return entry.copy_with(head_sig=after.head_sig, tail=b"".join(tail))
        return None

    def _refold(self, key: bytes, late: Sequence[int] = ()) -> BaseException | None:
        """Fold ``key`` again from all its entries (``late``: the positions of the entries
        that made it necessary, whose outcome it decides); the failure, if it could not be."""
        repl, result = self._repl, self._result
        self._old.pop(key, None)  # read it from the table from now on

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
            for position in late:
                repl.set_outcome(position, "applied" if resolved.changed else "superseded")

        return self._sink.guarded(again)

    def fold_late_keys(self, now: bool = True, every_peer: bool = False) -> None:
        """Fold each key that received late entries once (a heal brings many late entries of
        the same keys), with those the earlier parts of this peer's catch-up deferred (of
        every peer's: ``every_peer``); if that fails, apply its late entries one by one, so
        only the entry that fails is set apart. ``now`` False: keep them for a later part
        (stored, so a stop before it loses nothing)."""
        late_keys, self._late = self._late, {}
        if not now:
            if late_keys:
                self._repl.defer_folds(self._peer, late_keys)
            return
        if self._deferred:
            for key, positions in self._repl.take_deferred(
                None if every_peer else self._peer
            ).items():
                late_keys[key] = positions + late_keys.get(key, [])
        for key, late in late_keys.items():
            if self._refold(key, late) is not None:
                for position, entry in self._repl.entries_at(late):
                    self._apply(entry, position, now=True)

    def _apply(
        self, entry: Entry, position: int, now: bool = False, is_newest: bool | None = None
    ) -> None:
        """Apply a stored entry, or keep it for ``fold_late_keys`` if it is late
        (``is_newest``: whether it sorts after every other entry of its key, if known)."""
        replica, repl = self._replica, self._repl
        if not now and entry.kind == "" and replica.policy.replicates(entry.key):
            if entry.key in self._late or entry.key in self._deferred:
                late = True
            elif is_newest is None:
                late = replica.is_late(repl, entry, position)
            else:
                late = not is_newest
            if late:
                self._late.setdefault(entry.key, []).append(position)
                return
            is_newest = True
        if entry.key in self._old:
            old = self._old[entry.key]
        else:  # changed by this batch already, or not a key-value entry
            old = None if entry.kind == AUTH else self._txn.get(entry.key, 0)
        if _apply_guarded(replica, repl, self._txn, entry, position, self._sink, self._result,
                          old, None if now else is_newest, self._each_guarded):
            self._old.pop(entry.key, None)  # read it from the table from now on

    def _store(self, entry: Entry, peer: str, held: _Held) -> None:
        """Store the next entry of its origin and apply it (unless held or pruned)."""
        replica, repl, result = self._replica, self._repl, self._result
        if entry.digest:  # signed, by itself or by its origin's chain
            entry = chained(entry, held.head or repl.origin_head(entry.origin))
            held.head = entry.chain
        held.seq, held.advanced = entry.seq, True
        newest = self._newest.get(entry.key, _UNKNOWN)
        if newest is not _UNKNOWN and (newest is None or entry.stamp > newest):
            self._newest[entry.key] = entry.stamp
        forked = self._forked.get(entry.origin)
        if forked is not None and entry.seq >= forked:
            # Its origin equivocated before it: kept in the sequence, never folded.
            repl.insert(entry, peer, self._now, False, QUARANTINED)
            held.max_hlc = max(held.max_hlc, entry.hlc)
            return
        if entry.pruned:
            # Only its place in the origin's sequence: stored and forwarded, never folded.
            repl.insert(entry, peer, self._now, False, "pruned")
            return
        due = replica.observe(entry)
        skewed = not due and entry.kind == ""
        position = repl.insert(entry, peer, self._now, not due, "held" if skewed else "applied")
        if not due:
            held.max_skewed_hlc = max(held.max_skewed_hlc, entry.hlc)
        else:
            held.max_hlc = max(held.max_hlc, entry.hlc)
        if position is None:
            result.duplicates += 1
            return
        if skewed:
            # A far-future stamp applied now would hide every write made meanwhile.
            replica.hold(entry)
            result.held += 1
            return
        self.newest_hlc = max(self.newest_hlc, entry.hlc)
        # The newest of its key when every other entry of the key sorts before it (None:
        # the tables say).
        is_newest = None if newest is _UNKNOWN else newest is None or entry.stamp > newest
        self._apply(entry, position, is_newest=is_newest)


_UNKNOWN: Any = object()


def held_proof(repl: ReplicationTables, held: Entry) -> Entry | None:
    """A stored entry with what proves its origin wrote it when it travels alone (None: its
    run here has no signed end, which only a run stored before signatures lacks)."""
    if not chain_signed(held):
        return held
    run = repl.up_to_signed(held.origin, held.seq - 1, MAX_RUN)
    if not run or not run[-1][1].head_sig:
        return None
    before = repl.chain_at(held.origin, held.seq - 1) if held.seq > 1 else NO_CHAIN
    tail = b"".join(message_of(entry) for _, entry in run[1:])
    return held.copy_with(head_sig=run[-1][1].head_sig, prev_chain=before, tail=tail)


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
        _apply_guarded(replica, repl, txn, entry, position, sink, result,
                       txn.get(entry.key, 0), None)
    replica.min_held_hlc = repl.min_held_hlc()
    result.quarantined += replica.take_quarantined()
    return result


def fold_deferred_keys(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, request: FoldDeferred,
    sink: RevisionSink,
) -> MergeResult:
    """Fold the keys a catch-up left to a part that never came (``FoldDeferred``)."""
    result = MergeResult(0, 0, 0, 0)
    peer = request.peer or ""
    arrivals = _Arrivals(replica, repl, txn, MergeRequest(peer, [], 0, 0), _now_ms(), sink,
                         result, True)
    arrivals.fold_late_keys(every_peer=request.peer is None)
    result.quarantined += replica.take_quarantined()
    return result


def _apply_guarded(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, entry: Entry, position: int,
    sink: RevisionSink, result: MergeResult, old: KeyValue | None, is_newest: bool | None,
    each_guarded: bool = True,
) -> bool:
    """``_apply_one``; with ``each_guarded``, an entry that cannot be applied is set apart,
    never the end of its batch (which would come again, and fail again, for ever). Whether
    it (may have) changed its key."""
    changed: list[bool] = []

    def apply() -> None:
        changed.append(_apply_one(replica, repl, txn, entry, position, sink, result, old,
                                  is_newest))

    if not each_guarded:
        apply()
        return changed[0]
    failure = sink.guarded(apply)
    if failure is not None:
        reason = f"applying it failed ({type(failure).__name__}: {failure})"
        quarantine(repl, entry, reason, stored=True)
        result.quarantined += 1
        return True
    return changed[0]


def _apply_one(
    replica: Replica, repl: ReplicationTables, txn: WriteTxn, entry: Entry, position: int,
    sink: RevisionSink, result: MergeResult, old: KeyValue | None, is_newest: bool | None,
) -> bool:
    if entry.kind == AUTH:
        # A user, role or setting: the auth store merges it (no key, no revision).
        changed = sink.merge_auth(entry.key, entry.value, entry.secret)
        repl.set_outcome(position, "applied" if changed else "unchanged")
        result.applied += changed
        result.unchanged += not changed
        return False
    if not replica.policy.replicates(entry.key):
        repl.set_outcome(position, "unchanged")  # kept and forwarded, never applied
        return False
    resolved = replica.merge(repl, entry, position, old, is_newest)
    if resolved.conflict:
        result.conflicts += 1
        result.conflict_rules.append(resolved.rule)
    if not resolved.changed:
        repl.set_outcome(position, "superseded" if resolved.conflict else "unchanged")
        result.unchanged += 1
        return False
    result.applied += 1
    sink.emit(entry.key, old, resolved.value, resolved.lease, resolved.new_incarnation)
    return True


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


async def fold_deferred(store: Store, peer: str | None = None) -> None:
    """Fold the keys ``peer``'s catch-up (None: any) deferred to a part that never came: its
    link ended, or the node stopped."""
    try:
        if await store.read(lambda view: bool(tables(view).deferred_keys())):
            result = await store.write_expecting(MergeResult, FoldDeferred(peer))
            log.info("folded the keys a catch-up left unfolded: %d changed", result.applied)
    except StoreError as exc:  # the next merge of the peer, or a restart, folds them
        log.warning("keys a catch-up left unfolded not folded yet: %s", exc)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
