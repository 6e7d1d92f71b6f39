"""Inside the write transaction: record local writes as entries, resolve entries into values.

``Replica`` is this node's part in replication inside the write path (node id, policy,
sequence, clock): the writer's ``shim.mvcc.replica.ReplicaHook``. The applier asks it what
value a key ends up with after a local write; a peer's batch is ingested by
``shim.replication.ingest``, which hands each key's new value back to the applier's one
primitive (``RevisionSink.emit``).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

from shim.backend.base import ReadView, WriteTxn, kv_from_row
from shim.mvcc.hlc import HybridClock, wall_ms
from shim.mvcc.replica import AuthObjects, ReplicaAnswer, ReplicaRequest, RevisionSink
from shim.pb.kv_pb2 import KeyValue
from shim.replication import k8sproto
from shim.replication.entry import AUTH, Entry
from shim.replication.entry_signing import head_signature, sealed
from shim.replication.ingest import apply_request
from shim.replication.merge import KeyState, fold, since_of, step
from shim.replication.ops import Op, SinceEntry
from shim.replication.ops import dumps as dumps_ops
from shim.replication.policy import KeyRules, Policy
from shim.replication.quarantine import quarantine
from shim.replication.signing import NO_CHAIN, Signer
from shim.replication.tables import ReplicationTables, tables
from shim.replication.values import decode, identity, may_be_object, value_identity
from shim.replication.write_ops import describe_write, reproduces_write

log = logging.getLogger(__name__)

# At most this many of a write batch's entries between two signatures of the chain.
SIGN_EVERY = 64
# Keys whose newest entry this node remembers having stored as written (``Replica._as_written``;
# past this many, the key written longest ago is forgotten).
AS_WRITTEN_KEYS = 10_000


class AsWritten(NamedTuple):
    """A key whose log row holds exactly the value of this origin's newest entry of it, an
    object with an identity (``Replica._as_written``)."""

    seq: int  # of that entry
    revision: int  # of that row
    uid: str
    form: tuple[str, str] | None  # ``k8sproto.object_type``: a protobuf object's type


class MergeRule(enum.StrEnum):
    """The merge rule an entry needed (the value is the metrics label)."""

    NONE = ""  # none: the entry applied as it came
    REPLAYED = "replayed"  # it arrived out of order and the key was folded again
    LOST = "lost"  # the rules kept another write


@dataclass(slots=True)
class Resolution:
    """What a key holds after an entry: ``value`` None means absent. ``changed`` is False when
    the entry left value and lease as they were. ``new_incarnation``: the object was replaced
    by another incarnation (watchers see a DELETE, then a PUT)."""

    value: bytes | None
    lease: int
    changed: bool
    new_incarnation: bool
    rule: MergeRule = MergeRule.NONE

    @property
    def conflict(self) -> bool:
        return self.rule is not MergeRule.NONE


class Replica:
    def __init__(
        self, node_id: str, policy: Policy | None = None, max_skew_ms: int = 500,
        signer: Signer | None = None,
    ) -> None:
        self.node_id = node_id
        # What this node's entries are written under: this run's public key (a new one at
        # every start, shim.replication.signing), so no (origin, seq) is ever used twice, even
        # by a node restarted on an older copy of its database, and only this run can sign
        # under it. Without a signer (in-process tests) the node id, unsigned.
        self._signer = signer
        self.origin = signer.origin if signer is not None else node_id
        self.head = NO_CHAIN  # this origin's chain at ``seq``
        self.signed_seq = 0  # the newest of this origin's entries whose chain is signed
        self._heads: dict[int, bytes] = {}  # the chain at each checkpoint's seq
        # Bumped (by the link, once the batch committed) when a fork (equivocation) is found,
        # so links send the proof on.
        self.forks_found = 0
        self.policy = policy if policy is not None else Policy.load()
        self.clock = HybridClock()  # the writer's, from start()
        # How far ahead of this node's wall clock a peer's clock may pull it (milliseconds).
        self.max_skew_ms = max_skew_ms
        self.seq = 0
        # The largest stamp of an entry flagged as skewed: a local write at or below it may not
        # be the newest entry of its key.
        self.max_skewed_hlc = 0
        # The smallest stamp of a held entry (None: none held), so releasing them costs
        # nothing until one is due.
        self.min_held_hlc: int | None = None
        # Entries set apart by folds since the writer last asked (``take_quarantined``).
        self._quarantined = 0
        # A write over such a row describes its changes by reference (``SinceEntry``) instead
        # of working them out: a replica that holds the same value takes the write as it is,
        # and only one that holds something else works them out. In order of writes.
        self._as_written: dict[bytes, AsWritten] = {}

    # -- the writer's hook (shim.mvcc.replica.ReplicaHook) ---------------------------------------

    def newest_stamp(self, view: ReadView) -> int:
        return tables(view).max_hlc()

    def start(self, txn: WriteTxn, clock: HybridClock, auth_objects: AuthObjects) -> None:
        self.clock = clock
        repl = tables(txn)
        repl.name_origin(self.origin, self.node_id)
        self.load(repl)
        if repl.is_empty():
            # Never linked before (or a database from before replication): every live key and
            # auth object gets its first entry, so the first link shares them.
            current = [kv_from_row(row) for row in txn.range_rows(b"\0", b"", 0, 0)]
            added = self.backfill(repl, [(kv, clock.now()) for kv in current])
            for key, state, secret in auth_objects():
                self.local_auth(txn, key, state, secret, clock.now())
            self._sign_head(repl)
            repl.set_local(self.origin, self.seq, clock.last, self.head)
            if added:
                log.info("recorded %d existing keys as replication entries", added)

    def apply(
        self, txn: WriteTxn, request: ReplicaRequest, sink: RevisionSink
    ) -> int | ReplicaAnswer:
        return apply_request(self, txn, request, sink)

    def checkpoint(self) -> int:
        self._heads[self.seq] = self.head
        return self.seq

    def rollback(self, mark: int) -> None:
        self._as_written.clear()  # it may name entries that were rolled back
        self.seq = mark
        self.head = self._heads.get(mark, self.head)
        self.signed_seq = min(self.signed_seq, mark)

    def finish_batch(self, txn: WriteTxn, mark: int) -> None:
        # Only the batch's own mark can still be rolled back to (a failed COMMIT).
        self._heads = {mark: self._heads.get(mark, self.head)}
        if self.seq != mark:
            self._sign_head(tables(txn))
            # Persisted apart from the entries: retention may prune the newest one.
            tables(txn).set_local(self.origin, self.seq, self.clock.last, self.head)

    def _sign_head(self, repl: ReplicationTables) -> None:
        """Sign the chain at the newest entry (one signature covers the batch's entries)."""
        if self._signer is not None and self.signed_seq != self.seq:
            repl.set_head_sig(self.origin, self.seq,
                              head_signature(self._signer, self.seq, self.head))
            self.signed_seq = self.seq

    def load(self, repl: ReplicationTables) -> None:
        self.seq = repl.max_seq(self.origin)
        self.head = repl.origin_head(self.origin)
        self.max_skewed_hlc = repl.max_skewed_hlc()
        self.min_held_hlc = repl.min_held_hlc()

    def backfill(self, repl: ReplicationTables, current: list[tuple[KeyValue, int]]) -> int:
        """Record an entry for every key written before replication existed (an upgrade)."""
        count = 0
        for kv, hlc in current:
            if not self.policy.replicates(kv.key):
                continue
            rules = self.policy.rules_for(kv.key)
            _, _, uid = describe_write(None, kv.value, rules)
            self.seq += 1
            entry = Entry(
                self.origin, self.seq, hlc, kv.key, False, kv.value, kv.lease, None, None, uid
            )
            self._insert_local(repl, entry)
            count += 1
        return count

    # -- local writes ----------------------------------------------------------------------------

    def local_write(
        self,
        txn: WriteTxn,
        key: bytes,
        old: KeyValue | None,
        value: bytes | None,
        lease: int,
        hlc: int,
        revision: int,
    ) -> Resolution | None:
        """Record a local put (``value``) or delete (None) whose log row takes ``revision``.
        None: the key is node-local."""
        if not self.policy.replicates(key):
            return None
        repl = tables(txn)
        rules = self.policy.rules_for(key)
        # Forgotten by any write, remembered again below if this one is stored as written.
        written = self._as_written.pop(key, None)
        form = None if value is None else k8sproto.object_type(value)
        since = _since(written, old, value, form, rules)
        ops: list[Op] | None
        base_uid: str | None
        uid: str | None
        if since is not None:
            ops, base_uid, uid = [SinceEntry(since.seq)], since.uid, since.uid
        else:
            ops, base_uid, uid = describe_write(
                old.value if old is not None else None, value, rules)
        self.seq += 1
        entry = Entry(
            self.origin,
            self.seq,
            hlc,
            key,
            value is None,
            value or b"",
            lease if value is not None else 0,
            ops,
            base_uid,
            uid,
            ops_json=None if ops is None else dumps_ops(ops),  # signed and stored: once
        )
        if hlc > self.max_skewed_hlc or _is_newest(repl, entry):
            fast = self._fast_path(repl, entry, rules, value, lease, ops, base_uid, uid)
            if fast is not None:
                # The log row written for this put holds exactly the entry's value.
                self._insert_local(repl, entry, revision if value is not None else 0)
                self._remember_as_written(key, entry, revision, form)
                return fast
            self._insert_local(repl, entry)
            return self._step(repl, entry, old, rules)
        self._insert_local(repl, entry)
        return self._replay(repl, entry, old, rules)

    def _remember_as_written(
        self, key: bytes, entry: Entry, revision: int, form: tuple[str, str] | None
    ) -> None:
        if entry.deleted or entry.uid is None:
            return
        if len(self._as_written) >= AS_WRITTEN_KEYS:
            del self._as_written[next(iter(self._as_written))]  # the key written longest ago
        self._as_written[key] = AsWritten(entry.seq, revision, entry.uid, form)

    def _fast_path(
        self,
        repl: ReplicationTables,
        entry: Entry,
        rules: KeyRules,
        value: bytes | None,
        lease: int,
        ops: list[Op] | None,
        base_uid: str | None,
        uid: str | None,
    ) -> Resolution | None:
        """The resolution of the newest write of a key when it keeps exactly what was
        written; None when the fold has to decide."""
        if value is not None and ops is not None and reproduces_write(ops, rules):
            # Plain field changes over the state the writer saw: the fold keeps exactly
            # the written value, so skip it.
            return Resolution(value, lease, True, False)
        revived = uid is not None and uid in repl.tombstones(entry.key)
        if value is not None and ops is None and not revived:
            # A whole value written over the state the writer saw is exactly what the fold
            # keeps (unless it brings back a deleted incarnation); only a replaced
            # incarnation needs remembering.
            switch = base_uid is not None and uid is not None and base_uid != uid
            if switch:
                repl.add_tombstones(entry.key, {base_uid})  # type: ignore[arg-type]  # switch: not None
            return Resolution(value, lease, True, switch)
        return None

    def _insert_local(
        self, repl: ReplicationTables, entry: Entry, log_revision: int = 0
    ) -> None:
        if self._signer is not None:
            entry = sealed(entry, self.head)
            self.head = entry.chain
            if self.seq - self.signed_seq >= SIGN_EVERY:
                # A long write batch is signed on the way too, so no run of entries that one
                # signature covers outgrows a batch on a link.
                entry = entry.copy_with(
                    head_sig=head_signature(self._signer, self.seq, self.head))
                self.signed_seq = self.seq
        ingest = repl.insert(entry, None, wall_ms(entry.hlc), False, "local", log_revision)
        assert ingest is not None, "a local sequence number was reused"

    def local_auth(
        self, txn: WriteTxn, key: bytes, state: bytes, secret: str | None, hlc: int
    ) -> None:
        """Record a local write of an auth object (its whole new state) as an entry."""
        self.seq += 1
        entry = Entry(self.origin, self.seq, hlc, key, False, state, 0, None, None, None,
                      kind=AUTH, secret=secret)
        self._insert_local(tables(txn), entry)

    # -- merged entries --------------------------------------------------------------------------

    def observe(self, entry: Entry) -> bool:
        """Advance the clock past a remote entry; False if it is too far ahead (skewed): the
        caller holds it apart until ``due``."""
        if not self.due(entry.hlc):
            return False
        self.clock.observe(entry.hlc)
        return True

    def due(self, hlc: int) -> bool:
        """Whether a stamp is within the clock-skew bound of the wall clock."""
        return wall_ms(hlc) - time.time_ns() // 1_000_000 <= self.max_skew_ms

    def hold(self, entry: Entry) -> None:
        if self.min_held_hlc is None or entry.hlc < self.min_held_hlc:
            self.min_held_hlc = entry.hlc

    def is_late(self, repl: ReplicationTables, entry: Entry, ingest: int) -> bool:
        """Whether a stored entry sorts before another entry of its key: applying it means
        folding the key again from all its entries."""
        return not _is_newest(repl, entry, ingest)

    def merge(
        self, repl: ReplicationTables, entry: Entry, ingest: int, old: KeyValue | None,
        is_newest: bool | None = None,
    ) -> Resolution:
        """Apply a stored entry to its key; ``is_newest``: whether every other entry of the
        key sorts before it, when the caller knows (None: ask the table)."""
        rules = self.policy.rules_for(entry.key)
        if is_newest if is_newest is not None else _is_newest(repl, entry, ingest):
            opaque = _opaque_over_opaque(entry, old, rules)
            if opaque is not None:
                return opaque
            try:
                return self._step(repl, entry, old, rules)
            except Exception as exc:  # this entry must not stop its key or its link
                self._quarantine(repl, entry, f"applying it failed ({type(exc).__name__}: {exc})")
                lease = old.lease if old is not None else 0
                return Resolution(old.value if old is not None else None, lease, False, False)
        return self._replay(repl, entry, old, rules)

    def refold(self, repl: ReplicationTables, key: bytes, old: KeyValue | None) -> Resolution:
        """Fold ``key`` again from its entries (some were left out since)."""
        rules = self.policy.rules_for(key)
        probe = Entry(self.origin, 0, 0, key, False, b"", 0, None, None, None)
        return self._replay(repl, probe, old, rules)

    def _quarantine(self, repl: ReplicationTables, entry: Entry, reason: str) -> None:
        quarantine(repl, entry, reason, stored=True)
        self._quarantined += 1

    def take_quarantined(self) -> int:
        """How many stored entries folds set apart since the last call."""
        count, self._quarantined = self._quarantined, 0
        return count

    # -- internals -------------------------------------------------------------------------------

    def _step(
        self,
        repl: ReplicationTables,
        entry: Entry,
        old: KeyValue | None,
        rules: KeyRules,
    ) -> Resolution:
        # Only an entry that names an incarnation reads or ends one (``merge.step``): for
        # any other, the key's tombstones cannot matter, so they are not read.
        names_one = entry.uid is not None or entry.base_uid is not None
        known = repl.tombstones(entry.key) if names_one else set()
        since = since_of(entry)
        base = None if since is None else repl.entry_value(entry.key, entry.origin, since)
        if base is not None and old is not None and old.value == base:
            return _over_its_base(entry, old, known, rules)
        state = KeyState.from_stored(
            old.value if old is not None else None,
            old.lease if old is not None else 0,
            known,
            rules,
        )
        before_uid = identity(state.doc, rules)
        applied = step(state, entry, rules, base)
        repl.add_tombstones(entry.key, state.tombstones - known)
        rule = MergeRule.NONE if applied else MergeRule.LOST
        return self._resolution(state, old, before_uid, rules, rule)

    def _replay(
        self, repl: ReplicationTables, entry: Entry, old: KeyValue | None, rules: KeyRules
    ) -> Resolution:
        before_uid = identity(None if old is None else decode(old.value, rules), rules)
        entries, unreadable = repl.key_entries(entry.key)
        failed: list[tuple[Entry, str]] = []
        state = fold(entries, rules, failed)
        for bad, reason in [*unreadable, *failed]:
            self._quarantine(repl, bad, reason)
        repl.add_tombstones(entry.key, state.tombstones)
        return self._resolution(state, old, before_uid, rules, MergeRule.REPLAYED)

    @staticmethod
    def _resolution(
        state: KeyState,
        old: KeyValue | None,
        before_uid: str | None,
        rules: KeyRules,
        rule: MergeRule,
    ) -> Resolution:
        value = state.value(rules)
        after_uid = identity(state.doc, rules)
        if old is None:
            changed = value is not None
        else:
            changed = value != old.value or state.lease != old.lease
        switch = (
            old is not None
            and value is not None
            and before_uid is not None
            and after_uid is not None
            and before_uid != after_uid
        )
        return Resolution(value, state.lease, changed, switch, rule)


def _since(
    written: AsWritten | None,
    old: KeyValue | None,
    value: bytes | None,
    form: tuple[str, str] | None,
    rules: KeyRules,
) -> AsWritten | None:
    """``written``, when a write of ``value`` (of ``form``) is made over it: the key's row
    is still the one it names, and the write keeps its form and incarnation (what
    describe_write would give is then field operations); else None."""
    if (
        written is None
        or old is None
        or value is None
        or written.revision != old.mod_revision
        or written.form != form  # None for JSON: then the identity tells them apart
        or value_identity(value, rules) != written.uid
    ):
        return None
    return written


def _over_its_base(
    entry: Entry, old: KeyValue, tombstones: set[str], rules: KeyRules
) -> Resolution:
    """``merge.step`` of an entry whose operations are made since (``SinceEntry``) the value
    the key holds (``old``), without building the key's state: it is taken as it is, if it
    applies to the incarnation alive here (read from the value's identity fields only)."""
    if entry.uid != value_identity(old.value, rules) or entry.uid in tombstones or (
        entry.value == old.value and entry.lease == old.lease
    ):
        return Resolution(old.value, old.lease, False, False, MergeRule.LOST)
    return Resolution(entry.value, entry.lease, True, False)


def _opaque_over_opaque(
    entry: Entry, old: KeyValue | None, rules: KeyRules
) -> Resolution | None:
    """The resolution of the newest entry of a key when it writes a whole value that cannot
    be an object (``values.may_be_object``) over one that cannot be either, or over nothing:
    what ``merge.step`` makes of it, without building the key's state (most entries of
    plain etcd keys, and of keys kept whole, such as Leases and Events). None when the fold
    has to decide."""
    if (
        entry.deleted or entry.ops is not None or entry.uid is not None
        or entry.base_uid is not None
    ):
        return None
    if may_be_object(entry.value, rules):
        return None
    if old is None:
        return Resolution(entry.value, entry.lease, True, False)
    if may_be_object(old.value, rules):
        return None
    changed = entry.value != old.value or entry.lease != old.lease
    return Resolution(entry.value, entry.lease, changed, False)


def _is_newest(repl: ReplicationTables, entry: Entry, ingest: int = 0) -> bool:
    """Whether ``entry`` (stored at ``ingest``, or not yet stored) sorts after every other
    stored entry of its key."""
    newest = repl.newest_stamp(entry.key, ingest)
    return newest is None or entry.stamp > newest

