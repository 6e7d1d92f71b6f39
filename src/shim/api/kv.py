"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from shim.api import validate
from shim.api.errors import grpc_errors
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, current_caller, permission
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc

MAX_TXN_OPS = 128


def _check_txn(request: rpc_pb2.TxnRequest) -> None:
    validate.check_txn(request, MAX_TXN_OPS)


# Each method's request checks (etcd's gRPC layer) come before its token is looked at, and the
# size check after, in etcd's order.
class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(
        self, store: Store, identity: Identity, max_request_bytes: int, guard: Guard
    ) -> None:
        self._store = store
        self._identity = identity
        self._max_request_bytes = max_request_bytes
        self.guard = guard

    def _check_size(self, request: Message) -> None:
        validate.check_size(request, self._max_request_bytes)

    @grpc_errors
    @permission(Rule.CALLER, validate=validate.check_range)
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        # Bytes, not a message: the method's serializer passes them through (shim.api.rpc).
        return await self._store.range_bytes(
            request, self._identity.header_field, current_caller()
        )

    @grpc_errors
    @permission(Rule.CALLER, validate=validate.check_put)
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        self._check_size(request)
        resp = await self._store.put(request, current_caller())
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.CALLER, validate=validate.check_delete_range)
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        self._check_size(request)
        resp = await self._store.delete_range(request, current_caller())
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.CALLER, validate=_check_txn)
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        self._check_size(request)
        resp = await self._store.txn(request, current_caller())
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.CALLER)
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        # etcd checks only the token of a compaction: any user (or none) may compact.
        resp = await self._store.compact(request)
        self._identity.fill(resp.header)
        return resp
