"""v3electionpb.Election: etcd's leader election (Campaign, Proclaim, Leader, Observe, Resign).

Each campaigner holds "<name>/<lease hex>" with its lease; the one whose key was created first
leads, and its key's value is the proclaimed value. Leadership ends with the key: Resign
deletes it, and an expired or revoked lease deletes it too. Errors reach the caller as etcd's
do, through its in-server client: UNKNOWN with etcd's message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from shim.api.concurrency import (
    Recipes,
    contender_key,
    created_equals,
    first_created,
    prefix_end,
    run_detached,
)
from shim.api.errors import (
    RequestError,
    as_seen_through_client,
    client_errors,
    from_store_error,
)
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, acting_as, permission
from shim.mvcc.errors import StoreError
from shim.pb import rpc_pb2, v3election_pb2, v3election_pb2_grpc
from shim.pb.kv_pb2 import Event, KeyValue
from shim.pb.rpc_pb2 import RequestOp, ResponseHeader, TxnRequest

NOT_LEADER = "election: not leader"
NO_LEADER = "election: no leader"
MISSING_LEADER_KEY = '"leader" field must be provided'


def _unknown(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNKNOWN, message)


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, recipes: Recipes, identity: Identity, guard: Guard) -> None:
        self._recipes = recipes
        self._identity = identity
        self.guard = guard

    def _header(self, target: ResponseHeader, source: ResponseHeader) -> None:
        target.CopyFrom(source)
        self._identity.fill(target)

    @client_errors
    @permission(Rule.CALLER)  # and the election's keys, checked as the caller's operations
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.CampaignResponse:
        recipes = self._recipes
        lease = await recipes.session_lease(request.lease)
        prefix = request.name + b"/"
        key = contender_key(prefix, lease)
        resp = await recipes.join_queue(key, request.value, lease)
        leader = v3election_pb2.LeaderKey(
            name=request.name, key=key, rev=resp.header.revision, lease=lease
        )
        if not resp.succeeded:  # this lease campaigns already: keep its place in the queue
            mine = resp.responses[0].response_range.kvs[0]
            leader.rev = mine.create_revision
            if mine.value != request.value:
                try:
                    await self._proclaim(leader, request.value)
                except BaseException:
                    run_detached(self._resign(leader), "resigning a failed campaign")
                    raise
        try:
            await recipes.wait_deletes(prefix, leader.rev - 1)
        except BaseException:
            run_detached(self._resign(leader), "resigning an abandoned campaign")
            raise
        out = v3election_pb2.CampaignResponse(leader=leader)
        # As etcd: the header of the campaign's own write, not of the moment it won.
        self._header(out.header, resp.header)
        return out

    async def _proclaim(
        self, leader: v3election_pb2.LeaderKey, value: bytes
    ) -> rpc_pb2.TxnResponse:
        put = rpc_pb2.PutRequest(key=leader.key, value=value, lease=leader.lease)
        resp = await self._recipes.txn(TxnRequest(
            compare=[created_equals(leader.key, leader.rev)],
            success=[RequestOp(request_put=put)],
        ))
        if not resp.succeeded:
            raise _unknown(NOT_LEADER)
        return resp

    async def _resign(self, leader: v3election_pb2.LeaderKey) -> rpc_pb2.TxnResponse:
        delete = rpc_pb2.DeleteRangeRequest(key=leader.key)
        return await self._recipes.txn(TxnRequest(
            compare=[created_equals(leader.key, leader.rev)],
            success=[RequestOp(request_delete_range=delete)],
        ))

    async def _resumed(self, leader: v3election_pb2.LeaderKey) -> v3election_pb2.LeaderKey:
        """The leader key a Proclaim or Resign acts with. Like etcd, a request naming no lease
        (0) gets a session of its own: a fresh lease."""
        resumed = v3election_pb2.LeaderKey()
        resumed.CopyFrom(leader)
        resumed.lease = await self._recipes.session_lease(leader.lease)
        return resumed

    @client_errors
    @permission(Rule.CALLER)  # and the election's keys, checked as the caller's operations
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ProclaimResponse:
        if not request.HasField("leader"):
            raise _unknown(MISSING_LEADER_KEY)
        resp = await self._proclaim(await self._resumed(request.leader), request.value)
        out = v3election_pb2.ProclaimResponse()
        self._header(out.header, resp.header)
        return out

    @client_errors
    @permission(Rule.CALLER)  # and the election's keys, checked as the caller's operations
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ResignResponse:
        if not request.HasField("leader"):
            raise _unknown(MISSING_LEADER_KEY)
        resp = await self._resign(await self._resumed(request.leader))
        out = v3election_pb2.ResignResponse()
        self._header(out.header, resp.header)
        return out

    @client_errors
    @permission(Rule.CALLER)  # and the election's keys, checked as the caller's operations
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.LeaderResponse:
        resp = await self._recipes.range(first_created(request.name + b"/"))
        if not resp.kvs:
            raise _unknown(NO_LEADER)
        out = v3election_pb2.LeaderResponse(kv=resp.kvs[0])
        self._header(out.header, resp.header)
        return out

    @permission(Rule.OPEN)  # the caller is looked at below, where its errors are etcd's
    async def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """Each leader's value, then every value it proclaims, until its key is deleted; then
        the next leader's. The stream ends when the server stops."""
        prefix = request.name + b"/"
        recipes = self._recipes
        try:
            caller = await self.guard.caller(context)
            while True:
                with acting_as(caller):
                    resp = await recipes.range(first_created(prefix))
                if resp.kvs:
                    header, kv = resp.header, resp.kvs[0]
                else:
                    header, kv = await self._first_put(prefix, resp.header.revision)
                yield self._leader_response(header, kv)
                async with recipes.watch(kv.key, b"", header.revision + 1) as events:
                    async for watch_header, event in events:
                        if event.type == Event.DELETE:
                            break
                        yield self._leader_response(watch_header, event.kv)
        except (RequestError, StoreError) as exc:
            err = exc if isinstance(exc, RequestError) else from_store_error(exc)
            err = as_seen_through_client(err)
            await context.abort(err.code, err.message)

    async def _first_put(self, prefix: bytes, revision: int) -> tuple[ResponseHeader, KeyValue]:
        """Wait for the first campaigner of an election that has none."""
        async with self._recipes.watch(prefix, prefix_end(prefix), revision) as events:
            async for watch_header, event in events:
                if event.type == Event.PUT:
                    header = ResponseHeader()
                    header.CopyFrom(watch_header)
                    # One response may hold several revisions: report this put's own.
                    header.revision = event.kv.mod_revision
                    return header, event.kv
        raise AssertionError("a watch ends only with an error")  # pragma: no cover

    def _leader_response(
        self, header: ResponseHeader, kv: KeyValue
    ) -> v3election_pb2.LeaderResponse:
        out = v3election_pb2.LeaderResponse(kv=kv)
        self._header(out.header, header)
        return out
