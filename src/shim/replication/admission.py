"""What a peer may send: every entry is checked in full before anything stores or applies it.

A link hands each received batch here. The batch's own bookkeeping (cursor, newest position)
must fit the tables; a batch that does not is the peer's fault and ends the link. Each entry
is checked on its own: its fields, its size (the limits the client API enforces), its
operations (``ops.parse_ops`` already refused unknown names, wrong arity and wrong types) and
what those operations may touch under the key's merge policy: an identity or first-write-wins
field is never changed by an operation, a counter only takes deltas, a set only elements,
and nothing reaches inside a field the policy keeps whole. An entry that fails is refused
whole with its reason (``Refusal``) and the rest of the batch goes on: one bad entry never
stops a link.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.api.validate import RAFT_WRAPPER_BYTES
from shim.pb import replication_pb2 as pb
from shim.pb.rpc_pb2 import PutRequest
from shim.replication import ops as field_ops
from shim.replication.entry import AUTH, Entry
from shim.replication.framing import MAX_NUMBER
from shim.replication.ops import (
    AddDelta,
    DeleteField,
    DropIfEmpty,
    FirstWrite,
    KeyedDelete,
    KeyedSet,
    Op,
    Reorder,
    SetAdd,
    SetField,
    SetFromValue,
    SetRemove,
    SinceEntry,
)
from shim.replication.policy import KeyRules, Path_, Policy
from shim.replication.quarantine import Refusal
from shim.replication.signing import (
    DIGEST_BYTES,
    body_digest,
    chain,
    head_message,
    is_signed_origin,
    message_hash,
    verifies,
)

MAX_ORIGIN_CHARS = 256
# An honest entry's operations restate at most the changed fields of the written value (bytes
# as base64 text): twice the largest request leaves room for that and no more.
OPS_SIZE_FACTOR = 2
AUTH_PREFIXES = (b"user/", b"role/", b"setting/")
KINDS = ("", AUTH)

# Policies whose field an operation never reaches inside: the field is one value (or a
# counter, a set, a keyed list of whole elements) and only operations on the field itself,
# of the kinds below, apply to it.
_WHOLE = frozenset({"first-write-wins", "identity", "local", "atomic", "counter", "set",
                    "keyed-list"})
# What each policy admits on the field itself (``set``/``del`` are the fallbacks the origin
# uses when a value does not have the policy's shape, e.g. a counter that is not a number).
_REPLACE = (SetField, SetFromValue, DeleteField)  # a field replaced whole, or deleted
_ALLOWED: dict[str, tuple[type, ...]] = {
    "lww": _REPLACE,
    "atomic": _REPLACE,
    "map": (*_REPLACE, FirstWrite, DropIfEmpty),
    "counter": (*_REPLACE, AddDelta),
    "set": (*_REPLACE, FirstWrite, DropIfEmpty, SetAdd, SetRemove, Reorder),
    "keyed-list": (*_REPLACE, FirstWrite, DropIfEmpty, KeyedSet, KeyedDelete, Reorder),
    "first-write-wins": (FirstWrite,),
    "identity": (),
    "local": (),
}


# A PutRequest's framing beyond its key's and value's bytes: three tags, two lengths and the
# lease, each varint at most 10 bytes.
_PUT_FRAMING = 3 + 2 * 10 + 10


class BadBatch(ValueError):
    """A batch whose own fields cannot be right; the link ends with this reason."""


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """The client API's limits, which entries from peers must respect too."""

    max_request_bytes: int
    # Entries of origins without a key (from before signatures) are admitted only stamped
    # before this (``repl_signing.unsigned_before``); None: any (in-process tests).
    unsigned_before: int | None = None


def check_batch(batch: pb.Batch) -> None:
    """The batch's own positions agree (the link checks first that each number is in range,
    ``framing.check_numbers``)."""
    if batch.cursor > batch.high and batch.high:
        raise BadBatch(f"batch cursor {batch.cursor} is past the peer's newest {batch.high}")


def admit(msg: pb.Entry, policy: Policy, limits: IngestLimits) -> Entry | Refusal:
    """The entry ``msg`` carries, or why it is refused."""
    carried: Entry | None = None
    try:
        _check_numbers(msg)
        carried = _verified(msg, limits)
        return _admit(msg, policy, limits, carried)
    except _Refused as exc:
        return Refusal(
            origin=msg.origin, seq=msg.seq, hlc=msg.hlc, key=bytes(msg.key), reason=str(exc),
            place=None if carried is None else _place(carried),
        )


class _Refused(ValueError):
    pass


FORGED = ("forged: the signature does not verify with the origin's key (only the node that "
          "owns an origin writes under it)")


def admit_batch(
    wire: list[pb.Entry], policy: Policy, limits: IngestLimits,
    accepted: dict[str, tuple[int, bytes]] | None = None,
) -> tuple[list[Entry], list[Refusal]]:
    """The entries a batch carries, or why each is refused. Entries of an origin that signs
    its chain rather than each entry are checked a run at a time (``runs``): chained from the
    chain the run starts from up to the one signature at its end. ``accepted``: per origin,
    the last entry accepted on this link and the chain there (kept up to date), where a run
    sent without the chain before it goes on from."""
    accepted = {} if accepted is None else accepted
    results: list[Entry | Refusal | None] = [None] * len(wire)
    runs: dict[str, _Run] = {}
    for index, msg in enumerate(wire):
        if msg.sig or not is_signed_origin(msg.origin):
            results[index] = admit(msg, policy, limits)
            continue
        try:
            _check_numbers(msg)
            message, digest = _message(msg)
        except _Refused as exc:
            results[index] = _refusal(msg, str(exc))
            continue
        run = runs.get(msg.origin)
        if run is None or msg.prev_chain or msg.seq != run.seq + 1:
            if run is not None:
                run.end(results, FORGED)
            before = bytes(msg.prev_chain)
            if not before and accepted.get(msg.origin, (0, b""))[0] == msg.seq - 1:
                before = accepted[msg.origin][1]
            run = runs[msg.origin] = _Run(before)
        run.add(index, msg, message, digest)
        if msg.head_sig or msg.tail:
            if run.close(results, policy, limits) and not msg.tail:
                accepted[msg.origin] = (msg.seq, run.chain)
            if msg.tail:
                del runs[msg.origin]  # a proof alone: nothing follows it
    for run in runs.values():
        run.end(results, FORGED)
    entries = [r for r in results if isinstance(r, Entry)]
    refused = [r for r in results if isinstance(r, Refusal)]
    return entries, refused


class _Run:
    """An origin's consecutive entries in a batch, chained from the chain before the first."""

    def __init__(self, before: bytes) -> None:
        self.seq = 0
        self.broken = len(before) != DIGEST_BYTES
        self._chain = before
        # index in the batch, entry, its message, its digest, the chain before and after it
        self._open: list[tuple[int, pb.Entry, bytes, bytes, bytes, bytes]] = []

    def add(self, index: int, msg: pb.Entry, message: bytes, digest: bytes) -> None:
        before, self._chain = self._chain, chain(self._chain, message)
        self._open.append((index, msg, message, digest, before, self._chain))
        self.seq = msg.seq

    @property
    def chain(self) -> bytes:
        return self._chain

    def close(self, results: list[Entry | Refusal | None], policy: Policy,
              limits: IngestLimits) -> bool:
        """The run's open entries up to here, checked against the signature of the last;
        whether it verified."""
        index, last, *_ = self._open[-1]
        head, seq = self._chain, last.seq
        tail = bytes(last.tail)
        if len(tail) % DIGEST_BYTES:
            self.broken = True
        for start in range(0, len(tail), DIGEST_BYTES):
            head = chain(head, tail[start:start + DIGEST_BYTES])
            seq += 1
        if self.broken or seq > MAX_NUMBER or not verifies(
                last.origin, head_message(last.origin, seq, head), last.head_sig):
            self.end(results, FORGED)
            return False
        for index, msg, message, digest, before, after in self._open:
            ends = msg is last
            carried = _carried(
                msg, digest, message, after=after, prev_chain=before,
                head_sig=bytes(msg.head_sig) if ends else b"", tail=tail if ends else b"",
            )
            try:
                results[index] = _admit(msg, policy, limits, carried)
            except _Refused as exc:
                results[index] = _refusal(msg, str(exc), _place(carried))
        self._open = []
        return True

    def end(self, results: list[Entry | Refusal | None], reason: str) -> None:
        """Refuse the run's open entries: no valid signature covers them."""
        for index, msg, *_ in self._open:
            results[index] = _refusal(msg, reason)
        self._open = []
        self.broken = True  # what follows does not chain from anything checked


def _message(msg: pb.Entry) -> tuple[bytes, bytes]:
    """What the origin's chain takes in for ``msg``, and its body digest."""
    if msg.pruned and len(msg.digest) != DIGEST_BYTES:
        raise _Refused(f"a pruned entry carries a body digest of {DIGEST_BYTES} bytes")
    digest = bytes(msg.digest) if msg.pruned else body_digest(
        msg.value, msg.ops if msg.has_ops else None, msg.secret or None)
    message = message_hash(msg.origin, msg.seq, msg.hlc, msg.key, msg.deleted, msg.lease,
                           msg.base_uid or None, msg.uid or None, msg.kind, digest)
    return message, digest


def _refusal(msg: pb.Entry, reason: str, place: Entry | None = None) -> Refusal:
    return Refusal(origin=msg.origin, seq=msg.seq, hlc=msg.hlc, key=bytes(msg.key),
                   reason=reason, place=place)


def _check_numbers(msg: pb.Entry) -> None:
    if not msg.origin or len(msg.origin) > MAX_ORIGIN_CHARS:
        raise _Refused(f"the origin must be 1 to {MAX_ORIGIN_CHARS} characters")
    if not 0 < msg.seq <= MAX_NUMBER:
        raise _Refused("the sequence number must be between 1 and 2^63-1")
    if not 0 < msg.hlc <= MAX_NUMBER:
        raise _Refused("the clock stamp must be between 1 and 2^63-1")
    if not msg.key:
        raise _Refused("the key is empty")


def _verified(msg: pb.Entry, limits: IngestLimits) -> Entry:
    """The entry as ``msg`` carries it (its operations not read yet), once its signature
    verifies: only the origin's key signs under its origin. An origin without a key is from
    before signatures: its entries carry none (ingest admits them only stamped before)."""
    if is_signed_origin(msg.origin):
        message, digest = _message(msg)
        if not verifies(msg.origin, message, msg.sig):
            raise _Refused(FORGED)
        sig = bytes(msg.sig)
    elif msg.sig or msg.digest:
        raise _Refused("an origin that is not a public key signs nothing")
    elif limits.unsigned_before is not None and msg.hlc >= limits.unsigned_before:
        raise _Refused("unsigned: an origin without a key (from before signatures) writes "
                       "nothing after this node started signing")
    else:
        digest = sig = message = b""
    return _carried(msg, digest, message, sig=sig)


def _carried(
    msg: pb.Entry, digest: bytes, message: bytes, *, sig: bytes = b"", after: bytes = b"",
    prev_chain: bytes = b"", head_sig: bytes = b"", tail: bytes = b"",
) -> Entry:
    """The entry as ``msg`` carries it (its operations not read yet), with what its check
    worked out: its digest and message, and its signature or its place in a signed run
    (``after``: the origin's chain at it)."""
    return Entry(
        origin=msg.origin, seq=msg.seq, hlc=msg.hlc, key=msg.key, deleted=msg.deleted,
        value=msg.value, lease=msg.lease, ops=None, base_uid=msg.base_uid or None,
        uid=msg.uid or None, kind=msg.kind, secret=msg.secret or None, pruned=msg.pruned,
        sig=sig, digest=digest, chain=after, head_sig=head_sig, message=message,
        prev_chain=prev_chain, tail=tail,
    )


def _place(carried: Entry) -> Entry:
    """A refused entry's header as a stub: its place in its origin's sequence."""
    return carried.copy_with(value=b"", ops=None, secret=None, pruned=True, ops_json=None)


def _admit(msg: pb.Entry, policy: Policy, limits: IngestLimits, carried: Entry) -> Entry:
    if msg.kind not in KINDS:
        raise _Refused(f"unknown kind {msg.kind!r}")
    _check_size(msg, limits)
    ops, text = None, None
    if msg.has_ops:
        try:
            ops = field_ops.loads(msg.ops)
        except field_ops.BadOps as exc:
            raise _Refused(str(exc)) from None
        text = field_ops.dumps(ops)
        if text.encode() != msg.ops:
            # Forwarded as this form: a signature over another would not verify further on.
            raise _Refused("the operations are not in their canonical JSON form")
    entry = carried if ops is None else carried.copy_with(ops=ops, ops_json=text)
    if entry.pruned:
        if entry.value or entry.ops is not None or entry.secret is not None:
            raise _Refused("a pruned entry keeps no value, operations or secret")
        return entry
    if entry.kind == AUTH:
        _check_auth(entry)
    else:
        _check_write(entry, policy)
    return entry


def _check_size(msg: pb.Entry, limits: IngestLimits) -> None:
    limit = limits.max_request_bytes
    if msg.kind == "":
        # The exact size is worked out only near the limit (a Put's fields add at most
        # _PUT_FRAMING bytes to the key and value): most entries are far below it.
        if len(msg.key) + len(msg.value) + _PUT_FRAMING + RAFT_WRAPPER_BYTES > limit:
            size = PutRequest(key=msg.key, value=msg.value, lease=msg.lease).ByteSize()
            if size + RAFT_WRAPPER_BYTES > limit:
                raise _Refused(
                    f"a write of {size + RAFT_WRAPPER_BYTES} bytes exceeds the largest "
                    f"request ({limit} bytes, --max-request-bytes)"
                )
    elif len(msg.key) > limit:
        raise _Refused(f"the key exceeds the largest request ({limit} bytes)")
    if len(msg.ops) > OPS_SIZE_FACTOR * limit:
        raise _Refused(
            f"operations of {len(msg.ops)} bytes exceed {OPS_SIZE_FACTOR} x the largest "
            f"request ({limit} bytes)"
        )


def _check_auth(entry: Entry) -> None:
    if not entry.key.startswith(AUTH_PREFIXES):
        raise _Refused("an auth entry's key must start with user/, role/ or setting/")
    if entry.deleted or entry.ops is not None or entry.lease:
        raise _Refused("an auth entry carries an object's whole state")
    try:
        entry.key.decode("utf-8")
        entry.value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("an auth entry's key and value must be UTF-8") from None


def _check_write(entry: Entry, policy: Policy) -> None:
    if entry.secret is not None:
        raise _Refused("only auth entries carry a secret")
    if entry.deleted:
        if entry.value or entry.ops is not None or entry.uid is not None or entry.lease:
            raise _Refused("a delete carries no value, operations, uid or lease")
        return
    if entry.ops is None:
        return
    rules = policy.rules_for(entry.key)
    if rules.merge != "fields":
        raise _Refused("operations on a key whose policy keeps values whole")
    if entry.uid != entry.base_uid:
        raise _Refused("an update by operations keeps the incarnation it was made on")
    since = [op for op in entry.ops if isinstance(op, SinceEntry)]
    if since:
        # Whatever operations it stands for come from describe_write, under the policy.
        if len(entry.ops) != 1 or entry.uid is None or since[0].seq >= entry.seq:
            raise _Refused("operations by reference are the entry's only operation, name an "
                           "earlier entry of its origin, and an object with a uid")
        return
    for index, op in enumerate(entry.ops):
        reason = op_violation(op, rules)
        if reason is not None:
            raise _Refused(f"operation {index} ({field_ops.to_wire(op)[0]}): {reason}")


def op_violation(op: Op, rules: KeyRules) -> str | None:
    """Why the policy forbids ``op`` wherever it is applied; None if it may apply."""
    path = op.path
    for depth in range(1, len(path)):
        outer = rules.rule(path[:depth])
        if outer is not None and outer.policy in _WHOLE:
            return f"{_dotted(path)} is inside {_dotted(path[:depth])} ({outer.policy})"
    rule = rules.rule(path)
    policy = rule.policy if rule is not None else "lww"
    if not isinstance(op, _ALLOWED[policy]):
        return f"{_dotted(path)} ({policy}) cannot be changed by this operation"
    if isinstance(op, (KeyedSet, KeyedDelete, Reorder)):
        wanted = rule.key if rule is not None and policy == "keyed-list" else None
        if op.key != wanted:
            return f"{_dotted(path)} is keyed by {wanted!r}, not {op.key!r}"
    if isinstance(op, FirstWrite) and policy != "first-write-wins":
        empty: object = {} if policy == "map" else []
        if op.value != empty or type(op.value) is not type(empty):
            return f"{_dotted(path)} ({policy}) can only be first written empty"
    return None


def _dotted(path: Path_) -> str:
    return ".".join(path)
