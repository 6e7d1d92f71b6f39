"""Auth in the write path: the auth store's own writes, and the checks of every write sent on
behalf of a caller, both against the state of the write transaction, as etcd's authApplier
checks them when it applies a request.

A request reaches the writer as ``Authorized(request, caller)``. The checks run in the
transaction that applies it, so a permission revoked by an earlier write of the same batch
is already gone, and a lease's keys are the ones the revoke will delete. A caller whose auth
revision is older than the store's (auth changed while the request was on its way) is
refused with etcd's "revision of auth store is old", and etcd's clients retry.
"""

from __future__ import annotations

import secrets
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from shim.auth import errors
from shim.auth.cache import ENABLED, TOKEN_KEY, AuthCache
from shim.auth.perms import is_valid_range
from shim.auth.state import ROOT_ROLE, ROOT_USER, AuthState, Caller, User
from shim.auth.tokens import new_token_key
from shim.backend.auth_tables import AuthTables, RoleRow, SettingRow, UserRow
from shim.mvcc.gosort import go_sort
from shim.pb import rpc_pb2 as pb

AuthWriteRequest = (
    pb.AuthEnableRequest | pb.AuthDisableRequest | pb.AuthUserAddRequest
    | pb.AuthUserDeleteRequest | pb.AuthUserChangePasswordRequest | pb.AuthUserGrantRoleRequest
    | pb.AuthUserRevokeRoleRequest | pb.AuthRoleAddRequest | pb.AuthRoleDeleteRequest
    | pb.AuthRoleGrantPermissionRequest | pb.AuthRoleRevokePermissionRequest
)
AuthWriteResponse = (
    pb.AuthEnableResponse | pb.AuthDisableResponse | pb.AuthUserAddResponse
    | pb.AuthUserDeleteResponse | pb.AuthUserChangePasswordResponse
    | pb.AuthUserGrantRoleResponse | pb.AuthUserRevokeRoleResponse | pb.AuthRoleAddResponse
    | pb.AuthRoleDeleteResponse | pb.AuthRoleGrantPermissionResponse
    | pb.AuthRoleRevokePermissionResponse
)


@dataclass(frozen=True, slots=True)
class Authorized:
    """A write request sent on behalf of ``caller``: checked when it is applied."""

    request: Any  # a WriteRequest of shim.mvcc.apply, or an AuthWriteRequest
    caller: Caller


def new_epoch() -> str:
    return secrets.token_hex(8)


def new_version() -> int:
    # Random, not counted: a rolled-back change must never leave a number that a later,
    # different change takes again.
    return secrets.randbits(62) + 1


class AuthWriter:
    """The writer's view of the auth store (one per write path)."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._cache = AuthCache()

    def state(self, txn: Any) -> AuthState:
        return self._cache.state(txn)

    # -- checks of key-value writes (etcd's authApplierV3) -------------------------------------

    def check(self, txn: Any, request: Any, caller: Caller) -> None:
        state = self.state(txn)
        if not state.enabled:
            return
        if isinstance(request, pb.PutRequest):
            state.check_put(caller, request.key)
            if request.lease:
                state.check_lease_keys(caller, lambda: txn.lease_keys(request.lease))
            if request.prev_kv:
                state.check_range(caller, request.key)
        elif isinstance(request, pb.DeleteRangeRequest):
            state.check_delete_range(caller, request.key, request.range_end)
            if request.prev_kv:
                state.check_range(caller, request.key, request.range_end)
        elif isinstance(request, pb.TxnRequest):
            state.check_txn(caller, request)
        elif isinstance(request, pb.LeaseRevokeRequest):
            state.check_lease_keys(caller, lambda: txn.lease_keys(request.ID))
        # Compaction and lease grants need no permission in etcd 3.5 (only a valid token,
        # which the edge checked).

    # -- the auth store's writes ---------------------------------------------------------------

    def apply(
        self, txn: Any, request: AuthWriteRequest, caller: Caller, hlc: int
    ) -> AuthWriteResponse:
        """Apply an auth write for ``caller`` (the root role is needed once auth is on); its
        response, without the header's revision."""
        state = self.state(txn)
        state.check_admin(caller)
        change = _Change(txn.auth, state, hlc, self._node_id)
        handler = _HANDLERS[type(request)]
        response: AuthWriteResponse = handler(change, request)
        change.finish()
        return response


class _Change:
    """One auth write in progress: rows to write, and whether the revision moves."""

    def __init__(self, tables: AuthTables, state: AuthState, hlc: int, origin: str) -> None:
        self.tables = tables
        self.state = state
        self.hlc = hlc
        self.origin = origin
        self.changed = False
        self.bump = False

    def user(self, name: str) -> User:
        """The user ``name``, or etcd's "user name not found"."""
        user = self.state.users.get(name)
        if user is None:
            raise errors.UserNotFound()
        return user

    def user_row(self, name: str) -> UserRow:
        user = self.user(name)
        return UserRow(name, user.password, user.no_password, user.roles, user.epoch, False,
                       self.hlc, self.origin)

    def put_user(self, row: UserRow) -> None:
        self.tables.put_user(replace(row, hlc=self.hlc, origin=self.origin))
        self.changed = self.bump = True

    def put_role(self, name: str, permissions: tuple[tuple[int, bytes, bytes], ...],
                 deleted: bool = False) -> None:
        self.tables.put_role(RoleRow(name, permissions, deleted, self.hlc, self.origin))
        self.changed = self.bump = True

    def put_setting(self, name: str, value: str) -> None:
        self.tables.put_setting(SettingRow(name, value, self.hlc, self.origin))
        self.changed = True

    def finish(self) -> None:
        if self.bump:
            self.tables.set_revision(self.state.revision + 1)
        if self.changed:
            self.tables.set_version(new_version())


def _auth_enable(change: _Change, req: pb.AuthEnableRequest) -> pb.AuthEnableResponse:
    state = change.state
    if not state.enabled:
        root = state.users.get(ROOT_USER)
        if root is None:
            raise errors.RootUserNotExist()
        if not state.is_root(root):
            raise errors.RootRoleNotExist()
        change.put_setting(ENABLED, "1")
        # A new key: tokens from an earlier time auth was on are worthless from now on.
        change.put_setting(TOKEN_KEY, new_token_key().hex())
    return pb.AuthEnableResponse()


def _auth_disable(change: _Change, req: pb.AuthDisableRequest) -> pb.AuthDisableResponse:
    if change.state.enabled:
        change.put_setting(ENABLED, "0")
        change.bump = True
    return pb.AuthDisableResponse()


def _user_add(change: _Change, req: pb.AuthUserAddRequest) -> pb.AuthUserAddResponse:
    if not req.name:
        raise errors.UserEmpty()
    if req.name in change.state.users:
        raise errors.UserAlreadyExist()
    no_password = req.options.no_password
    if not no_password and not req.hashedPassword:
        raise errors.HashedPasswordUnsupported()  # the edge hashes every password it gets
    password = "" if no_password else req.hashedPassword
    change.put_user(UserRow(req.name, password, no_password, (), new_epoch(), False, 0, ""))
    return pb.AuthUserAddResponse()


def _user_delete(change: _Change, req: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
    if change.state.enabled and req.name == ROOT_USER:
        raise errors.InvalidAuthMgmt()
    change.user(req.name)
    change.put_user(UserRow(req.name, "", False, (), new_epoch(), True, 0, ""))
    return pb.AuthUserDeleteResponse()


def _user_change_password(
    change: _Change, req: pb.AuthUserChangePasswordRequest
) -> pb.AuthUserChangePasswordResponse:
    user = change.user(req.name)
    # A user without password keeps none; the others get the new hash (an empty one, when
    # the new password was empty, lets nobody in, as in etcd).
    password = "" if user.no_password else req.hashedPassword
    change.put_user(replace(change.user_row(req.name), password=password, epoch=new_epoch()))
    return pb.AuthUserChangePasswordResponse()


def _user_grant_role(
    change: _Change, req: pb.AuthUserGrantRoleRequest
) -> pb.AuthUserGrantRoleResponse:
    user = change.user(req.user)
    if req.role != ROOT_ROLE and req.role not in change.state.roles:
        raise errors.RoleNotFound()
    if req.role not in user.roles:  # granting a role again changes nothing, as in etcd
        roles = tuple(sorted((*user.roles, req.role)))
        change.put_user(replace(change.user_row(req.user), roles=roles))
    return pb.AuthUserGrantRoleResponse()


def _user_revoke_role(
    change: _Change, req: pb.AuthUserRevokeRoleRequest
) -> pb.AuthUserRevokeRoleResponse:
    if change.state.enabled and req.name == ROOT_USER and req.role == ROOT_ROLE:
        raise errors.InvalidAuthMgmt()
    user = change.user(req.name)
    if req.role not in user.roles:
        raise errors.RoleNotGranted()
    roles = tuple(r for r in user.roles if r != req.role)
    change.put_user(replace(change.user_row(req.name), roles=roles))
    return pb.AuthUserRevokeRoleResponse()


def _role_add(change: _Change, req: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
    if not req.name:
        raise errors.RoleEmpty()
    if req.name in change.state.roles:
        raise errors.RoleAlreadyExist()
    change.put_role(req.name, ())
    return pb.AuthRoleAddResponse()


def _role_delete(change: _Change, req: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
    if change.state.enabled and req.role == ROOT_ROLE:
        raise errors.InvalidAuthMgmt()
    if req.role not in change.state.roles:
        raise errors.RoleNotFound()
    change.put_role(req.role, (), deleted=True)
    for name, user in change.state.users.items():
        if req.role in user.roles:
            roles = tuple(r for r in user.roles if r != req.role)
            change.put_user(replace(change.user_row(name), roles=roles))
    return pb.AuthRoleDeleteResponse()


def _permissions(change: _Change, name: str) -> list[tuple[int, bytes, bytes]]:
    role = change.state.roles.get(name)
    if role is None:
        raise errors.RoleNotFound()
    return [(p.permType, p.key, p.range_end) for p in role.permissions]


def _role_grant_permission(
    change: _Change, req: pb.AuthRoleGrantPermissionRequest
) -> pb.AuthRoleGrantPermissionResponse:
    if not req.HasField("perm"):
        raise errors.PermissionNotGiven()
    perm = req.perm
    if not is_valid_range(perm.key, perm.range_end):
        raise errors.InvalidAuthMgmt()
    permissions = _permissions(change, req.name)
    at = bisect_left([p[1] for p in permissions], perm.key)
    if at < len(permissions) and permissions[at][1:] == (perm.key, perm.range_end):
        permissions[at] = (perm.permType, perm.key, perm.range_end)
    else:
        permissions.append((perm.permType, perm.key, perm.range_end))
        # etcd sorts by key alone with Go's (unstable) sort.Sort.
        go_sort(permissions, lambda a, b: a[1] < b[1])
    change.put_role(req.name, tuple(permissions))
    return pb.AuthRoleGrantPermissionResponse()


def _role_revoke_permission(
    change: _Change, req: pb.AuthRoleRevokePermissionRequest
) -> pb.AuthRoleRevokePermissionResponse:
    permissions = _permissions(change, req.role)
    kept = [p for p in permissions if p[1:] != (req.key, req.range_end)]
    if len(kept) == len(permissions):
        raise errors.PermissionNotGranted()
    change.put_role(req.role, tuple(kept))
    return pb.AuthRoleRevokePermissionResponse()


_HANDLERS: dict[type, Callable[[_Change, Any], Any]] = {
    pb.AuthEnableRequest: _auth_enable,
    pb.AuthDisableRequest: _auth_disable,
    pb.AuthUserAddRequest: _user_add,
    pb.AuthUserDeleteRequest: _user_delete,
    pb.AuthUserChangePasswordRequest: _user_change_password,
    pb.AuthUserGrantRoleRequest: _user_grant_role,
    pb.AuthUserRevokeRoleRequest: _user_revoke_role,
    pb.AuthRoleAddRequest: _role_add,
    pb.AuthRoleDeleteRequest: _role_delete,
    pb.AuthRoleGrantPermissionRequest: _role_grant_permission,
    pb.AuthRoleRevokePermissionRequest: _role_revoke_permission,
}


def is_auth_write(request: object) -> TypeGuard[AuthWriteRequest]:
    """Whether ``request`` is one of the auth store's own writes."""
    return type(request) in _HANDLERS
