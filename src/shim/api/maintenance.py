"""etcdserverpb.Maintenance: Status, Alarm, Hash, HashKV, Snapshot, Defragment, and etcd's
answers for a single member to MoveLeader and Downgrade."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator

import grpc

from shim.api.downgrade import check_downgrade
from shim.api.errors import RequestError, grpc_errors
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, permission
from shim.backend.base import UnsupportedError
from shim.etcd_version import ETCD_VERSION, RAFT_TERM
from shim.mvcc import snapshot_file
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc

log = logging.getLogger(__name__)

# etcd streams a snapshot in pieces of this size, then the SHA-256 of everything sent.
SNAPSHOT_CHUNK_BYTES = 32 * 1024
BAD_TRANSFEREE = "etcdserver: bad leader transferee"


def alarm_text(member_id: int, alarm: int) -> str:
    """An alarm as etcd lists it in Status.errors (Go's compact text form of AlarmMember)."""
    name = rpc_pb2.AlarmType.Name(alarm) if alarm in rpc_pb2.AlarmType.values() else alarm
    return f"memberID:{member_id} alarm:{name} "


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, store: Store, identity: Identity, guard: Guard) -> None:
        self._store = store
        self._identity = identity
        self.guard = guard

    def _header(self, header: rpc_pb2.ResponseHeader, revision: int | None = None) -> None:
        header.revision = self._store.revision if revision is None else revision
        self._identity.fill(header)

    @grpc_errors
    @permission(Rule.OPEN)
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
            isLearner=False,  # every shim node takes writes
            errors=[alarm_text(*alarm) for alarm in await self._store.alarms()],
        )
        self._header(resp.header, revision)
        return resp

    @grpc_errors
    @permission(Rule.CALLER)
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        if request.action in (rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.AlarmRequest.DEACTIVATE):
            resp = await self._store.alarm(request)
            self._identity.fill(resp.header)
            return resp
        if request.action != rpc_pb2.AlarmRequest.GET:
            raise RequestError(grpc.StatusCode.UNKNOWN, "etcdserver: unknown method")
        resp = rpc_pb2.AlarmResponse()
        for member_id, alarm in await self._store.alarms():
            if request.alarm in (rpc_pb2.NONE, alarm):  # NONE: every type, as etcd
                resp.alarms.add(memberID=member_id, alarm=alarm)
        self._header(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.ADMIN_MAINTENANCE)
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        # etcd answers an empty message (no header).
        return await self._store.defragment()

    @grpc_errors
    @permission(Rule.ADMIN_MAINTENANCE)
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        checksum, revision = await self._store.hash()
        resp = rpc_pb2.HashResponse(hash=checksum)
        self._header(resp.header, revision)
        return resp

    @grpc_errors
    @permission(Rule.ADMIN_MAINTENANCE)
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        result = await self._store.hash_kv(request.revision)
        resp = rpc_pb2.HashKVResponse(hash=result.hash, compact_revision=result.compact_revision)
        self._header(resp.header, result.revision)
        return resp

    @permission(Rule.ADMIN_MAINTENANCE)
    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """The database as one consistent file laid out as etcd's (``snapshot_file``), in
        32 KiB pieces (each with the bytes still to come), then a last piece holding the
        SHA-256 of the file: what `etcdctl snapshot save` expects. The file is made first, in
        a temporary file beside the database."""
        backend = self._store.backend
        failures: tuple[type[BaseException], ...] = (*backend.errors, OSError)
        beside = os.path.dirname(os.path.abspath(backend.location))  # PostgreSQL: a URL
        fd, path = tempfile.mkstemp(
            prefix=".shim-snapshot-", dir=beside if os.path.isdir(beside) else None
        )
        os.close(fd)
        os.unlink(path)  # made anew by snapshot_file
        try:
            try:
                revision = await asyncio.to_thread(snapshot_file.make, backend, path)
            except UnsupportedError as exc:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"shim: {exc}")
            except failures as exc:
                # UNKNOWN and the reason, as etcd answers a snapshot it cannot send: a client
                # does not retry it (etcdctl retried UNAVAILABLE for ever on a full disk).
                reason = (exc.strerror or str(exc) if isinstance(exc, OSError)
                          else backend.describe_error(exc))
                log.error("snapshot failed (made in %s): %s", os.path.dirname(path), reason)
                await context.abort(grpc.StatusCode.UNKNOWN, f"shim: snapshot failed: {reason}")
            total = os.path.getsize(path)
            log.info("sending a database snapshot of %d bytes (revision %d)", total, revision)
            digest = hashlib.sha256()
            sent = 0
            with open(path, "rb") as source:
                while sent < total:
                    blob = await asyncio.to_thread(source.read, SNAPSHOT_CHUNK_BYTES)
                    if not blob:
                        break  # cannot happen: nobody else writes the temporary file
                    sent += len(blob)
                    digest.update(blob)
                    resp = rpc_pb2.SnapshotResponse(remaining_bytes=total - sent, blob=blob)
                    if sent == len(blob):  # the first piece: the snapshot's point in time
                        self._header(resp.header, revision)
                    yield resp
            yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=digest.digest())
        finally:
            if os.path.exists(path):
                os.unlink(path)

    @grpc_errors
    @permission(Rule.OPEN)
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        # Every shim node is its own leader: moving leadership to itself is done (etcd answers
        # an empty message); any other member cannot take it.
        if request.targetID != self._identity.member_id:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, BAD_TRANSFEREE)
        return rpc_pb2.MoveLeaderResponse()

    @grpc_errors
    @permission(Rule.CALLER)
    async def Downgrade(
        self, request: rpc_pb2.DowngradeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DowngradeResponse:
        version = check_downgrade(request, ETCD_VERSION)
        resp = rpc_pb2.DowngradeResponse(version=version)
        self._header(resp.header)
        return resp
