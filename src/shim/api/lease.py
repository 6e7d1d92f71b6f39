"""etcdserverpb.Lease: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from shim.api.errors import grpc_errors
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, current_caller, permission
from shim.auth.state import Caller
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc


class LeaseKeeper(Protocol):
    """What the Lease service asks of a lessor: this process's, or the store process's."""

    async def grant(self, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse: ...
    async def revoke(
        self, lease_id: int, caller: Caller | None = None
    ) -> rpc_pb2.LeaseRevokeResponse: ...
    async def renew(self, lease_id: int) -> int: ...
    async def time_to_live(self, lease_id: int) -> tuple[int, int] | None: ...
    async def lease_ids(self) -> list[int]: ...


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(
        self, lessor: LeaseKeeper, store: Store, identity: Identity, guard: Guard
    ) -> None:
        self._lessor = lessor
        self._store = store
        self._identity = identity
        self.guard = guard

    def _header(self, header: rpc_pb2.ResponseHeader) -> None:
        if header.revision == 0:
            header.revision = self._store.revision
        self._identity.fill(header)

    @grpc_errors
    @permission(Rule.CALLER)  # a valid token, if any; no permission (as etcd)
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        resp = await self._lessor.grant(request)
        self._header(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.CALLER)  # and every attached key writable (checked by the writer)
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        resp = await self._lessor.revoke(request.ID, current_caller())
        self._header(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.OPEN)  # with keys: a caller who may read every key listed (etcd 3.5.9+)
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        if request.keys:
            caller = await self.guard.caller(context)
            await self._store.read_auth(
                lambda state, view: state.check_lease_keys_readable(
                    caller, lambda: view.lease_keys(request.ID)
                )
            )
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID)
        found = await self._lessor.time_to_live(request.ID)
        if found is None:
            resp.TTL = -1  # etcd answers an unknown lease this way, not with an error
        else:
            resp.TTL, resp.grantedTTL = found
            if request.keys:
                resp.keys.extend(await self._store.lease_keys(request.ID))
        self._header(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.OPEN)
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        resp = rpc_pb2.LeaseLeasesResponse()
        for lease_id in await self._lessor.lease_ids():
            resp.leases.add(ID=lease_id)
        self._header(resp.header)
        return resp

    @permission(Rule.OPEN)
    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for req in request_iterator:
            # The header is taken before the renewal, as etcd does, so a revoke can never
            # appear to happen before a keep-alive that succeeded.
            resp = rpc_pb2.LeaseKeepAliveResponse(ID=req.ID)
            self._header(resp.header)
            resp.TTL = await self._lessor.renew(req.ID)
            yield resp
