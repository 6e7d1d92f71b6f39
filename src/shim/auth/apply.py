"""Auth in the write path: the auth store's own writes, and the checks of every write sent on
behalf of a caller, both against the state of the write transaction, as etcd's authApplier
checks them when it applies a request.

A request reaches the writer as ``Authorized(request, caller)``. The checks run in the
transaction that applies it, so a permission revoked by an earlier write of the same batch
is already gone, and a lease's keys are the ones the revoke will delete. A caller whose auth
revision is older than the store's (auth changed while the request was on its way) is
refused with etcd's "revision of auth store is old", and etcd's clients retry.

With replication, every object an auth write changes is also recorded as an entry, and the
entries of peers are merged here into the local objects (``shim.auth.objects``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeGuard, TypeVar

from shim.auth import errors
from shim.auth.cache import ENABLED, TOKEN_KEY, AuthCache
from shim.auth.objects import (
    RoleObject,
    Setting,
    Stamp,
    UserObject,
    role_from_row,
    role_row,
    user_from_row,
    user_row,
)
from shim.auth.perms import is_valid_range
from shim.auth.state import ROOT_ROLE, ROOT_USER, AuthState, Caller
from shim.auth.tokens import new_token_key
from shim.backend.auth_tables import AuthTables, SettingRow
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


# An auth object's replication entry: its key names it ("user/alice"), its value is its
# state (JSON), its secret the password hash (kept out of the entry's value, which people see).
Record = Callable[[bytes, bytes, "str | None"], None]
USER, ROLE, SETTING = b"user", b"role", b"setting"


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
        # The state checks saw in this write transaction. The auth tables change only through
        # apply() and merge() below, which forget it, so the rest of a batch's writes skip
        # reading the auth version again (one query per write).
        self._checked: tuple[Any, AuthState] | None = None

    def state(self, txn: Any) -> AuthState:
        return self._cache.state(txn)

    def _state_for_check(self, txn: Any) -> AuthState:
        checked = self._checked
        if checked is not None and checked[0] is txn:  # the reference keeps txn's id unique
            return checked[1]
        state = self.state(txn)
        self._checked = (txn, state)
        return state

    def enabled(self, txn: Any) -> bool:
        """Whether auth is enabled in ``txn`` as it stands (free after a check in it)."""
        return self._state_for_check(txn).enabled

    # -- checks of key-value writes (etcd's authApplierV3) -------------------------------------

    def check(self, txn: Any, request: Any, caller: Caller) -> None:
        state = self._state_for_check(txn)
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
        self, txn: Any, request: AuthWriteRequest, caller: Caller, hlc: int,
        record: Record | None = None,
    ) -> AuthWriteResponse:
        """Apply an auth write for ``caller`` (the root role is needed once auth is on); its
        response, without the header's revision. ``record`` is told of every object the
        write changed (replication records it as an entry)."""
        self._checked = None  # also if it fails: its savepoint may have written some of it
        try:
            state = self.state(txn)
            state.check_admin(caller)
            change = _Change(txn.auth, state, (hlc, self._node_id))
            handler = _HANDLERS[type(request)]
            response: AuthWriteResponse = handler(change, request)
            change.finish()
            if record is not None:
                for key, value, secret in change.written:
                    record(key, value, secret)
            return response
        finally:
            self._checked = None

    def objects(self, txn: Any) -> list[tuple[bytes, bytes, str | None]]:
        """Every live user and role and the replicated setting, as the (key, state, secret)
        an auth write records: what a node first linked shares of its auth store."""
        state = self.state(txn)
        found: list[tuple[bytes, bytes, str | None]] = [
            (USER + b"/" + user.name.encode(), user.state().encode(), user.password)
            for user in state.users.values()
        ]
        found.extend(
            (ROLE + b"/" + role.name.encode(), role.state().encode(), None)
            for role in state.roles.values()
        )
        enabled = txn.auth.setting(ENABLED)
        if enabled is not None:
            at = [enabled.hlc, enabled.origin]
            found.append((SETTING + b"/" + ENABLED.encode(),
                          json.dumps([enabled.value, at]).encode(), None))
        return found

    # -- objects from peers ----------------------------------------------------------------------

    def merge(self, txn: Any, key: bytes, value: bytes, secret: str | None) -> bool:
        """Merge a peer's version of an auth object (a replication entry) into ours; whether
        that changed anything (then the auth revision moves, as with any change)."""
        self._checked = None
        tables: AuthTables = txn.auth
        kind, _, raw_name = key.partition(b"/")
        merge = _MERGES.get(kind)
        if merge is None:
            raise ValueError(f"not an auth object: {key!r}")
        if not merge(tables, raw_name.decode("utf-8"), value.decode("utf-8"), secret):
            return False
        tables.set_revision(tables.revision() + 1)
        tables.set_version(new_version())
        return True


class _Mergeable(Protocol):
    def merge(self, other: Any) -> Any: ...


M = TypeVar("M", bound=_Mergeable)


def _join(theirs: M, ours: M | None, put: Callable[[M], None]) -> bool:
    """Store ``ours`` merged with ``theirs``; whether that changed it."""
    merged = theirs if ours is None else ours.merge(theirs)
    if merged == ours:
        return False
    put(merged)
    return True


def _merge_user(tables: AuthTables, name: str, state: str, secret: str | None) -> bool:
    row = tables.user(name)
    return _join(UserObject.from_state(name, state, secret or ""),
                 user_from_row(row) if row is not None else None,
                 lambda user: tables.put_user(user_row(user)))


def _merge_role(tables: AuthTables, name: str, state: str, _secret: str | None) -> bool:
    row = tables.role(name)
    return _join(RoleObject.from_state(name, state),
                 role_from_row(row) if row is not None else None,
                 lambda role: tables.put_role(role_row(role)))


def _merge_setting(tables: AuthTables, name: str, state: str, _secret: str | None) -> bool:
    value, at = json.loads(state)
    row = tables.setting(name)
    was_on = row is not None and row.value == "1"

    def put(setting: Setting) -> None:
        tables.put_setting(SettingRow(name, setting.value, *setting.at))
        if name == ENABLED and setting.value == "1" and not was_on:
            # Enabled by a peer: this node's own token key is new too, as when enabled here.
            tables.put_setting(SettingRow(TOKEN_KEY, new_token_key().hex(), *setting.at))

    return _join(Setting(name, str(value), (int(at[0]), str(at[1]))),
                 Setting(name, row.value, (row.hlc, row.origin)) if row is not None else None,
                 put)


_MERGES: dict[bytes, Callable[[AuthTables, str, str, str | None], bool]] = {
    USER: _merge_user, ROLE: _merge_role, SETTING: _merge_setting,
}


class _Change:
    """One auth write in progress: the objects it writes, and whether the revision moves."""

    def __init__(self, tables: AuthTables, state: AuthState, at: Stamp) -> None:
        self.tables = tables
        self.state = state
        self.at = at
        self.changed = False
        self.bump = False
        self.written: list[tuple[bytes, bytes, str | None]] = []

    def user(self, name: str) -> UserObject:
        """The user ``name``, or etcd's "user name not found"."""
        user = self.state.users.get(name)
        if user is None:
            raise errors.UserNotFound()
        return user

    def role(self, name: str) -> RoleObject:
        role = self.state.roles.get(name)
        if role is None:
            raise errors.RoleNotFound()
        return role

    def put_user(self, user: UserObject) -> None:
        self.tables.put_user(user_row(user))
        self.written.append((USER + b"/" + user.name.encode(), user.state().encode(),
                             user.password))
        self.changed = self.bump = True

    def put_role(self, role: RoleObject) -> None:
        self.tables.put_role(role_row(role))
        self.written.append((ROLE + b"/" + role.name.encode(), role.state().encode(), None))
        self.changed = self.bump = True

    def put_setting(self, name: str, value: str, replicated: bool = True) -> None:
        self.tables.put_setting(SettingRow(name, value, *self.at))
        if replicated:
            self.written.append((SETTING + b"/" + name.encode(),
                                 json.dumps([value, list(self.at)]).encode(), None))
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
        # A new key (this node's own): tokens from an earlier time auth was on are worthless.
        change.put_setting(TOKEN_KEY, new_token_key().hex(), replicated=False)
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
    # A new incarnation: a user added again after its deletion starts without roles.
    change.put_user(UserObject(req.name, change.at, None, password, no_password, new_epoch(),
                               change.at))
    return pb.AuthUserAddResponse()


def _user_delete(change: _Change, req: pb.AuthUserDeleteRequest) -> pb.AuthUserDeleteResponse:
    if change.state.enabled and req.name == ROOT_USER:
        raise errors.InvalidAuthMgmt()
    change.put_user(replace(change.user(req.name), deleted=change.at))
    return pb.AuthUserDeleteResponse()


def _user_change_password(
    change: _Change, req: pb.AuthUserChangePasswordRequest
) -> pb.AuthUserChangePasswordResponse:
    user = change.user(req.name)
    # A user without password keeps none; the others get the new hash (an empty one, when
    # the new password was empty, lets nobody in, as in etcd).
    password = "" if user.no_password else req.hashedPassword
    change.put_user(replace(user, password=password, epoch=new_epoch(), password_set=change.at))
    return pb.AuthUserChangePasswordResponse()


def _user_grant_role(
    change: _Change, req: pb.AuthUserGrantRoleRequest
) -> pb.AuthUserGrantRoleResponse:
    user = change.user(req.user)
    if req.role != ROOT_ROLE:
        change.role(req.role)
    if req.role not in user.roles:  # granting a role again changes nothing, as in etcd
        change.put_user(user.with_grant(req.role, True, change.at))
    return pb.AuthUserGrantRoleResponse()


def _user_revoke_role(
    change: _Change, req: pb.AuthUserRevokeRoleRequest
) -> pb.AuthUserRevokeRoleResponse:
    if change.state.enabled and req.name == ROOT_USER and req.role == ROOT_ROLE:
        raise errors.InvalidAuthMgmt()
    user = change.user(req.name)
    if req.role not in user.roles:
        raise errors.RoleNotGranted()
    change.put_user(user.with_grant(req.role, False, change.at))
    return pb.AuthUserRevokeRoleResponse()


def _role_add(change: _Change, req: pb.AuthRoleAddRequest) -> pb.AuthRoleAddResponse:
    if not req.name:
        raise errors.RoleEmpty()
    if req.name in change.state.roles:
        raise errors.RoleAlreadyExist()
    change.put_role(RoleObject(req.name, change.at, None))
    return pb.AuthRoleAddResponse()


def _role_delete(change: _Change, req: pb.AuthRoleDeleteRequest) -> pb.AuthRoleDeleteResponse:
    if change.state.enabled and req.role == ROOT_ROLE:
        raise errors.InvalidAuthMgmt()
    change.put_role(replace(change.role(req.role), deleted=change.at))
    for user in change.state.users.values():  # as etcd: the role leaves every user
        if req.role in user.roles:
            change.put_user(user.with_grant(req.role, False, change.at))
    return pb.AuthRoleDeleteResponse()


def _role_grant_permission(
    change: _Change, req: pb.AuthRoleGrantPermissionRequest
) -> pb.AuthRoleGrantPermissionResponse:
    if not req.HasField("perm"):
        raise errors.PermissionNotGiven()
    perm = req.perm
    if not is_valid_range(perm.key, perm.range_end):
        raise errors.InvalidAuthMgmt()
    role = change.role(req.name)
    change.put_role(role.with_grant(perm.key, perm.range_end, perm.permType, change.at))
    return pb.AuthRoleGrantPermissionResponse()


def _role_revoke_permission(
    change: _Change, req: pb.AuthRoleRevokePermissionRequest
) -> pb.AuthRoleRevokePermissionResponse:
    role = change.role(req.role)
    granted = role.grants.get((req.key, req.range_end))
    if granted is None or granted.type is None:
        raise errors.PermissionNotGranted()
    change.put_role(role.with_grant(req.key, req.range_end, None, change.at))
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
