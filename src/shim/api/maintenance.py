"""etcdserverpb.Maintenance: Status and Alarm work; the rest says plainly that it is not built."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from shim.api import errors
from shim.api.errors import grpc_errors
from shim.api.header import RAFT_TERM, Identity
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc

# The etcd release whose API shim answers as. kube-apiserver enables RequestWatchProgress
# (needed by consistent reads from its cache) only for etcd >= 3.5.13.
ETCD_VERSION = "3.5.21"


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, store: Store, identity: Identity) -> None:
        self._store = store
        self._identity = identity

    @grpc_errors
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        backend = self._store.backend
        size, in_use = await asyncio.to_thread(
            lambda: (backend.size_bytes(), backend.size_in_use_bytes())
        )
        revision = self._store.revision
        resp = rpc_pb2.StatusResponse(
            version=ETCD_VERSION,
            dbSize=size,
            dbSizeInUse=in_use,
            leader=self._identity.member_id,
            # No raft: the revision is the index of the last applied change.
            raftIndex=revision,
            raftAppliedIndex=revision,
            raftTerm=RAFT_TERM,
            isLearner=False,
        )
        resp.header.revision = revision
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        if request.action != rpc_pb2.AlarmRequest.GET:
            raise errors.unimplemented("activating or deactivating alarms")
        resp = rpc_pb2.AlarmResponse()  # shim raises no alarms
        resp.header.revision = self._store.revision
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        raise errors.unimplemented("Defragment (SQLite reuses free pages itself)")

    @grpc_errors
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        raise errors.unimplemented("Hash")

    @grpc_errors
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        raise errors.unimplemented("HashKV")

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "shim: Snapshot is not implemented; copy the database with sqlite3 .backup",
        )
        yield rpc_pb2.SnapshotResponse()  # pragma: no cover - abort raises

    @grpc_errors
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        raise errors.unimplemented("MoveLeader (shim has no leader election)")

    @grpc_errors
    async def Downgrade(
        self, request: rpc_pb2.DowngradeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DowngradeResponse:
        raise errors.unimplemented("Downgrade")
