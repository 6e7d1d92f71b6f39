"""Differential testing of the KV service: one seeded request sequence, two servers.

`RequestGenerator(seed)` produces KV requests (Range, Put, DeleteRange, Txn, Compact
and invalid ones) over a small key space, so that operations interact. It keeps a
model of the store's revision and compaction point, and of key-values it has seen,
fed only by the *reference* server's responses: the sequence is a function of the
seed alone, because the reference (a real etcd) is deterministic.

`run_sequence` sends every request to both servers and compares the outcomes field by
field (proto_diff.first_difference), ignoring only what two servers must differ in:
cluster_id, member_id and raft_term of response headers. Errors must have the same
gRPC status code and details.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb

from .client import Client
from .proto_diff import Difference, first_difference

# Twelve keys at most: etcd sorts with Go 1.16's sort.Sort, whose tie order for
# sort targets other than KEY depends on the result size; the key space keeps every
# result within one code path of that sort (insertion sort after a gap-6 pass).
KEYS: tuple[bytes, ...] = (
    b"\x00",
    b"\x00\xff",
    b"a",
    b"a/1",
    b"a/2",
    b"a/\xff",
    b"ab",
    b"b",
    b"b/x",
    b"c",
    b"\xff",
    b"\xff\xff",
)
# Never written: reads, deletes and compares of keys that do not exist.
ABSENT_KEYS: tuple[bytes, ...] = (b"a/", b"aa", b"b/", b"zz", b"\x01")
PREFIXES: tuple[bytes, ...] = (b"a", b"a/", b"b", b"\x00", b"\xff", b"\xff\xff", b"z")
VALUE_BYTES = b"xy\x00\xff"

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default
MAX_TXN_DEPTH = 2  # nesting below the top-level txn: three levels in all

KvRequest = (
    pb.RangeRequest | pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest | pb.CompactionRequest
)

KV_METHODS = {
    "RangeRequest": "Range",
    "PutRequest": "Put",
    "DeleteRangeRequest": "DeleteRange",
    "TxnRequest": "Txn",
    "CompactionRequest": "Compact",
}


def prefix_end(prefix: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the first key after every key starting with `prefix`."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"  # no upper bound: "every key >= prefix"
    end[-1] += 1
    return bytes(end)


def covers(key: bytes, range_end: bytes, candidate: bytes) -> bool:
    """Whether `candidate` lies in etcd's range [key, range_end)."""
    if not range_end:
        return candidate == key
    if range_end == b"\x00":
        return candidate >= key
    return key <= candidate < range_end


# --- outcomes and their comparison ------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A server's answer: a response message, or a gRPC status code and details."""

    response: Message | None = None
    code: grpc.StatusCode | None = None
    details: str | None = None

    def summary(self) -> str:
        if self.response is None:
            return f"error {self.code.name if self.code else None} {self.details!r}"
        return f"a {self.response.DESCRIPTOR.name}"

    def describe(self) -> str:
        if self.response is None:
            return self.summary()
        return text_format.MessageToString(self.response)


def send(client: Client, request: KvRequest, timeout: float = 10.0) -> Outcome:
    method = getattr(client.kv, KV_METHODS[request.DESCRIPTOR.name])
    try:
        return Outcome(response=method(request, timeout=timeout))
    except grpc.RpcError as error:
        return Outcome(code=error.code(), details=error.details())


def outcome_difference(left: Outcome, right: Outcome) -> Difference | None:
    if left.response is not None and right.response is not None:
        return first_difference(left.response, right.response)
    if (left.code, left.details) != (right.code, right.details):
        return Difference("<outcome>", left.summary(), right.summary())
    return None


# --- the request generator --------------------------------------------------------


@dataclass
class Model:
    """What the generator knows of the store, from the reference server's responses."""

    revision: int = 1
    compact_revision: int = 0  # 0: never compacted
    seen: dict[bytes, kv_pb2.KeyValue] = field(default_factory=dict)

    def observe(self, request: KvRequest, outcome: Outcome) -> None:
        response = outcome.response
        if response is None:
            return
        self.revision = response.header.revision
        if isinstance(request, pb.CompactionRequest):
            self.compact_revision = max(self.compact_revision, request.revision)
        for kv in _key_values(response):
            known = self.seen.get(kv.key)
            if known is None or kv.mod_revision >= known.mod_revision:
                self.seen[kv.key] = kv


def _key_values(message: Message) -> Iterator[kv_pb2.KeyValue]:
    """Every mvccpb.KeyValue anywhere inside `message`."""
    if isinstance(message, kv_pb2.KeyValue):
        yield message
        return
    for fd, value in message.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        for item in value if fd.is_repeated else [value]:
            yield from _key_values(item)


@dataclass
class WriteClaims:
    """Keys put and ranges deleted so far in one txn branch (nested txns included).

    etcd rejects a txn whose branch puts a key twice or puts a key it also deletes;
    the generator avoids that unless it means to test it.
    """

    puts: set[bytes] = field(default_factory=set)
    deletes: list[tuple[bytes, bytes]] = field(default_factory=list)

    def may_put(self, key: bytes) -> bool:
        return key not in self.puts and not any(covers(k, e, key) for k, e in self.deletes)

    def may_delete(self, key: bytes, range_end: bytes) -> bool:
        return not any(covers(key, range_end, put) for put in self.puts)


class RequestGenerator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.model = Model()

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def pick(self, weighted: dict[str, float]) -> str:
        return self.rng.choices(list(weighted), weights=list(weighted.values()))[0]

    def observe(self, request: KvRequest, outcome: Outcome) -> None:
        self.model.observe(request, outcome)

    def next_request(self) -> KvRequest:
        kind = self.pick(
            {"range": 30, "put": 26, "delete": 8, "txn": 26, "compact": 4, "invalid": 6}
        )
        if kind == "range":
            return self.range_request()
        if kind == "put":
            return self.put_request(self.rng.choice(KEYS))
        if kind == "delete":
            return self.delete_request(*self.key_range(for_delete=True))
        if kind == "txn":
            if self.chance(0.02):
                return self.oversized_txn()
            return self.txn_request(depth=0)
        if kind == "compact":
            return self.compaction_request()
        return self.invalid_request()

    # keys, values, revisions

    def any_key(self) -> bytes:
        return self.rng.choice(ABSENT_KEYS) if self.chance(0.15) else self.rng.choice(KEYS)

    def key_range(self, for_delete: bool = False) -> tuple[bytes, bytes]:
        """(key, range_end) of one of etcd's range shapes."""
        shape = self.pick(
            {
                "single": 40,
                "range": 20,
                "prefix": 15,
                "from_key": 8,
                "all": 1 if for_delete else 5,
                "inverted": 7,
                "empty": 2,
            }
        )
        if shape == "single":
            return self.any_key(), b""
        if shape == "prefix":
            prefix = self.rng.choice(PREFIXES)
            return prefix, prefix_end(prefix)
        if shape == "from_key":
            return self.any_key(), b"\x00"
        if shape == "all":
            return b"\x00", b"\x00"
        if shape == "empty":
            key = self.any_key()
            return key, key
        low, high = sorted(self.rng.sample(KEYS + ABSENT_KEYS, 2))
        # etcd treats range_end < key as an empty range, not an error.
        return (high, low) if shape == "inverted" else (low, high)

    def value(self) -> bytes:
        if self.chance(0.15):
            return b""
        return bytes(self.rng.choice(VALUE_BYTES) for _ in range(self.rng.randint(1, 3)))

    def read_revision(self) -> int:
        """A Range revision: current, old, future, compacted, or the compaction point."""
        m = self.model
        shape = self.pick(
            {
                "latest": 45,
                "current": 10,
                "old": 20,
                "compact_point": 6 if m.compact_revision else 0,
                "compacted": 6 if m.compact_revision > 1 else 0,
                "next": 6,
                "future": 4,
                "negative": 3,
            }
        )
        if shape == "current":
            return m.revision
        if shape == "old":
            return self.rng.randint(max(1, m.compact_revision), m.revision)
        if shape == "compact_point":
            return m.compact_revision
        if shape == "compacted":
            return self.rng.randint(1, m.compact_revision - 1)
        if shape == "next":
            return m.revision + 1
        if shape == "future":
            return m.revision + self.rng.randint(2, 1000)
        if shape == "negative":
            return -self.rng.randint(1, 3)
        return 0

    def some_revision(self) -> int:
        """A plausible mod/create revision for filters and compares."""
        return self.rng.randint(0, self.model.revision + 1)

    # requests

    def range_request(self, in_txn: bool = False) -> pb.RangeRequest:
        key, range_end = self.key_range()
        request = pb.RangeRequest(key=key, range_end=range_end)
        if self.chance(0.3):
            request.limit = self.rng.choice((1, 1, 2, 3, 5, 100, -1))
        # A bad revision fails its whole txn: rarer there.
        if self.chance(0.1 if in_txn else 0.35):
            request.revision = self.read_revision()
        request.count_only = self.chance(0.08)
        request.keys_only = self.chance(0.12)
        if self.chance(0.4):
            request.sort_order = self.rng.choice(pb.RangeRequest.SortOrder.values())
            request.sort_target = self.rng.choice(pb.RangeRequest.SortTarget.values())
        elif self.chance(0.03):
            # An unknown sort order is accepted (and sorts nothing). An unknown
            # sort *target* is not generated: etcd 3.5 panics on it and exits.
            request.sort_order = self.rng.choice((3, 7, 100))  # type: ignore[assignment]  # unknown on purpose
            request.sort_target = self.rng.choice(pb.RangeRequest.SortTarget.values())
        for name in (
            "min_mod_revision",
            "max_mod_revision",
            "min_create_revision",
            "max_create_revision",
        ):
            if self.chance(0.06):
                setattr(request, name, self.some_revision())
        request.serializable = self.chance(0.1)
        return request

    def put_request(self, key: bytes, in_txn: bool = False) -> pb.PutRequest:
        # One bad put fails its whole txn: make them rarer there.
        odds = 0.4 if in_txn else 1.0
        request = pb.PutRequest(key=key, value=self.value(), prev_kv=self.chance(0.3))
        if self.chance(0.04 * odds):
            request.lease = self.rng.randint(1, 2**63 - 1)  # no lease exists: "not found"
        if self.chance(0.08 * odds):
            request.ignore_value = True
            if not self.chance(0.25 * odds):
                request.value = b""  # else: value and ignore_value together, an error
        if self.chance(0.08 * odds):
            request.ignore_lease = True
            if not self.chance(0.25 * odds):
                request.lease = 0
        return request

    def delete_request(self, key: bytes, range_end: bytes) -> pb.DeleteRangeRequest:
        return pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=self.chance(0.4))

    def compaction_request(self) -> pb.CompactionRequest:
        m = self.model
        shape = self.pick(
            {
                "valid": 70,
                "current": 8,
                "compact_point": 6 if m.compact_revision else 0,
                "compacted": 4 if m.compact_revision > 1 else 0,
                "future": 8,
                "zero_or_negative": 2,
            }
        )
        if shape == "valid":
            # Lower half of the uncompacted history: keeps old revisions around to read.
            midpoint = (m.compact_revision + m.revision + 1) // 2
            revision = self.rng.randint(
                m.compact_revision + 1, max(m.compact_revision + 1, midpoint)
            )
        elif shape == "current":
            revision = m.revision
        elif shape == "compact_point":
            revision = m.compact_revision
        elif shape == "compacted":
            revision = self.rng.randint(1, m.compact_revision - 1)
        elif shape == "future":
            revision = m.revision + self.rng.randint(1, 3)
        else:
            revision = self.rng.randint(-2, 0)
        return pb.CompactionRequest(revision=revision, physical=self.chance(0.5))

    def compare(self) -> pb.Compare:
        target = self.rng.choice(pb.Compare.CompareTarget.values())
        compare = pb.Compare(
            result=self.rng.choice(pb.Compare.CompareResult.values()),
            target=target,
            key=self.any_key(),
        )
        if self.chance(0.15):
            compare.key, compare.range_end = self.key_range()
        seen = self.model.seen.get(compare.key)
        union = self.pick({"matching": 93, "other": 4, "unset": 3})
        if union == "other":
            # etcd reads the union member of the target and defaults it to zero.
            target = self.rng.choice(pb.Compare.CompareTarget.values())
        if union != "unset":
            self.set_compare_operand(compare, target, seen)
        if self.chance(0.01):
            compare.result = 9  # type: ignore[assignment]  # unknown: etcd treats it as true
        if self.chance(0.01):
            compare.target = 9  # type: ignore[assignment]  # unknown: compares as equal
        return compare

    def set_compare_operand(
        self, compare: pb.Compare, target: int, seen: kv_pb2.KeyValue | None
    ) -> None:
        nudge = self.rng.choice((-1, 0, 0, 0, 1))
        if target == pb.Compare.VALUE:
            compare.value = seen.value if seen is not None and self.chance(0.6) else self.value()
        elif target == pb.Compare.LEASE:
            compare.lease = 0 if self.chance(0.8) else self.rng.randint(1, 2**40)
        else:
            names: dict[int, str] = {
                pb.Compare.VERSION: "version",
                pb.Compare.CREATE: "create_revision",
                pb.Compare.MOD: "mod_revision",
            }
            name = names[target]
            if seen is not None and self.chance(0.6):
                operand = max(0, getattr(seen, name) + nudge)
            elif name == "version":
                operand = self.rng.randint(0, 4)
            else:
                operand = self.some_revision()
            setattr(compare, name, operand)

    def txn_request(self, depth: int, claims: WriteClaims | None = None) -> pb.TxnRequest:
        """A txn; at the top level each branch gets its own WriteClaims (None: allow dups)."""
        allow_duplicates = depth == 0 and self.chance(0.05)
        count = self.rng.choices((0, 1, 2, 3), weights=(10, 45, 30, 15))[0]
        request = pb.TxnRequest(compare=[self.compare() for _ in range(count)])
        most = 4 if depth == 0 else 3
        for branch in (request.success, request.failure):
            branch_claims = claims
            if depth == 0:
                branch_claims = None if allow_duplicates else WriteClaims()
            for _ in range(self.rng.randint(0, most)):
                branch.append(self.request_op(depth, branch_claims))
            if allow_duplicates and branch and self.chance(0.5):
                branch.append(self.rng.choice(branch))  # a put or delete given twice
        return request

    def request_op(self, depth: int, claims: WriteClaims | None) -> pb.RequestOp:
        kind = self.pick(
            {"range": 35, "put": 35, "delete": 20, "txn": 10 if depth < MAX_TXN_DEPTH else 0}
        )
        if kind == "put":
            key = self.rng.choice(KEYS)
            for _ in range(10):
                if claims is None or claims.may_put(key):
                    if claims is not None:
                        claims.puts.add(key)
                    return pb.RequestOp(request_put=self.put_request(key, in_txn=True))
                key = self.rng.choice(KEYS)
        elif kind == "delete":
            for _ in range(10):
                key, range_end = self.key_range(for_delete=True)
                if claims is None or claims.may_delete(key, range_end):
                    if claims is not None:
                        claims.deletes.append((key, range_end))
                    return pb.RequestOp(request_delete_range=self.delete_request(key, range_end))
        elif kind == "txn":
            return pb.RequestOp(request_txn=self.txn_request(depth + 1, claims))
        return pb.RequestOp(request_range=self.range_request(in_txn=True))

    def oversized_txn(self) -> pb.TxnRequest:
        """Txns at and just over etcd's op limit, which nested txns share with their parent."""
        shape = self.pick({"success": 1, "failure": 1, "compares": 1, "nested": 2})
        size = MAX_TXN_OPS + self.rng.choice((0, 1, 1, 5))
        reads = [
            pb.RequestOp(request_range=pb.RangeRequest(key=self.any_key())) for _ in range(size)
        ]
        request = pb.TxnRequest()
        if shape == "success":
            request.success.extend(reads)
        elif shape == "failure":
            request.compare.append(pb.Compare(key=b"zz", version=1))  # false: take failure
            request.failure.extend(reads)
        elif shape == "compares":
            request.compare.extend(pb.Compare(key=self.any_key(), version=0) for _ in range(size))
        else:
            outer = self.rng.choice((60, 100))
            inner = MAX_TXN_OPS - outer + self.rng.choice((-2, -1, 0, 1))
            request.success.extend(reads[:outer])
            request.success.append(pb.RequestOp(request_txn=pb.TxnRequest(success=reads[:inner])))
        return request

    def invalid_request(self) -> KvRequest:
        makers: list[Callable[[], KvRequest]] = [
            lambda: pb.RangeRequest(key=b"", range_end=self.rng.choice((b"", b"\x00", b"b"))),
            lambda: pb.PutRequest(key=b"", value=self.value()),
            lambda: pb.DeleteRangeRequest(key=b"", range_end=self.rng.choice((b"", b"\x00"))),
            lambda: pb.PutRequest(key=self.rng.choice(KEYS), value=b"v", ignore_value=True),
            lambda: pb.PutRequest(key=self.rng.choice(KEYS), lease=7, ignore_lease=True),
            lambda: pb.TxnRequest(compare=[pb.Compare(key=b"", version=0)]),
            lambda: pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b""))]),
            lambda: pb.TxnRequest(failure=[pb.RequestOp()]),  # an op with no request in it
            lambda: pb.TxnRequest(
                success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a", revision=-1))]
            ),
        ]
        return self.rng.choice(makers)()


# --- running a sequence -----------------------------------------------------------


@dataclass
class SequenceStats:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    txn_succeeded: Counter[bool] = field(default_factory=Counter)

    def record(self, request: KvRequest, outcome: Outcome) -> None:
        self.requests[request.DESCRIPTOR.name] += 1
        if outcome.response is None:
            self.errors[f"{outcome.code.name if outcome.code else None}: {outcome.details}"] += 1
        elif isinstance(outcome.response, pb.TxnResponse):
            self.txn_succeeded[outcome.response.succeeded] += 1


def _clip(text: str, limit: int = 3000) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more chars)"


def mismatch_report(
    seed: int,
    index: int,
    request: KvRequest,
    difference: Difference,
    names: tuple[str, str],
    outcomes: tuple[Outcome, Outcome],
) -> str:
    return "\n".join(
        [
            f"seed {seed}, operation #{index}: {names[0]} and {names[1]} differ "
            f"at {difference.path}: {names[0]}={difference.left!r} "
            f"{names[1]}={difference.right!r}",
            f"request {request.DESCRIPTOR.name}:",
            _clip(text_format.MessageToString(request)),
            f"{names[0]} outcome:",
            _clip(outcomes[0].describe()),
            f"{names[1]} outcome:",
            _clip(outcomes[1].describe()),
            f"(run this sequence alone: SHIM_DIFF_SEEDS={seed} python -m pytest "
            f"tests/test_differential_kv.py)",
        ]
    )


def run_sequence(
    seed: int,
    ops: int,
    reference: Client,
    candidate: Client,
    names: tuple[str, str] = ("etcd", "shim"),
) -> SequenceStats:
    """Send `ops` generated requests to both servers; raise AssertionError on the first
    difference. The reference's responses drive the generator's model."""
    generator = RequestGenerator(seed)
    stats = SequenceStats()
    for index in range(ops):
        request = generator.next_request()
        outcomes = send(reference, request), send(candidate, request)
        difference = outcome_difference(*outcomes)
        if difference is not None:
            raise AssertionError(mismatch_report(seed, index, request, difference, names, outcomes))
        generator.observe(request, outcomes[0])
        stats.record(request, outcomes[0])
    return stats


def parse_seeds(text: str) -> list[int]:
    """'3', '1,5,9' or '10-20' (inclusive), combinable: '1,10-12'."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        seeds.extend(range(int(low), int(high or low) + 1))
    return seeds
