"""etcdserverpb.Cluster: MemberList answers with this node; membership changes are not built."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from shim.api import errors
from shim.api.errors import grpc_errors
from shim.api.header import Identity
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(
        self,
        store: Store,
        identity: Identity,
        name: str,
        client_urls: Callable[[], list[str]],
    ) -> None:
        self._store = store
        self._identity = identity
        self._name = name
        self._client_urls = client_urls

    @grpc_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        resp = rpc_pb2.MemberListResponse()
        resp.members.add(
            ID=self._identity.member_id,
            name=self._name,
            clientURLs=self._client_urls(),
        )
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        raise errors.unimplemented("MemberAdd (shim nodes join through replication links)")

    @grpc_errors
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        raise errors.unimplemented("MemberRemove")

    @grpc_errors
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        raise errors.unimplemented("MemberUpdate")

    @grpc_errors
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        raise errors.unimplemented("MemberPromote")
