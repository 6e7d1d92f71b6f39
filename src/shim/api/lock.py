"""v3lockpb.Lock: etcd's distributed mutex (Lock, Unlock) on the client port.

Lock puts "<name>/<lease hex>" with the lease (once per lease: locking again with the same
lease is the same acquisition) and waits until every key under "<name>/" created before it is
gone; the lock is held while that key exists, so revoking or letting the lease expire releases
it. Errors reach the caller as etcd's do, through its in-server client: UNKNOWN with etcd's
message.
"""

from __future__ import annotations

import grpc

from shim.api import validate
from shim.api.concurrency import Recipes, contender_key, first_created, run_detached
from shim.api.errors import RequestError, client_errors
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, permission
from shim.pb import rpc_pb2, v3lock_pb2, v3lock_pb2_grpc
from shim.pb.rpc_pb2 import RequestOp

SESSION_EXPIRED = "mutex: session is expired"


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, recipes: Recipes, identity: Identity, guard: Guard) -> None:
        self._recipes = recipes
        self._identity = identity
        self.guard = guard

    @client_errors
    @permission(Rule.CALLER)  # and the lock's keys, checked as the caller's operations
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.LockResponse:
        recipes = self._recipes
        lease = await recipes.session_lease(request.lease)
        prefix = request.name + b"/"
        key = contender_key(prefix, lease)
        owner = RequestOp(request_range=first_created(prefix))
        resp = await recipes.join_queue(key, b"", lease, owner)
        my_revision = resp.header.revision
        if not resp.succeeded:  # this lease already queued (or holds) this lock
            my_revision = resp.responses[0].response_range.kvs[0].create_revision
        holders = resp.responses[1].response_range.kvs
        header = resp.header
        if holders and holders[0].create_revision != my_revision:
            try:
                await recipes.wait_deletes(prefix, my_revision - 1)
            except BaseException:
                # The caller went away (or the wait failed): leave the queue, as etcd does.
                run_detached(recipes.delete(key), "removing an abandoned lock key")
                raise
            mine = await recipes.get(key)
            if not mine.kvs:  # the lease ended while this contender waited
                raise RequestError(grpc.StatusCode.UNKNOWN, SESSION_EXPIRED)
            header = mine.header
        out = v3lock_pb2.LockResponse(key=key)
        out.header.CopyFrom(header)
        self._identity.fill(out.header)
        return out

    @client_errors
    @permission(Rule.CALLER)
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        delete = rpc_pb2.DeleteRangeRequest(key=request.key)
        validate.check_delete_range(delete)
        resp = await self._recipes.delete_range(delete)
        out = v3lock_pb2.UnlockResponse()
        out.header.CopyFrom(resp.header)
        self._identity.fill(out.header)
        return out
