"""etcd's Lock and Election services (v3lockpb, v3electionpb) over gRPC, side by side with a
real etcd, and the `etcdctl lock` / `etcdctl elect` commands (etcd's client-side recipes over
KV, Watch and Lease).

Both servers get the same requests in the same order, so revisions match; what depends on the
server's random lease ids (the contender keys "<name>/<lease hex>", lease fields) and its
identity is normalised before comparing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message

from shim.api import concurrency
from shim.api.concurrency import Recipes
from shim.auth.state import NOBODY
from shim.backend.sqlite import SqliteBackend
from shim.mvcc.store import Store
from shim.pb import rpc_pb2 as pb
from shim.pb import v3election_pb2 as epb
from shim.pb import v3lock_pb2 as lpb
from tests.support import Client, EtcdServer, ShimServer
from tests.support.etcd import Etcdctl

WAIT = 10.0  # seconds a call that should finish at once may take on a loaded machine


@dataclass
class Side:
    """One server, a client, and the lease ids granted on it (in order)."""

    client: Client
    leases: list[int] = field(default_factory=list)

    def grant(self, ttl: int = 30) -> int:
        lease = self.client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=WAIT).ID
        self.leases.append(lease)
        return lease

    def normalise(self, text: str) -> str:
        """``text`` with this server's lease ids (hex and decimal) and identity taken out."""
        for index, lease in enumerate(self.leases):
            text = text.replace(format(lease, "x"), f"<lease{index}>")
            text = text.replace(str(lease), f"<lease{index}>")
        return "\n".join(
            line for line in text.splitlines()
            if line.strip().split(":")[0] not in IDENTITY_FIELDS
        )


IDENTITY_FIELDS = frozenset({"cluster_id", "member_id", "raft_term"})


def outcome(side: Side, call: Callable[[], Message]) -> tuple[str, str]:
    try:
        return "OK", side.normalise(str(call()))
    except grpc.RpcError as exc:
        return exc.code().name, side.normalise(exc.details())  # type: ignore[attr-defined]


@dataclass
class Pair:
    etcd: Side
    shim: Side

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.etcd, self.shim

    def grant(self, ttl: int = 30) -> None:
        for side in self.sides:
            side.grant(ttl)

    def same(self, make: Callable[[Side], Callable[[], Message]]) -> tuple[str, str]:
        on_etcd = outcome(self.etcd, make(self.etcd))
        on_shim = outcome(self.shim, make(self.shim))
        assert on_shim == on_etcd, f"\netcd: {on_etcd}\nshim: {on_shim}"
        return on_shim


@pytest.fixture
def pair(etcd_factory: Callable[..., EtcdServer], shim: ShimServer) -> Iterator[Pair]:
    etcd = etcd_factory()
    with Client(etcd.endpoint) as on_etcd, Client(shim.endpoint) as on_shim:
        yield Pair(Side(on_etcd), Side(on_shim))


def lease(side: Side, index: int) -> int:
    return side.leases[index]


def key_of(side: Side, name: bytes, index: int) -> bytes:
    return name + b"/" + format(side.leases[index], "x").encode()


def test_lock_and_unlock_as_etcd(pair: Pair) -> None:
    pair.grant()
    pair.grant()
    # The first contender holds the lock at once; locking again with its lease is the same
    # acquisition.
    first = pair.same(lambda s: lambda: s.client.lock.Lock(
        lpb.LockRequest(name=b"L", lease=lease(s, 0)), timeout=WAIT))
    assert "<lease0>" in first[1]
    pair.same(lambda s: lambda: s.client.lock.Lock(
        lpb.LockRequest(name=b"L", lease=lease(s, 0)), timeout=WAIT))
    # The lock's key is an ordinary key carrying the lease.
    pair.same(lambda s: lambda: s.client.kv.Range(pb.RangeRequest(key=b"L/", range_end=b"L0")))
    # Another name is another lock; an empty name is allowed (the key is "/<lease>").
    pair.same(lambda s: lambda: s.client.lock.Lock(
        lpb.LockRequest(name=b"", lease=lease(s, 1)), timeout=WAIT))
    pair.same(lambda s: lambda: s.client.lock.Unlock(
        lpb.UnlockRequest(key=key_of(s, b"L", 0)), timeout=WAIT))
    # Unlocking a key that is gone is not an error; an empty key is.
    pair.same(lambda s: lambda: s.client.lock.Unlock(lpb.UnlockRequest(key=b"nope"), timeout=WAIT))
    assert pair.same(lambda s: lambda: s.client.lock.Unlock(lpb.UnlockRequest(), timeout=WAIT)) == (
        "UNKNOWN", "etcdserver: key is not provided")
    # A lease that does not exist.
    assert pair.same(lambda s: lambda: s.client.lock.Lock(
        lpb.LockRequest(name=b"L", lease=12345), timeout=WAIT)) == (
        "UNKNOWN", "etcdserver: requested lease not found")


def test_lock_bad_input(pair: Pair) -> None:
    # A name too long for a write request: refused as etcd's own Txn would be.
    pair.grant()
    huge = b"n" * (1536 * 1024)
    assert pair.same(lambda s: lambda: s.client.lock.Lock(
        lpb.LockRequest(name=huge, lease=lease(s, 0)), timeout=WAIT)) == (
        "UNKNOWN", "etcdserver: request is too large")
    assert pair.same(lambda s: lambda: s.client.election.Campaign(
        epb.CampaignRequest(name=b"e", lease=99, value=b"v"), timeout=WAIT)) == (
        "UNKNOWN", "etcdserver: requested lease not found")


def test_election_as_etcd(pair: Pair) -> None:
    assert pair.same(lambda s: lambda: s.client.election.Leader(
        epb.LeaderRequest(name=b"E"), timeout=WAIT)) == ("UNKNOWN", "election: no leader")
    pair.grant()
    pair.same(lambda s: lambda: s.client.election.Campaign(
        epb.CampaignRequest(name=b"E", lease=lease(s, 0), value=b"v1"), timeout=WAIT))
    # Campaigning again with the same lease and another value proclaims it; the header stays
    # the one of the first campaign write, as in etcd.
    pair.same(lambda s: lambda: s.client.election.Campaign(
        epb.CampaignRequest(name=b"E", lease=lease(s, 0), value=b"v2"), timeout=WAIT))
    pair.same(lambda s: lambda: s.client.election.Leader(
        epb.LeaderRequest(name=b"E"), timeout=WAIT))

    def leader_key(s: Side, rev: int = 2) -> epb.LeaderKey:
        return epb.LeaderKey(name=b"E", key=key_of(s, b"E", 0), rev=rev, lease=lease(s, 0))

    pair.same(lambda s: lambda: s.client.election.Proclaim(
        epb.ProclaimRequest(leader=leader_key(s), value=b"v3"), timeout=WAIT))
    # A stale leader key (wrong create revision) is not the leader.
    assert pair.same(lambda s: lambda: s.client.election.Proclaim(
        epb.ProclaimRequest(leader=leader_key(s, rev=1), value=b"x"), timeout=WAIT)) == (
        "UNKNOWN", "election: not leader")
    for method in ("Proclaim", "Resign"):
        request = epb.ProclaimRequest(value=b"x") if method == "Proclaim" else epb.ResignRequest()
        assert pair.same(lambda s, m=method, r=request: lambda: getattr(s.client.election, m)(
            r, timeout=WAIT)) == ("UNKNOWN", '"leader" field must be provided')
    # Resigning with a stale key does nothing; with the right one the election is empty.
    pair.same(lambda s: lambda: s.client.election.Resign(
        epb.ResignRequest(leader=leader_key(s, rev=1)), timeout=WAIT))
    pair.same(lambda s: lambda: s.client.election.Resign(
        epb.ResignRequest(leader=leader_key(s)), timeout=WAIT))
    assert pair.same(lambda s: lambda: s.client.election.Leader(
        epb.LeaderRequest(name=b"E"), timeout=WAIT)) == ("UNKNOWN", "election: no leader")


def test_two_lock_contenders_and_lease_expiry(shim: ShimServer) -> None:
    """The second contender waits until the first unlocks; a holder whose lease expires
    releases the lock to the next one."""
    with Client(shim.endpoint) as client, ThreadPoolExecutor(2) as pool:
        side = Side(client)
        first, second = side.grant(), side.grant()
        held = client.lock.Lock(lpb.LockRequest(name=b"m", lease=first), timeout=WAIT)
        waiting: Future[Any] = pool.submit(
            client.lock.Lock, lpb.LockRequest(name=b"m", lease=second), timeout=30
        )
        # Still waiting once the lock's keys are both written (the waiter's key is there).
        wait_for_keys(client, b"m/", 2)
        assert not waiting.done()
        client.lock.Unlock(lpb.UnlockRequest(key=held.key), timeout=WAIT)
        got = waiting.result(timeout=WAIT)
        assert got.key == b"m/" + format(second, "x").encode()
        assert got.header.revision > held.header.revision
        client.lock.Unlock(lpb.UnlockRequest(key=got.key), timeout=WAIT)

        # A holder that stops renewing loses the lock when its lease expires (about 2 s).
        short = side.grant(ttl=2)
        client.lock.Lock(lpb.LockRequest(name=b"x", lease=short), timeout=WAIT)
        after_expiry = pool.submit(
            client.lock.Lock, lpb.LockRequest(name=b"x", lease=first), timeout=30
        )
        got = after_expiry.result(timeout=20)
        assert got.key == b"x/" + format(first, "x").encode()
        assert not client.kv.Range(pb.RangeRequest(key=b"x/" + format(short, "x").encode())).kvs


def test_cancelled_lock_leaves_the_queue(shim: ShimServer) -> None:
    """A contender whose caller goes away while it waits removes its key (as etcd does), so
    it never holds the lock later."""
    with Client(shim.endpoint) as client:
        side = Side(client)
        first, second = side.grant(), side.grant()
        held = client.lock.Lock(lpb.LockRequest(name=b"c", lease=first), timeout=WAIT)
        call = client.lock.Lock.future(lpb.LockRequest(name=b"c", lease=second), timeout=30)
        wait_for_keys(client, b"c/", 2)
        call.cancel()
        wait_for_keys(client, b"c/", 1)
        client.lock.Unlock(lpb.UnlockRequest(key=held.key), timeout=WAIT)
        assert not client.kv.Range(pb.RangeRequest(key=b"c/", range_end=b"c0")).kvs


class SlowStore:
    """A real store whose transactions wait to be let through: the window in which a
    contender's caller can go away after its key's write started (with ``--processes`` the
    answer crosses a socket)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def txn(self, request: pb.TxnRequest, caller: Any) -> pb.TxnResponse:
        self.started.set()
        await self.go.wait()
        return await self.store.txn(request, caller)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_contender_cancelled_while_its_key_is_written_removes_it(tmp_path: Path) -> None:
    async def main() -> None:
        backend = SqliteBackend(tmp_path / "state.db", synchronous="FULL")
        backend.open()
        store = Store(backend)
        await store.start()
        try:
            slow = SlowStore(store)
            recipes = Recipes(cast(Store, slow), cast(Any, None), cast(Any, None), 1 << 20)
            contender = asyncio.ensure_future(recipes.join_queue(b"q/1", b"", 0))
            await slow.started.wait()
            contender.cancel()
            slow.go.set()
            with pytest.raises(asyncio.CancelledError):
                await contender
            await asyncio.gather(*concurrency._detached)
            left = await store.range(pb.RangeRequest(key=b"q/", range_end=b"q0"), NOBODY)
            assert store.revision == 3  # the key was written, then removed
            assert not left.kvs
        finally:
            await store.close()
            backend.close()

    asyncio.run(main())


def wait_for_keys(client: Client, prefix: bytes, count: int) -> None:
    """Watch ``prefix`` until exactly ``count`` keys exist under it."""
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    seen = threading.Event()

    def requests() -> Iterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=prefix, range_end=end))
        seen.wait(WAIT)

    responses = client.watch.Watch(requests(), timeout=WAIT)
    try:
        next(responses)  # created: from here on no change is missed
        while client.kv.Range(
            pb.RangeRequest(key=prefix, range_end=end, count_only=True)
        ).count != count:
            next(responses)
    finally:
        seen.set()
        responses.cancel()


def test_campaign_observe_proclaim_resign(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client, ThreadPoolExecutor(2) as pool:
        side = Side(client)
        first, second = side.grant(), side.grant()
        observed = client.election.Observe(epb.LeaderRequest(name=b"o"), timeout=30)
        won = client.election.Campaign(
            epb.CampaignRequest(name=b"o", lease=first, value=b"a"), timeout=WAIT
        )
        assert next(observed).kv.value == b"a"
        pending = pool.submit(
            client.election.Campaign,
            epb.CampaignRequest(name=b"o", lease=second, value=b"b"), timeout=30,
        )
        client.election.Proclaim(
            epb.ProclaimRequest(leader=won.leader, value=b"a2"), timeout=WAIT
        )
        assert next(observed).kv.value == b"a2"
        assert not pending.done()
        client.election.Resign(epb.ResignRequest(leader=won.leader), timeout=WAIT)
        second_won = pending.result(timeout=WAIT)
        assert second_won.leader.key == b"o/" + format(second, "x").encode()
        seen = next(observed)
        assert (seen.kv.key, seen.kv.value) == (second_won.leader.key, b"b")
        leader = client.election.Leader(epb.LeaderRequest(name=b"o"), timeout=WAIT)
        assert leader.kv.value == b"b"
        observed.cancel()


# --- etcdctl lock / elect (client-side recipes) -----------------------------------------------


def test_etcdctl_lock_and_elect_as_etcd(
    etcd_factory: Callable[..., EtcdServer], shim: ShimServer
) -> None:
    etcd = etcd_factory()
    outputs = []
    for endpoint in (etcd.endpoint, shim.endpoint):
        # The first holder keeps the lock until it is stopped; the second runs its command
        # once it gets the lock.
        holder = Etcdctl(endpoint, "lock", "job")
        holder.wait_for(lambda lines: len(lines) >= 1)
        waiter = Etcdctl(endpoint, "lock", "job", "--", "echo", "second holder ran")
        candidate = Etcdctl(endpoint, "elect", "vote", "first")
        candidate.wait_for(lambda lines: len(lines) >= 2)
        observer = Etcdctl(endpoint, "elect", "-l", "vote")
        observer.wait_for(lambda lines: len(lines) >= 2)
        holder.stop()  # SIGTERM: etcdctl revokes its session, the key goes
        waiter.wait_for(lambda lines: "second holder ran" in lines)
        candidate.stop()
        follower = Etcdctl(endpoint, "elect", "vote", "second")
        observer.wait_for(lambda lines: lines[-1:] == ["second"])
        follower.wait_for(lambda lines: len(lines) >= 2)  # it has won and said so
        runs = [holder.lines, waiter.stop(), candidate.lines, follower.stop(), observer.stop()]
        outputs.append([[line.split("/")[0] for line in lines] for lines in runs])
    assert outputs[0] == outputs[1]
    assert outputs[1] == [
        ["job", ""], ["second holder ran"], ["vote", "first"], ["vote", "second"],
        ["vote", "first", "vote", "second"],
    ]
