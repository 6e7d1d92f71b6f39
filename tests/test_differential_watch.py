"""Differential tests of the Watch and Lease services: shim must behave as etcd 3.5.1 does.

Every test drives a fresh etcd and a fresh shim with the same requests and compares what
they send back, field by field (only header cluster_id, member_id and raft_term are
ignored). Watch responses are compared per watch id, in order, including how events are
batched into responses wherever etcd's batching is deterministic (shim may join a lagging
watcher's consecutive event responses into one, header = the newest revision); see
tests/support/watch_diff.py for what etcd fixes and what it leaves to timing.

Where a test also asserts etcd's own behaviour, that documents it and guards the harness:
a failure there means etcd did not do what the comparison assumes.

More seeds: SHIM_WATCH_DIFF_SEEDS="1-20" or "4,9"; rounds per seed: SHIM_WATCH_DIFF_ROUNDS.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from shim.pb import kv_pb2
from shim.pb import rpc_pb2 as pb
from tests.support import Client, EtcdServer, ShimServer
from tests.support.differential import (
    KvRequest,
    Outcome,
    outcome_difference,
    parse_seeds,
    prefix_end,
    send,
)
from tests.support.proto_diff import first_difference
from tests.support.watch import PROGRESS_WATCH_ID, WatchStream, wait_quiet
from tests.support.watch_diff import (
    ServerPair,
    WatchStats,
    compare_watch_responses,
    describe,
    problems_report,
    run_watch_sequence,
    start_both,
    stream_guarantees,
)

NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE

SEEDS = parse_seeds(os.environ.get("SHIM_WATCH_DIFF_SEEDS", "")) or [1, 2, 3, 4]
ROUNDS = int(os.environ.get("SHIM_WATCH_DIFF_ROUNDS", "8"))


@pytest.fixture
def pair(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> Iterator[ServerPair]:
    etcd, shim = start_both(etcd_factory, shim_factory)
    with (
        Client(etcd.endpoint) as reference,
        Client(shim.endpoint) as candidate,
        ServerPair(reference, candidate) as servers,
    ):
        yield servers


def shapes(stream: WatchStream) -> list[str]:
    return [describe(r) for r in stream.responses]


def events_of(stream: WatchStream, watch_id: int) -> list[kv_pb2.Event]:
    return [e for r in stream.responses if r.watch_id == watch_id for e in r.events]


# --- watch: deterministic scenarios -------------------------------------------------------


def test_watch_shapes_history_and_live_events(pair: ServerPair) -> None:
    """Key, range, prefix, from-key and all-keys watches from now, from past revisions, the
    current one and a future one, with prev_kv and filters, over puts, deletes, multi-key
    txns and a compaction."""
    pair.put(b"a", b"1")  # 2
    pair.put(b"a/1", b"x")  # 3
    pair.put(b"b", b"y")  # 4
    pair.kv(pb.TxnRequest(success=[  # 5: several keys in one revision
        pb.RequestOp(request_put=pb.PutRequest(key=b"a/2", value=b"z")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"w")),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"b")),
    ]))
    pair.kv(pb.DeleteRangeRequest(key=b"a/", range_end=prefix_end(b"a/")))  # 6

    first, second = pair.open_stream(), pair.open_stream()
    first.create(key=b"a")
    first.create(key=b"a", start_revision=2, prev_kv=True)
    first.create(key=b"a/", range_end=prefix_end(b"a/"), start_revision=3, prev_kv=True)
    first.create(key=b"a", range_end=b"b/", start_revision=1)
    second.create(key=b"", range_end=b"\x00", start_revision=1, filters=[NODELETE])
    second.create(key=b"b", range_end=b"\x00", start_revision=4, filters=[NOPUT],
                  prev_kv=True)
    second.create(key=b"c", start_revision=6)  # the current revision
    second.create(key=b"\xff", range_end=b"\x00", start_revision=9)  # a future one
    second.create(key=b"a", start_revision=8, prev_kv=True, watch_id=50)
    second.create(key=b"a/", range_end=prefix_end(b"a/"), filters=[NOPUT, NODELETE])
    pair.quiet()

    pair.put(b"a", b"2", prev_kv=True)  # 7
    pair.put(b"a/1", b"again")  # 8
    pair.kv(pb.TxnRequest(  # 9
        compare=[pb.Compare(key=b"a", target=pb.Compare.VERSION, version=2)],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"a/3", value=b"3")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"\xff", value=b"ff")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"c2")),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a")),
        ],
    ))
    pair.kv(pb.CompactionRequest(revision=8, physical=True))
    pair.kv(pb.DeleteRangeRequest(key=b"a/", range_end=b"\x00"))  # 10
    pair.put(b"b", b"b1")  # 11
    pair.put(b"b", b"b2")  # 12
    pair.kv(pb.TxnRequest(success=[  # a txn that changes nothing: no revision, no event
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"nothing")),
    ]))
    pair.put(b"\xff\xff", b"last")  # 13
    pair.assert_same()

    etcd_events = sum(len(r.events) for s in pair.streams for r in s.reference.responses)
    assert etcd_events >= 40, "the scenario should produce plenty of events"


def test_watch_from_compacted_revision(pair: ServerPair) -> None:
    """A start revision below the compaction point: etcd answers `created`, then cancels the
    watch with compact_revision set (header revision 0). The id stays taken until the client
    cancels it: the same client-chosen id is refused, and cancelling it is answered."""
    for value in (b"1", b"2", b"3", b"4"):
        pair.put(b"k", value)  # revisions 2-5
    pair.kv(pb.CompactionRequest(revision=4, physical=True))
    stream = pair.open_stream()
    stream.create(key=b"k", start_revision=2, watch_id=5)
    stream.create(key=b"k", start_revision=3)
    stream.create(key=b"k", start_revision=4, prev_kv=True)  # the compaction point: fine
    pair.quiet()
    stream.create(key=b"k", watch_id=5)
    pair.quiet()
    stream.cancel(5)
    pair.quiet()
    stream.create(key=b"k", watch_id=5)
    pair.quiet()
    pair.put(b"k", b"5")
    pair.quiet()
    assert sorted(shapes(stream.reference)) == sorted([
        "id=5 rev=5 created",
        "id=0 rev=5 created",
        "id=1 rev=5 created",
        "id=5 rev=0 canceled compact_revision=4",
        "id=0 rev=0 canceled compact_revision=4",
        "id=1 rev=5 events=[PUT b'k'@4, PUT b'k'@5 +prev]",
        "id=-1 rev=5 created canceled reason='mvcc: duplicate watch ID provided on the "
        "WatchStream'",
        "id=5 rev=5 canceled",
        "id=5 rev=5 created",
        "id=5 rev=6 events=[PUT b'k'@6]",
        "id=1 rev=6 events=[PUT b'k'@6 +prev]",
    ]), "etcd 3.5.1 behaves as this test assumes"
    pair.assert_same()


def test_watch_negative_start_revision(pair: ServerPair) -> None:
    """etcd compares a negative start revision with the compaction point (-1 while nothing
    was ever compacted): below it, the watch is created and then canceled with
    compact_revision; -1 on a never-compacted store watches from now on."""
    pair.put(b"k", b"1")  # 2
    stream = pair.open_stream()
    stream.create(key=b"k", start_revision=-1)
    stream.create(key=b"k", start_revision=-2)
    pair.quiet()
    pair.kv(pb.CompactionRequest(revision=2, physical=True))
    stream.create(key=b"k", start_revision=-1)
    pair.quiet()
    pair.put(b"k", b"2")  # 3
    pair.quiet()
    assert shapes(stream.reference) == [
        "id=0 rev=2 created",
        "id=1 rev=2 created",
        "id=1 rev=0 canceled compact_revision=-1",
        "id=2 rev=2 created",
        "id=2 rev=0 canceled compact_revision=2",
        "id=0 rev=3 events=[PUT b'k'@3]",
    ], "etcd 3.5.1 behaves as this test assumes"
    pair.assert_same()


def test_watch_duplicate_id_refused(pair: ServerPair) -> None:
    """A client-chosen id already in use on the stream: created+canceled with the reason,
    and watch_id -1 (etcd's "no watcher"), the existing watcher untouched. The same id on
    another stream is fine."""
    first, second = pair.open_stream(), pair.open_stream()
    first.create(key=b"a", watch_id=7)
    first.create(key=b"b", watch_id=7)
    second.create(key=b"b", watch_id=7)
    first.create(key=b"c")  # auto ids are unaffected: 0
    pair.quiet()
    pair.put(b"a")
    pair.put(b"b")
    pair.quiet()
    reason = "mvcc: duplicate watch ID provided on the WatchStream"
    assert shapes(first.reference) == [
        "id=7 rev=1 created",
        f"id=-1 rev=1 created canceled reason={reason!r}",
        "id=0 rev=1 created",
        "id=7 rev=2 events=[PUT b'a'@2]",
    ], "etcd 3.5.1 behaves as this test assumes"
    pair.assert_same()


def test_watch_empty_range_refused(pair: ServerPair) -> None:
    """range_end <= key: refused with watch_id -1, and no watch id is used up by it."""
    stream = pair.open_stream()
    stream.create(key=b"b", range_end=b"a")
    stream.create(key=b"b", range_end=b"b")
    stream.create(key=b"b", range_end=b"a", watch_id=9)
    stream.create(key=b"b")  # gets id 0: the refused requests took none
    pair.quiet()
    pair.put(b"b")
    reason = "mvcc: watcher range is empty"
    pair.quiet()
    assert shapes(stream.reference) == [
        f"id=-1 rev=1 created canceled reason={reason!r}",
        f"id=-1 rev=1 created canceled reason={reason!r}",
        f"id=-1 rev=1 created canceled reason={reason!r}",
        "id=0 rev=1 created",
        "id=0 rev=2 events=[PUT b'b'@2]",
    ], "etcd 3.5.1 behaves as this test assumes"
    pair.assert_same()


def test_watch_cancel(pair: ServerPair) -> None:
    """Cancel stops a watcher's events and is answered with canceled and the current
    revision; an unknown id is not answered; a freed client id can be used again."""
    stream = pair.open_stream()
    stream.create(key=b"k")
    stream.create(key=b"k", watch_id=3, prev_kv=True)
    pair.quiet()
    pair.put(b"k", b"1")
    pair.quiet()
    stream.cancel(0)
    stream.cancel(99)
    pair.quiet()
    pair.put(b"k", b"2")
    pair.quiet()
    stream.cancel(3)
    stream.cancel(3)
    stream.create(key=b"k", watch_id=3, start_revision=2)
    pair.quiet()
    pair.put(b"k", b"3")
    pair.assert_same()
    assert len(events_of(stream.reference, 0)) == 1
    assert len(events_of(stream.reference, 3)) == 5


def test_progress_request_when_synced(pair: ServerPair) -> None:
    """RequestProgress on a stream whose watchers have everything: one response, watch_id -1,
    no events, the current revision, after every event sent before it."""
    stream, empty = pair.open_stream(), pair.open_stream()
    stream.create(key=b"a")
    stream.create(key=b"b", start_revision=1)
    pair.quiet()
    pair.put(b"a")
    pair.put(b"b")
    pair.put(b"c")
    pair.quiet()
    stream.request_progress()
    empty.request_progress()  # no watchers at all: answered too
    pair.quiet()
    pair.put(b"a")
    pair.quiet()
    stream.request_progress()
    stream.request_progress()
    pair.assert_same()
    for side in (stream.reference, stream.candidate):
        assert shapes(side)[-2:] == ["id=-1 rev=5 (progress)", "id=-1 rev=5 (progress)"]
    assert shapes(empty.reference) == ["id=-1 rev=4 (progress)"]


def test_progress_request_while_catching_up(pair: ServerPair) -> None:
    """RequestProgress right after creating watchers that replay history.

    etcd 3.5.1 answers at once (watch_id -1, current revision), before those watchers'
    history events; later etcd versions (and shim) wait until the stream's watchers are
    synced. Compared here: what both send (one -1 response, current revision; per watch
    id, the same responses). Not compared: where the -1 response falls among the other
    watch ids' responses (documented in the module docstring)."""
    for index in range(5):
        pair.put(b"k%d" % index)
    stream = pair.open_stream()
    stream.create(key=b"k", range_end=b"l", start_revision=1)
    stream.create(key=b"k2", start_revision=2)
    stream.request_progress()
    pair.quiet()
    pair.assert_same()
    for side in (stream.reference, stream.candidate):
        progress = [r for r in side.responses if r.watch_id == PROGRESS_WATCH_ID]
        assert [describe(r) for r in progress] == ["id=-1 rev=6 (progress)"]


def test_progress_request_with_a_watcher_canceled_for_compaction(pair: ServerPair) -> None:
    """RequestProgress next to a watch whose start revision is compacted: answered (with the
    current revision) without waiting for any further write."""
    for value in (b"1", b"2", b"3"):
        pair.put(b"k", value)  # revisions 2-4
    pair.kv(pb.CompactionRequest(revision=3, physical=True))
    stream = pair.open_stream()
    stream.create(key=b"k", start_revision=2)
    stream.request_progress()
    pair.quiet()
    for side in (stream.reference, stream.candidate):
        progress = [describe(r) for r in side.responses if r.watch_id == PROGRESS_WATCH_ID]
        assert progress == ["id=-1 rev=4 (progress)"], (side.label, shapes(side))
    pair.assert_same()


MAX_REQUEST_BYTES = 65536
BIG_VALUE = 60_000


def test_fragmented_watch_responses(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    """Watchers that asked for fragment get large responses in parts (fragment=true on all
    but the last). etcd splits a response once it reaches --max-request-bytes plus its
    512 KiB gRPC overhead allowance, each part staying below that size; others never."""
    etcd, shim = start_both(
        etcd_factory, shim_factory,
        etcd_args=[f"--max-request-bytes={MAX_REQUEST_BYTES}"],
        shim_args=["--max-request-bytes", str(MAX_REQUEST_BYTES)],
    )
    with (
        Client(etcd.endpoint) as reference,
        Client(shim.endpoint) as candidate,
        ServerPair(reference, candidate) as pair,
    ):
        for index in range(12):
            pair.put(b"f/%02d" % index, bytes([65 + index]) * BIG_VALUE)
        stream = pair.open_stream()
        stream.create(key=b"f/", range_end=b"f0", start_revision=1, fragment=True)
        stream.create(key=b"f/", range_end=b"f0", start_revision=1)
        stream.create(key=b"f/", range_end=b"f0", prev_kv=True, fragment=True)
        stream.create(key=b"f/00", prev_kv=True, fragment=True)
        stream.wait_for_events(2 * 12)  # both catching-up watchers have every put
        pair.kv(pb.DeleteRangeRequest(key=b"f/", range_end=b"f0"))
        stream.wait_for_events(2 * 12 + 3 * 12 + 1)  # and every watcher the deletes
        fragments = [describe(r)[:40] for r in stream.reference.responses if r.fragment]
        assert len(fragments) == 2, f"etcd fragmented as assumed: {fragments}"
        pair.assert_same()


def test_progress_notify_interval(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    """Watchers created with progress_notify get an empty response with the current revision
    every interval in which they were sent nothing; others never."""
    interval = 0.3
    etcd, shim = start_both(
        etcd_factory, shim_factory,
        etcd_args=["--experimental-watch-progress-notify-interval=300ms"],
        shim_args=["--watch-progress-notify-interval", "300ms"],
    )
    with (
        Client(etcd.endpoint) as reference,
        Client(shim.endpoint) as candidate,
        ServerPair(reference, candidate) as pair,
    ):
        pair.put(b"p/b", b"0")  # revision 2
        stream = pair.open_stream()
        stream.create(key=b"p/a", progress_notify=True)  # busy: an event every 0.1 s
        stream.create(key=b"p/b", progress_notify=True)  # idle
        stream.create(key=b"p/c")  # never asked
        stream.create(key=b"p/b", start_revision=1, progress_notify=True, prev_kv=True)
        time.sleep(0.5)
        first = pair.put(b"p/a", b"1")
        for value in range(2, 12):
            time.sleep(interval / 3)
            last = pair.put(b"p/a", b"%d" % value)
        time.sleep(3 * interval)  # not quiet(): progress notifications never stop
        problems = []
        counts: dict[str, dict[int, int]] = {}
        for name, side in zip(pair.names, (stream.reference, stream.candidate), strict=True):
            progress = [r for r in side.responses
                        if not (r.events or r.created or r.canceled) and r.watch_id >= 0]
            counts[name] = {w: sum(r.watch_id == w for r in progress) for w in (0, 1, 2, 3)}
            for response in progress:
                revision = response.header.revision
                if response.watch_id == 2:
                    problems.append(f"{name}: progress for a watcher that did not ask")
                if response.watch_id == 0 and first < revision < last:
                    problems.append(f"{name}: progress for a busy watcher: {describe(response)}")
                if not 2 <= revision <= last:
                    problems.append(f"{name}: progress revision out of range: {revision}")
            tail = [r for r in progress if r.header.revision == last]
            if {r.watch_id for r in tail} != {0, 1, 3}:
                problems.append(f"{name}: after the writes, progress went to "
                                f"{sorted({r.watch_id for r in tail})}, expected [0, 1, 3]")
            if counts[name][1] < 4:
                problems.append(f"{name}: only {counts[name][1]} progress notifications "
                                f"in about 2.5 s for the idle watcher")
        if abs(counts["etcd"][1] - counts["shim"][1]) > 2:
            problems.append(f"progress notification counts differ: {counts}")
        assert not problems, "\n".join(problems)
        # Events and created responses match exactly; progress ones are compared above.
        for side in (stream.reference, stream.candidate):
            assert not stream_guarantees(side.responses, "")
        live = [[describe(r) for r in side.responses if r.events or r.created]
                for side in (stream.reference, stream.candidate)]
        assert sorted(live[0]) == sorted(live[1])


def watch_concurrent_writes(client: Client, name: str) -> tuple[list[str], int]:
    """Write from 16 threads at once while a synced watcher watches every key.

    Returns (problems, how many live responses hold more than one revision): every put must
    come out as exactly one event, in revision order, each revision whole in one response,
    and each response headed with the newest revision it carries."""
    stream = WatchStream(client, name)
    try:
        stream.create(key=b"\x00", range_end=b"\x00", prev_kv=True)
        wait_quiet([stream])
        revisions: list[int] = []
        lock = threading.Lock()

        def writer(worker: int) -> None:
            for index in range(25):
                response = client.kv.Put(
                    pb.PutRequest(key=b"c/%d" % ((worker + index) % 8), value=b"%d" % index),
                    timeout=10,
                )
                with lock:
                    revisions.append(response.header.revision)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(writer, range(16)))
        wait_quiet([stream])
        responses = [r for r in stream.responses if r.events]
        problems = stream_guarantees(stream.responses, name)
        events = [e.kv.mod_revision for r in responses for e in r.events]
        if events != sorted(revisions):
            problems.append(f"{name}: events do not match the {len(revisions)} puts")
        problems += [
            f"{name}: header is not the newest revision of its events: {describe(r)}"
            for r in responses if r.header.revision != r.events[-1].kv.mod_revision
        ]
        batched = sum(len({e.kv.mod_revision for e in r.events}) > 1 for r in responses)
        return problems, batched
    finally:
        stream.close()


def test_live_events_under_concurrent_writes(
    etcd_factory: Callable[..., EtcdServer], shim_factory: Callable[..., ShimServer]
) -> None:
    """etcd notifies synced watchers once per revision, inside the write itself, so its
    live responses hold one revision each, however many clients write at once. shim sends a
    watcher's revisions that wait behind a busy stream together (etcd does that only for a
    watcher catching up; clients read each event's own mod_revision and must not rely on
    one revision per response, which etcd does not promise): what both must keep is every
    event once, in order, revisions whole, header = the newest revision of the response.
    The event sequence is checked against each server's own put responses (the revision
    order of concurrent puts is not deterministic, so the two are not compared directly)."""
    etcd, shim = start_both(etcd_factory, shim_factory)
    with (
        Client(etcd.endpoint) as reference,
        Client(shim.endpoint) as candidate,
        ThreadPoolExecutor(2) as pool,
    ):
        on_etcd = pool.submit(watch_concurrent_writes, reference, "etcd")
        on_shim = pool.submit(watch_concurrent_writes, candidate, "shim")
        assert on_etcd.result() == ([], 0), "etcd behaves as this test assumes"
        problems, _batched = on_shim.result()
    assert not problems, problems


# --- watch: seeded sequences -------------------------------------------------------------


def run_seed(
    seed: int, workdir: Path, names: tuple[str, str], shim_args: Sequence[str] = ()
) -> tuple[str | None, WatchStats | None]:
    """One seeded sequence on a fresh reference etcd and a fresh candidate (shim, or another
    etcd when names[1] starts with "etcd"): (failure report or None, stats)."""
    candidate_server = (
        EtcdServer(workdir / names[1]) if names[1].startswith("etcd")
        else ShimServer(workdir / names[1], extra_args=shim_args)
    )
    with (
        EtcdServer(workdir / names[0]) as reference_server,
        candidate_server,
        Client(reference_server.endpoint) as reference,
        Client(candidate_server.endpoint) as candidate,
    ):
        try:
            return None, run_watch_sequence(seed, ROUNDS, reference, candidate, names=names)
        except AssertionError as failure:
            logs = "\n".join(server.describe_log(15)
                             for server in (reference_server, candidate_server))
            return f"{failure}\n{logs}", None


def run_seeds(
    seeds: Sequence[int], root: Path, names: tuple[str, str], shim_args: Sequence[str] = ()
) -> list[WatchStats]:
    """Seeds run concurrently (each mostly waits for quiet streams); every failing seed's
    report is raised together."""
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(
            lambda seed: run_seed(seed, root / f"seed-{seed}", names, shim_args), seeds
        ))
    failures = [report for report, _ in results if report is not None]
    if failures:
        raise AssertionError("\n\n".join(failures))
    return [stats for _, stats in results if stats is not None]


def test_watch_matches_etcd_seeded(tmp_path: Path, datastore_args: list[str]) -> None:
    """Seeded rounds of watch requests (every range shape and start revision, prev_kv,
    filters, chosen and duplicate ids, cancels, progress requests) and KV writes from the
    KV suite's generator (puts, deletes, multi-key txns, compactions)."""
    for stats in run_seeds(SEEDS, tmp_path, ("etcd", "shim"), datastore_args):
        assert stats.events > 20 and stats.writes > 40, stats


@pytest.mark.harness
def test_harness_watch_etcd_agrees_with_etcd(tmp_path: Path) -> None:
    """Guards the harness, not shim: two real etcds must agree on whole seeded sequences,
    batching included, and the sequences must reach the cases they are meant to exercise."""
    stats = run_seeds(SEEDS[:2], tmp_path, ("etcd-1", "etcd-2"))
    assert sum(s.compacted for s in stats) and sum(s.refused for s in stats), stats
    assert sum(s.multi_revision_responses for s in stats), stats
    assert all(s.cancels and s.progress_requests and s.events > 50 for s in stats), stats
    shapes = Counter(shape for s in stats for shape in s.creates)
    for wanted in ("key/", "range/", "prefix/", "from/", "all/", "/past", "/now", "/future",
                   "/compacted", "/compact_point", "/negative"):
        assert any(wanted in shape for shape in shapes), f"no {wanted} watch: {shapes}"


# --- leases --------------------------------------------------------------------------------


def renumber(message: Message, ids: dict[int, int]) -> Message:
    """A copy with every lease id (fields ID and lease) mapped through `ids`."""
    copy = type(message)()
    copy.CopyFrom(message)
    stack = [copy]
    while stack:
        current = stack.pop()
        for fd, value in current.ListFields():
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend(value if fd.is_repeated else [value])
            elif fd.name in ("ID", "lease") and not fd.is_repeated and value in ids:
                setattr(current, fd.name, ids[value])
    return copy


def canonical(message: Message) -> Message:
    """Orders that etcd leaves random: TimeToLive keys, the Leases list."""
    if isinstance(message, pb.LeaseTimeToLiveResponse):
        keys = sorted(message.keys)
        del message.keys[:]
        message.keys.extend(keys)
    if isinstance(message, pb.LeaseLeasesResponse):
        leases = sorted(message.leases, key=lambda status: status.ID)
        del message.leases[:]
        message.leases.extend(leases)
    return message


@dataclass
class LeasePair:
    """Lease calls to both servers. Lease ids the servers chose are "handles": the same
    logical lease, one id per server; responses are compared with shim's ids renamed."""

    servers: ServerPair

    def __post_init__(self) -> None:
        self.handles: dict[str, tuple[int, int]] = {}
        self.to_etcd: dict[int, int] = {}

    def id(self, lease: str | int, side: int) -> int:
        return self.handles[lease][side] if isinstance(lease, str) else lease

    def call(self, method: str, build: Callable[[int], Message]) -> tuple[Outcome, Outcome]:
        outcomes = []
        for side, client in enumerate((self.servers.reference, self.servers.candidate)):
            try:
                response = getattr(client.lease, method)(build(side), timeout=10)
                outcomes.append(Outcome(response=response))
            except grpc.RpcError as error:
                outcomes.append(Outcome(code=error.code(), details=error.details()))
        return outcomes[0], outcomes[1]

    def same(self, method: str, build: Callable[[int], Message], tolerate_ttl: bool = False
             ) -> Outcome:
        """Both answer alike (shim's lease ids renamed, random orders sorted). TimeToLive's
        remaining TTL, counted down by each server's clock, may differ by one second."""
        etcd, shim = self.call(method, build)
        request = text_format.MessageToString(build(0), as_one_line=True)
        report = f"{method}({request})\netcd: {etcd.describe()}\nshim: {shim.describe()}"
        if etcd.response is None or shim.response is None:
            assert (etcd.code, etcd.details) == (shim.code, shim.details), report
            return etcd
        left = canonical(renumber(etcd.response, {}))
        right = canonical(renumber(shim.response, self.to_etcd))
        if tolerate_ttl and abs(left.TTL - right.TTL) <= 1:  # type: ignore[attr-defined]
            right.TTL = left.TTL  # type: ignore[attr-defined]
        found = first_difference(left, right)
        assert found is None, f"differs at {found.path}: {report}"
        return etcd

    def grant(self, handle: str, ttl: int) -> tuple[int, int]:
        """A lease with a server-chosen id on each server."""
        etcd, shim = self.call("LeaseGrant", lambda side: pb.LeaseGrantRequest(TTL=ttl))
        assert etcd.response is not None and shim.response is not None, (etcd, shim)
        ids = etcd.response.ID, shim.response.ID
        for name, lease_id in zip(self.servers.names, ids, strict=True):
            assert lease_id > 0, f"{name} chose lease id {lease_id}"
            assert lease_id not in (i for pair in self.handles.values() for i in pair), (
                f"{name} chose lease id {lease_id} twice"
            )
        self.handles[handle] = ids
        self.to_etcd[ids[1]] = ids[0]
        assert first_difference(etcd.response, renumber(shim.response, self.to_etcd)) is None, (
            etcd.describe(), shim.describe()
        )
        return ids

    def kv(self, build: Callable[[int], KvRequest]) -> Outcome:
        """A KV request to both (built per server: lease ids differ); outcomes compared with
        shim's lease ids renamed. Returns etcd's."""
        outcomes = [send(client, build(side)) for side, client in
                    enumerate((self.servers.reference, self.servers.candidate))]
        if outcomes[1].response is not None:
            outcomes[1] = Outcome(response=renumber(outcomes[1].response, self.to_etcd))
        found = outcome_difference(*outcomes)
        assert found is None, (
            f"{text_format.MessageToString(build(0), as_one_line=True)} differs at "
            f"{found.path}\netcd: {outcomes[0].describe()}\nshim: {outcomes[1].describe()}"
        )
        return outcomes[0]

    def put(self, key: bytes, lease: str | int, **fields: object) -> Outcome:
        return self.kv(lambda side: pb.PutRequest(
            key=key, value=b"v", lease=self.id(lease, side), **fields))

    def keep_alive(self, *leases: str | int) -> list[Message]:
        """One KeepAlive stream per server, one request per lease; responses compared."""
        answers = []
        for side, client in enumerate((self.servers.reference, self.servers.candidate)):
            requests = [pb.LeaseKeepAliveRequest(ID=self.id(lease, side)) for lease in leases]
            answers.append(list(client.lease.LeaseKeepAlive(iter(requests), timeout=10)))
        renamed = [renumber(r, self.to_etcd) for r in answers[1]]
        assert len(answers[0]) == len(renamed) == len(leases)
        for etcd, shim in zip(answers[0], renamed, strict=True):
            assert first_difference(etcd, shim) is None, (etcd, shim)
        return answers[0]


def test_lease_requests_match_etcd(pair: ServerPair) -> None:
    leases = LeasePair(pair)
    stream = pair.open_stream()
    stream.create(key=b"\x00", range_end=b"\x00", prev_kv=True)
    stream.create(key=b"l/", range_end=prefix_end(b"l/"), filters=[NOPUT])
    pair.quiet()

    # Grant: server-chosen ids, client-chosen ids, limits.
    leases.grant("first", 60)
    leases.grant("second", 60)
    leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=1000, TTL=60))
    duplicate = leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=1000, TTL=30))
    assert duplicate.details == "etcdserver: lease already exists", duplicate
    too_large = leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=1001,
                                                                          TTL=9_000_000_001))
    assert too_large.details == "etcdserver: too large lease TTL", too_large
    leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=1002, TTL=9_000_000_000))
    for lease_id, ttl in ((1003, 0), (1004, 1), (1005, -5)):
        granted = leases.same("LeaseGrant", lambda _, i=lease_id, t=ttl: pb.LeaseGrantRequest(
            ID=i, TTL=t))
        assert granted.response is not None and granted.response.TTL == 2, granted
    leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=-7, TTL=60))

    # Keys attached to leases, moved between them, and detached.
    for key in (b"l/b", b"l/a", b"l/c"):
        leases.put(key, 1000)
    leases.put(b"l/s1", "first")
    leases.put(b"l/s2", "first")
    leases.put(b"l/moved", 1000)
    leases.put(b"l/moved", "second")
    leases.put(b"l/detached", 1000)
    leases.put(b"l/detached", 0)
    leases.put(b"l/kept", 1000)
    leases.put(b"l/kept", 0, ignore_lease=True, prev_kv=True)
    unknown_put = pair.kv(pb.PutRequest(key=b"l/x", value=b"v", lease=424242))
    assert unknown_put.details == "etcdserver: requested lease not found", unknown_put
    pair.kv(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"l/t1", value=b"t", lease=1000)),
        pb.RequestOp(request_put=pb.PutRequest(key=b"l/t2", value=b"t", lease=1004)),
    ]))
    pair.kv(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"l/t3", value=b"t", lease=1000)),
        pb.RequestOp(request_put=pb.PutRequest(key=b"l/t4", value=b"t", lease=999)),
    ]))

    # TimeToLive, Leases, KeepAlive.
    for lease in ("first", "second", 1000, 1002, 1003, -7, 424242):
        for keys in (False, True):
            leases.same("LeaseTimeToLive", lambda side, lease=lease, keys=keys:
                        pb.LeaseTimeToLiveRequest(ID=leases.id(lease, side), keys=keys),
                        tolerate_ttl=True)
    listed = leases.same("LeaseLeases", lambda _: pb.LeaseLeasesRequest())
    assert listed.response is not None and len(listed.response.leases) == 8, listed
    answers = leases.keep_alive(1000, "first", 424242, 0, 1004)
    assert [a.TTL for a in answers] == [60, 60, 0, 0, 2]

    # Revoke: keys deleted in one revision, in key order; errors for unknown leases.
    leases.same("LeaseRevoke", lambda _: pb.LeaseRevokeRequest(ID=1000))
    leases.same("LeaseRevoke", lambda side: pb.LeaseRevokeRequest(ID=leases.id("first", side)))
    leases.same("LeaseRevoke", lambda _: pb.LeaseRevokeRequest(ID=1003))  # no keys
    for lease_id in (1000, 424242, 0):
        gone = leases.same("LeaseRevoke", lambda _, i=lease_id: pb.LeaseRevokeRequest(ID=i))
        assert gone.code == grpc.StatusCode.NOT_FOUND, gone
        assert gone.details == "etcdserver: requested lease not found", gone
    leases.same("LeaseTimeToLive", lambda _: pb.LeaseTimeToLiveRequest(ID=1000, keys=True))
    assert [a.TTL for a in leases.keep_alive(1000, "first")] == [0, 0]
    leases.same("LeaseLeases", lambda _: pb.LeaseLeasesRequest())
    leases.kv(lambda _: pb.RangeRequest(key=b"l/", range_end=prefix_end(b"l/")))
    pair.quiet()
    # Event kvs carry lease ids: compare them with shim's server-chosen ids renamed.
    renamed = [renumber(r, leases.to_etcd) for r in stream.candidate.responses]
    problems = compare_watch_responses(stream.reference.responses, renamed, pair.names)
    problems += stream_guarantees(stream.candidate.responses, "shim")
    assert not problems, problems_report("watch responses differ", problems)
    revoked = [r for r in stream.reference.responses if r.watch_id == 1 and r.events]
    assert [len(r.events) for r in revoked] == [5, 2], [describe(r) for r in revoked]


def test_lease_expiry_matches_etcd(pair: ServerPair) -> None:
    """Leases that run out: their keys are deleted in one revision, watchers get the DELETE
    events, and the lease is gone; a kept-alive lease outlives its first deadline."""
    leases = LeasePair(pair)
    stream = pair.open_stream()
    stream.create(key=b"\x00", range_end=b"\x00", prev_kv=True)
    stream.create(key=b"x/", range_end=prefix_end(b"x/"), filters=[NOPUT])
    pair.quiet()
    asked = time.monotonic()
    leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=501, TTL=2))
    leases.same("LeaseGrant", lambda _: pb.LeaseGrantRequest(ID=502, TTL=2))
    granted = time.monotonic()
    for key in (b"x/b", b"x/a", b"x/c"):
        leases.put(key, 501)
    leases.put(b"x/c", 0)  # detached again: survives
    leases.put(b"x/d", 502)
    time.sleep(1.0)
    renewing = time.monotonic()
    assert [a.TTL for a in leases.keep_alive(502)] == [2]
    renewed = time.monotonic()

    def wait_gone(key: bytes, timeout: float) -> list[float]:
        """Seconds until `key` disappeared on each server (polled concurrently)."""
        def poll(client: Client) -> float:
            deadline = time.monotonic() + timeout
            while client.kv.Range(pb.RangeRequest(key=key), timeout=5).kvs:
                assert time.monotonic() < deadline, f"{key!r} still there after {timeout}s"
                time.sleep(0.02)
            return time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(poll, (pair.reference, pair.candidate)))

    # etcd revokes expired leases in a loop every 500 ms: up to 0.5 s late, and more on a
    # busy machine. Neither may revoke a lease before its TTL has passed.
    for name, at in zip(pair.names, wait_gone(b"x/a", 5), strict=True):
        assert at - asked >= 2 - 0.05, f"{name}: lease expired after {at - asked:.2f}s"
        assert at - granted <= 2 + 1.5, f"{name}: lease expired after {at - granted:.2f}s"
    # Lease 502's first deadline has passed with 501's; renewed, its key is still there.
    for side, client in zip(pair.names, (pair.reference, pair.candidate), strict=True):
        assert client.kv.Range(pb.RangeRequest(key=b"x/d")).kvs, f"{side}: renewed lease gone"
    for name, at in zip(pair.names, wait_gone(b"x/d", 5), strict=True):
        assert at - renewing >= 2 - 0.05, f"{name}: renewed lease expired after {at - renewing}"
        assert at - renewed <= 2 + 1.5, f"{name}: renewed lease expired after {at - renewed}"

    pair.kv(pb.RangeRequest(key=b"x/", range_end=prefix_end(b"x/")))
    leases.same("LeaseTimeToLive", lambda _: pb.LeaseTimeToLiveRequest(ID=501, keys=True))
    assert [a.TTL for a in leases.keep_alive(501, 502)] == [0, 0]
    leases.same("LeaseLeases", lambda _: pb.LeaseLeasesRequest())
    gone = leases.same("LeaseRevoke", lambda _: pb.LeaseRevokeRequest(ID=501))
    assert gone.details == "etcdserver: requested lease not found", gone
    late = pair.kv(pb.PutRequest(key=b"x/e", value=b"v", lease=502))
    assert late.details == "etcdserver: requested lease not found", late
    pair.assert_same()
    deletes = [describe(r) for r in stream.reference.responses if r.watch_id == 1]
    assert deletes == [
        "id=1 rev=1 created",
        "id=1 rev=7 events=[DELETE b'x/a'@7, DELETE b'x/b'@7]",
        "id=1 rev=8 events=[DELETE b'x/d'@8]",
    ], deletes


def test_leases_list_soonest_expiry_first(etcd: EtcdServer, shim: ShimServer) -> None:
    """LeaseLeases lists the leases in the order they expire, as etcd's lessor sorts them."""
    ttls = {7001: 300, 7002: 30, 7003: 3000, 7004: 100}
    listed = []
    for server in (etcd, shim):
        with Client(server.endpoint) as client:
            for lease_id, ttl in ttls.items():
                client.lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=ttl))
            leases = client.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases
            listed.append([status.ID for status in leases if status.ID in ttls])
            for lease_id in ttls:
                client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    assert listed == [[7002, 7004, 7001, 7003]] * 2
