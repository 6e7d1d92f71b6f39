"""etcdserverpb.Auth: users, roles, permissions, tokens, as etcd 3.5 answers them.

Changes go through the store's single write path as ``Authorized(request, caller)``: the
writer checks the root role and applies them in one transaction, ordered with every other
write. Passwords are hashed here, before the request leaves the edge, so no password ever
reaches the write path, the log or another process (etcd does the same before raft).
Reads (status, get, list) and Authenticate answer from a read snapshot.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from shim.api.errors import grpc_errors
from shim.api.header import Identity
from shim.api.validate import check_size
from shim.auth import errors
from shim.auth.apply import Authorized
from shim.auth.guard import Guard, Rule, current_caller, permission
from shim.auth.passwords import Hasher
from shim.auth.state import AuthState
from shim.backend.base import ReadView
from shim.mvcc.store import Store
from shim.pb import rpc_pb2 as pb
from shim.pb import rpc_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


def _snapshot(state: AuthState, _view: ReadView) -> AuthState:
    return state


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(
        self, store: Store, identity: Identity, guard: Guard, hasher: Hasher,
        max_request_bytes: int,
    ) -> None:
        self._store = store
        self._identity = identity
        self.guard = guard
        self._hasher = hasher
        self._max_request_bytes = max_request_bytes

    async def _state(self) -> AuthState:
        state: AuthState = await self._store.read_auth(_snapshot)
        return state

    def _answer(self, resp: Any) -> Any:
        if resp.header.revision == 0:
            resp.header.revision = self._store.revision
        self._identity.fill(resp.header)
        return resp

    async def _write(self, request: Any) -> Any:
        # Every change goes through raft in etcd, which limits its size like a key's write.
        check_size(request, self._max_request_bytes)
        return self._answer(await self._store.write(Authorized(request, current_caller())))

    async def _admin_first(self) -> None:
        """Refuse a caller without the root role before spending a password hash on it (the
        writer checks again, in the transaction that applies the change)."""
        (await self._state()).check_admin(current_caller())

    # -- enable, disable, status, authenticate -------------------------------------------------

    @grpc_errors
    @permission(Rule.CALLER)
    async def AuthEnable(self, request: pb.AuthEnableRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def AuthDisable(self, request: pb.AuthDisableRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.ADMIN)
    async def AuthStatus(self, request: pb.AuthStatusRequest, context: Context) -> Any:
        state = await self._state()
        return self._answer(
            pb.AuthStatusResponse(enabled=state.enabled, authRevision=state.revision)
        )

    @grpc_errors
    @permission(Rule.OPEN)
    async def Authenticate(self, request: pb.AuthenticateRequest, context: Context) -> Any:
        while True:
            state = await self._state()
            if not state.enabled:
                raise errors.AuthNotEnabled()
            user = state.users.get(request.name)
            if user is None:
                raise errors.AuthFailed()
            if user.no_password:
                raise errors.NoPasswordUser()
            if not await self._hasher.verify(request.password, user.password):
                raise errors.AuthFailed()
            # As etcd: if the auth store changed while the password was checked, check again.
            now = await self._state()
            if now.version == state.version:
                break
        token = self.guard.tokens.issue(now, request.name)
        return self._answer(pb.AuthenticateResponse(token=token))

    # -- users ---------------------------------------------------------------------------------

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserAdd(self, request: pb.AuthUserAddRequest, context: Context) -> Any:
        await self._admin_first()
        hashed = "" if request.options.no_password else await self._hasher.hash(request.password)
        # A hash the client made is not used (etcd 3.5 replaces it too).
        change = pb.AuthUserAddRequest(name=request.name, hashedPassword=hashed)
        change.options.CopyFrom(request.options)
        return await self._write(change)

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserChangePassword(
        self, request: pb.AuthUserChangePasswordRequest, context: Context
    ) -> Any:
        await self._admin_first()
        if request.password:
            hashed = await self._hasher.hash(request.password)
        elif request.hashedPassword:
            raise errors.HashedPasswordUnsupported()
        else:
            hashed = ""  # as etcd: an empty password lets nobody in
        change = pb.AuthUserChangePasswordRequest(name=request.name, hashedPassword=hashed)
        return await self._write(change)

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserDelete(self, request: pb.AuthUserDeleteRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserGrantRole(self, request: pb.AuthUserGrantRoleRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserRevokeRole(
        self, request: pb.AuthUserRevokeRoleRequest, context: Context
    ) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def UserGet(self, request: pb.AuthUserGetRequest, context: Context) -> Any:
        caller = current_caller()
        state = await self._state()
        if request.name != caller.user:  # anyone may look at themselves
            state.check_admin(caller)
        user = state.users.get(request.name)
        if user is None:
            raise errors.UserNotFound()
        return self._answer(pb.AuthUserGetResponse(roles=user.roles))

    @grpc_errors
    @permission(Rule.ADMIN)
    async def UserList(self, request: pb.AuthUserListRequest, context: Context) -> Any:
        state = await self._state()
        return self._answer(pb.AuthUserListResponse(users=sorted(state.users)))

    # -- roles ---------------------------------------------------------------------------------

    @grpc_errors
    @permission(Rule.CALLER)
    async def RoleAdd(self, request: pb.AuthRoleAddRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def RoleDelete(self, request: pb.AuthRoleDeleteRequest, context: Context) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def RoleGrantPermission(
        self, request: pb.AuthRoleGrantPermissionRequest, context: Context
    ) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def RoleRevokePermission(
        self, request: pb.AuthRoleRevokePermissionRequest, context: Context
    ) -> Any:
        return await self._write(request)

    @grpc_errors
    @permission(Rule.CALLER)
    async def RoleGet(self, request: pb.AuthRoleGetRequest, context: Context) -> Any:
        caller = current_caller()
        state = await self._state()
        holder = state.users.get(caller.user)
        if holder is None or request.role not in holder.roles:  # a role's holders may look
            state.check_admin(caller)
        role = state.roles.get(request.role)
        if role is None:
            raise errors.RoleNotFound()
        return self._answer(pb.AuthRoleGetResponse(perm=role.permissions))

    @grpc_errors
    @permission(Rule.ADMIN)
    async def RoleList(self, request: pb.AuthRoleListRequest, context: Context) -> Any:
        state = await self._state()
        return self._answer(pb.AuthRoleListResponse(roles=sorted(state.roles)))
