"""Differential testing of the Watch service: the same watches and writes, two servers.

`ServerPair` sends the same KV requests and watch requests to a reference server (a real
etcd) and a candidate (shim), then compares every WatchResponse the two sent.

What etcd 3.5.1 fixes, and what it leaves to timing (so what can be compared strictly):

* Per watch id, the order of responses is fixed: `created` first (etcd holds back a
  watcher's events until its created response is sent), then catch-up, then live events,
  then the canceled response. Responses of *different* watch ids on one stream interleave
  by timing (etcd's control responses and events travel on two channels, and one
  revision's responses to several watchers go out in Go map order). So responses are
  compared per watch id, in order, field by field.
* A synced etcd watcher gets one response per revision, header.revision = that revision.
  A catching-up watcher gets all its history events (up to 1000 revisions) in one response
  with header.revision = the store's revision. With writes and watch creations separated
  by quiet periods (as `run_watch_sequence` does), all of this is deterministic for etcd.
  shim sends a watcher's revisions that wait behind a busy stream in one response (header
  = the newest revision included), as etcd does only for a catching-up watcher; neither
  promises one revision per response, and clients read each event's own mod_revision. So
  response boundaries are compared one way: each of the candidate's responses is the
  reference's next response, or consecutive event responses of the reference joined whole
  (never across a created, canceled, progress or fragment response). On a quiet stream
  shim sends each revision on its own, so in practice the boundaries are the same.
* RequestProgress: etcd 3.5.1 answers at once, with watch_id -1 and the current revision,
  even while watchers of the stream are still catching up (its answer then overtakes their
  history events). The -1 responses are compared in order among themselves, not against
  the position of other watch ids' responses.

Only header cluster_id, member_id and raft_term are ignored, as in the KV suite.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format

from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb

from .client import Client
from .differential import (
    ABSENT_KEYS,
    KEYS,
    PREFIXES,
    KvRequest,
    Outcome,
    RequestGenerator,
    outcome_difference,
    prefix_end,
    send,
)
from .etcd import EtcdServer
from .proto_diff import first_difference
from .shim_server import ShimServer
from .watch import WatchStream, wait_quiet

# --- describing and comparing responses ------------------------------------------


def describe_event(event: kv_pb2.Event) -> str:
    kind = "DELETE" if event.type == kv_pb2.Event.DELETE else "PUT"
    prev = " +prev" if event.HasField("prev_kv") else ""
    return f"{kind} {event.kv.key!r}@{event.kv.mod_revision}{prev}"


def describe(response: pb.WatchResponse) -> str:
    """One line: the fields a client acts on."""
    parts = [f"id={response.watch_id}", f"rev={response.header.revision}"]
    for flag in ("created", "canceled", "fragment"):
        if getattr(response, flag):
            parts.append(flag)
    if response.compact_revision:
        parts.append(f"compact_revision={response.compact_revision}")
    if response.cancel_reason:
        parts.append(f"reason={response.cancel_reason!r}")
    if response.events:
        parts.append("events=[" + ", ".join(map(describe_event, response.events)) + "]")
    elif not (response.created or response.canceled):
        parts.append("(progress)")
    return " ".join(parts)


def group_by_watch(responses: Iterable[pb.WatchResponse]) -> dict[int, list[pb.WatchResponse]]:
    groups: dict[int, list[pb.WatchResponse]] = {}
    for response in responses:
        groups.setdefault(response.watch_id, []).append(response)
    return groups


def _without_events(response: pb.WatchResponse) -> pb.WatchResponse:
    copy = pb.WatchResponse()
    copy.CopyFrom(response)
    del copy.events[:]
    return copy


def _listing(name: str, responses: Sequence[pb.WatchResponse], limit: int = 12) -> str:
    lines = [f"  {name} sent {len(responses)} response(s):"]
    lines += [f"    {describe(r)}" for r in responses[:limit]]
    if len(responses) > limit:
        lines.append(f"    ... {len(responses) - limit} more")
    return "\n".join(lines)


def compare_one_watch(
    watch_id: int,
    left: Sequence[pb.WatchResponse],
    right: Sequence[pb.WatchResponse],
    names: tuple[str, str],
) -> str | None:
    """The first difference between two servers' responses for one watch id, or None.

    First the concatenated events (what a client applies), then every response without
    its events (created/canceled/compaction/progress responses, headers) and how events are
    split into responses: each of the candidate's responses is either the reference's next
    response, or several of the reference's next event responses joined (consecutive ones,
    whole, with the last one's header: a batch of a stream that fell behind)."""
    listing = f"\n{_listing(names[0], left)}\n{_listing(names[1], right)}"
    events = [[e for r in side for e in r.events] for side in (left, right)]
    for index, (a, b) in enumerate(zip(*events, strict=False)):
        found = first_difference(a, b)
        if found is not None:
            return (
                f"watch id {watch_id}: event #{index} ({describe_event(a)}) differs at "
                f"{found.path}: {names[0]}={found.left!r} {names[1]}={found.right!r}"
                f"\n  {names[0]}: {text_format.MessageToString(a, as_one_line=True)}"
                f"\n  {names[1]}: {text_format.MessageToString(b, as_one_line=True)}{listing}"
            )
    if len(events[0]) != len(events[1]):
        return (
            f"watch id {watch_id}: {names[0]} sent {len(events[0])} event(s), "
            f"{names[1]} {len(events[1])}{listing}"
        )
    taken = 0  # reference responses accounted for
    for index, b in enumerate(right):
        if taken >= len(left):
            return (
                f"watch id {watch_id}: same events, but {names[1]} sent more responses "
                f"({len(right)}) than {names[0]} ({len(left)}){listing}"
            )
        a = left[taken]
        taken += 1
        missing = len(b.events) - len(a.events)
        # A response of the candidate may join consecutive event responses of the
        # reference: a batch of a watcher whose stream fell behind.
        while missing > 0 and taken < len(left) and _joinable(a) and _joinable(left[taken]):
            a = left[taken]
            taken += 1
            missing -= len(a.events)
        if missing != 0:
            return (
                f"watch id {watch_id}: same events, split differently into responses "
                f"(batching): {names[1]}'s response #{index} holds {len(b.events)} "
                f"event(s), which is not {names[0]}'s next response(s) whole{listing}"
            )
        found = first_difference(_without_events(a), _without_events(b))
        if found is not None:
            return (
                f"watch id {watch_id}: {names[1]}'s response #{index} differs at "
                f"{found.path} from {names[0]}'s #{taken - 1}: {names[0]}={found.left!r} "
                f"{names[1]}={found.right!r}{listing}"
            )
    if taken != len(left):
        return (
            f"watch id {watch_id}: same events, but {names[0]} sent {len(left)} response(s) "
            f"and {names[1]} fewer{listing}"
        )
    return None


def _joinable(response: pb.WatchResponse) -> bool:
    """An event response that a batch may join to its neighbours: events, no flags."""
    return bool(response.events) and not (
        response.created or response.canceled or response.fragment
    )


def compare_watch_responses(
    left: Sequence[pb.WatchResponse],
    right: Sequence[pb.WatchResponse],
    names: tuple[str, str],
) -> list[str]:
    """One problem per watch id whose responses differ (see compare_one_watch)."""
    groups = group_by_watch(left), group_by_watch(right)
    problems = []
    for watch_id in sorted(set(groups[0]) | set(groups[1])):
        found = compare_one_watch(
            watch_id, groups[0].get(watch_id, []), groups[1].get(watch_id, []), names
        )
        if found is not None:
            problems.append(found)
    return problems


def logical_responses(responses: Iterable[pb.WatchResponse]) -> list[list[kv_pb2.Event]]:
    """Events of one watch id per logical response: fragments joined to their last part."""
    out: list[list[kv_pb2.Event]] = []
    pending: list[kv_pb2.Event] = []
    for response in responses:
        pending.extend(response.events)
        if not response.fragment:
            if pending:
                out.append(pending)
            pending = []
    if pending:
        out.append(pending)  # an unfinished fragment sequence: still a batch
    return out


def stream_guarantees(responses: Sequence[pb.WatchResponse], name: str) -> list[str]:
    """What etcd guarantees every watcher, checked on one server's responses of one stream:
    events in revision order, no event twice, all events of one revision in one (logical)
    response, and a header revision no older than the events it carries."""
    problems = []
    for watch_id, group in group_by_watch(responses).items():
        # A watch id can be used again after a cancel: each `created` starts a new watcher.
        watchers: list[list[pb.WatchResponse]] = []
        for response in group:
            if response.created or not watchers:
                watchers.append([])
            watchers[-1].append(response)
        for watcher in watchers:
            problems += _watcher_guarantees(watch_id, watcher, name)
    return problems


def _watcher_guarantees(
    watch_id: int, responses: Sequence[pb.WatchResponse], name: str
) -> list[str]:
    problems = []
    seen: dict[int, int] = {}
    last = 0
    keys: set[tuple[bytes, int]] = set()
    for index, events in enumerate(logical_responses(responses)):
        for event in events:
            revision = event.kv.mod_revision
            if revision < last:
                problems.append(f"{name} watch {watch_id}: revision {revision} after {last}")
            if seen.setdefault(revision, index) != index:
                problems.append(
                    f"{name} watch {watch_id}: events of revision {revision} split "
                    f"across responses #{seen[revision]} and #{index}"
                )
            if (event.kv.key, revision) in keys:
                problems.append(f"{name} watch {watch_id}: {describe_event(event)} twice")
            keys.add((event.kv.key, revision))
            last = revision
    for response in responses:
        top = max((e.kv.mod_revision for e in response.events), default=0)
        if response.header.revision < top:
            problems.append(
                f"{name} watch {watch_id}: header older than its events: {describe(response)}"
            )
    return problems


def problems_report(title: str, problems: Sequence[str], limit: int = 8) -> str:
    shown = "\n\n".join(problems[:limit])
    more = f"\n\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{title}: {len(problems)} problem(s)\n\n{shown}{more}"


# --- two servers in lockstep ------------------------------------------------------


def start_both(
    etcd_factory: Callable[..., EtcdServer],
    shim_factory: Callable[..., ShimServer],
    etcd_args: Sequence[str] = (),
    shim_args: Sequence[str] = (),
) -> tuple[EtcdServer, ShimServer]:
    """A fresh etcd and a fresh shim from the conftest factories, started concurrently."""
    with ThreadPoolExecutor(2) as pool:
        etcd = pool.submit(etcd_factory, extra_args=list(etcd_args))
        shim = pool.submit(shim_factory, extra_args=list(shim_args))
        return etcd.result(), shim.result()


@dataclass
class StreamPair:
    reference: WatchStream
    candidate: WatchStream

    def create(self, request: pb.WatchCreateRequest | None = None, **fields: object) -> None:
        create = request if request is not None else pb.WatchCreateRequest(**fields)  # type: ignore[arg-type]  # fields: any of its own
        self.reference.send_create(create)
        self.candidate.send_create(create)

    def cancel(self, watch_id: int) -> None:
        self.reference.cancel(watch_id)
        self.candidate.cancel(watch_id)

    def request_progress(self) -> None:
        self.reference.request_progress()
        self.candidate.request_progress()

    def wait_for_events(self, count: int, timeout: float = 20.0) -> None:
        """Until both streams have received ``count`` events (a positive sign that a phase
        is over, where waiting for quiet could cut a slow server's answer in two)."""
        self.reference.wait_for_events(count, timeout)
        self.candidate.wait_for_events(count, timeout)


class ServerPair:
    """Two servers receiving the same requests; watch streams opened on both in pairs."""

    def __init__(
        self, reference: Client, candidate: Client, names: tuple[str, str] = ("etcd", "shim")
    ) -> None:
        self.reference = reference
        self.candidate = candidate
        self.names = names
        self.streams: list[StreamPair] = []

    def open_stream(self) -> StreamPair:
        index = len(self.streams)
        pair = StreamPair(
            WatchStream(self.reference, f"{self.names[0]}#{index}"),
            WatchStream(self.candidate, f"{self.names[1]}#{index}"),
        )
        self.streams.append(pair)
        return pair

    def all_streams(self) -> list[WatchStream]:
        return [s for pair in self.streams for s in (pair.reference, pair.candidate)]

    def quiet(self) -> None:
        wait_quiet(self.all_streams())

    def kv(self, request: KvRequest) -> Outcome:
        """Send to both; the outcomes must be equal. Returns the reference's."""
        outcomes = send(self.reference, request), send(self.candidate, request)
        difference = outcome_difference(*outcomes)
        if difference is not None:
            raise AssertionError(
                f"{request.DESCRIPTOR.name} answered differently at {difference.path}: "
                f"{self.names[0]}={difference.left!r} {self.names[1]}={difference.right!r}\n"
                f"request: {text_format.MessageToString(request, as_one_line=True)}\n"
                f"{self.names[0]}: {outcomes[0].describe()}\n"
                f"{self.names[1]}: {outcomes[1].describe()}"
            )
        return outcomes[0]

    def put(self, key: bytes, value: bytes = b"v", **fields: Any) -> int:
        response = self.kv(pb.PutRequest(key=key, value=value, **fields)).response
        assert response is not None
        return response.header.revision

    def problems(self) -> list[str]:
        """Every difference between the pairs of streams, and any broken guarantee."""
        problems: list[str] = []
        for index, pair in enumerate(self.streams):
            left, right = pair.reference.responses, pair.candidate.responses
            for problem in compare_watch_responses(left, right, self.names):
                problems.append(f"stream {index}, {problem}")
            problems += [f"stream {index}, {p}" for p in stream_guarantees(left, self.names[0])]
            problems += [f"stream {index}, {p}" for p in stream_guarantees(right, self.names[1])]
        return problems

    def assert_same(self, title: str = "watch responses differ") -> None:
        self.quiet()
        problems = self.problems()
        if problems:
            raise AssertionError(problems_report(title, problems))

    def close(self) -> None:
        for stream in self.all_streams():
            stream.close()

    def __enter__(self) -> ServerPair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the seeded sequence ------------------------------------------------------------

CHOSEN_WATCH_IDS = (1, 2, 3, 7, 100, 2**40)


@dataclass
class WatchStats:
    creates: Counter[str] = field(default_factory=Counter)
    cancels: int = 0
    progress_requests: int = 0
    writes: int = 0
    # From the reference's responses:
    events: int = 0
    compacted: int = 0
    refused: int = 0
    multi_revision_responses: int = 0


class WatchRequestGenerator:
    """Watch requests over the KV generator's key space, revisions from its model."""

    def __init__(self, seed: int, kv: RequestGenerator) -> None:
        self.rng = random.Random(f"watch/{seed}")
        self.kv = kv

    def chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def pick(self, weighted: dict[str, float]) -> str:
        return self.rng.choices(list(weighted), weights=list(weighted.values()))[0]

    def key_range(self) -> tuple[bytes, bytes, str]:
        """A watched range; empty and inverted ones have their own tests (refused)."""
        shape = self.pick({"key": 30, "absent": 5, "range": 20, "prefix": 25, "from": 8,
                           "all": 12})
        if shape == "key":
            return self.rng.choice(KEYS), b"", shape
        if shape == "absent":
            return self.rng.choice(ABSENT_KEYS), b"", shape
        if shape == "prefix":
            prefix = self.rng.choice(PREFIXES)
            return prefix, prefix_end(prefix), shape
        if shape == "from":
            return self.rng.choice(KEYS + ABSENT_KEYS), b"\x00", shape
        if shape == "all":
            return self.rng.choice((b"", b"\x00")), b"\x00", shape
        low, high = sorted(self.rng.sample(KEYS + ABSENT_KEYS, 2))
        return low, high, shape

    def start_revision(self) -> tuple[int, str]:
        model = self.kv.model
        compacted = model.compact_revision
        shape = self.pick({
            "now": 30, "past": 25, "first": 4, "compact_point": 6 if compacted else 0,
            "compacted": 8 if compacted > 1 else 0, "current": 6, "next": 6, "future": 8,
            "far_future": 2, "negative": 2,
        })
        if shape == "past":
            return self.rng.randint(max(1, compacted), model.revision), shape
        if shape == "first":
            return 1, shape
        if shape == "compact_point":
            return compacted, shape
        if shape == "compacted":
            return self.rng.randint(1, compacted - 1), shape
        if shape == "current":
            return model.revision, shape
        if shape == "next":
            return model.revision + 1, shape
        if shape == "future":
            return model.revision + self.rng.randint(2, 8), shape
        if shape == "far_future":
            return model.revision + 10_000, shape
        if shape == "negative":
            return -self.rng.randint(1, 3), shape
        return 0, shape

    def create_request(self) -> tuple[pb.WatchCreateRequest, str]:
        key, range_end, range_shape = self.key_range()
        start, start_shape = self.start_revision()
        request = pb.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start, prev_kv=self.chance(0.4),
            fragment=self.chance(0.2), progress_notify=self.chance(0.1),
        )
        if self.chance(0.2):
            request.filters.append(pb.WatchCreateRequest.NOPUT)
        if self.chance(0.2):
            request.filters.append(pb.WatchCreateRequest.NODELETE)
        if self.chance(0.25):
            request.watch_id = self.rng.choice(CHOSEN_WATCH_IDS)
        return request, f"{range_shape}/{start_shape}"


def run_watch_sequence(
    seed: int,
    rounds: int,
    reference: Client,
    candidate: Client,
    names: tuple[str, str] = ("etcd", "shim"),
    streams: int = 3,
    log: Callable[[str], None] | None = None,
) -> WatchStats:
    """Rounds of (watch requests; quiet; KV writes; quiet) on both servers, then compare
    every stream's responses. Raises AssertionError listing every difference found."""
    kv = RequestGenerator(seed)
    gen = WatchRequestGenerator(seed, kv)
    stats = WatchStats()
    known: list[set[int]] = [set() for _ in range(streams)]  # ids the reference created
    seen: list[int] = [0] * streams
    with ServerPair(reference, candidate, names) as pair:
        for _ in range(streams):
            pair.open_stream()
        for _ in range(rounds):
            # Watch phase: creates, cancels and progress requests on random streams.
            for _ in range(gen.rng.randint(1, 5)):
                index = gen.rng.randrange(streams)
                stream = pair.streams[index]
                action = gen.pick({"create": 70, "cancel": 18, "progress": 12})
                if action == "create":
                    request, shape = gen.create_request()
                    stats.creates[shape] += 1
                    stream.create(request)
                elif action == "cancel":
                    ids = sorted(known[index]) or [0]
                    watch_id = gen.rng.choice(ids) if gen.chance(0.9) else 12345
                    stats.cancels += 1
                    stream.cancel(watch_id)
                else:
                    stats.progress_requests += 1
                    stream.request_progress()
            pair.quiet()
            for index, stream in enumerate(pair.streams):
                responses = stream.reference.responses
                for response in responses[seen[index]:]:
                    if response.created and not response.canceled:
                        known[index].add(response.watch_id)
                seen[index] = len(responses)
            # Write phase: the KV generator's requests, outcomes compared as in the KV suite.
            for _ in range(gen.rng.randint(3, 12)):
                request = kv.next_request()
                outcome = pair.kv(request)
                kv.observe(request, outcome)
                stats.writes += 1
            pair.quiet()
        for stream in pair.streams:
            stream.request_progress()
        pair.quiet()
        for stream in pair.streams:
            for response in stream.reference.responses:
                stats.events += len(response.events)
                stats.compacted += bool(response.compact_revision)
                stats.refused += bool(response.created and response.cancel_reason)
                revisions = {e.kv.mod_revision for e in response.events}
                stats.multi_revision_responses += len(revisions) > 1
        if log is not None:
            log(f"seed {seed}: {stats}")
        problems = pair.problems()
        if problems:
            raise AssertionError(
                problems_report(f"seed {seed}: {names[0]} and {names[1]} differ", problems)
                + f"\n\n(run this sequence alone: SHIM_WATCH_DIFF_SEEDS={seed} python -m "
                f"pytest tests/test_differential_watch.py -k seeded)"
            )
    return stats
