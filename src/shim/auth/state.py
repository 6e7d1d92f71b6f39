"""One consistent picture of the auth store, and etcd's permission rules over it.

An ``AuthState`` is read from the database at one snapshot and never changes. Every check a
request needs runs against one of them: at the edge against the read snapshot a request is
served from, and in the writer against the write transaction, so a permission revoked by a
committed write is never honoured afterwards, in any serving process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shim.auth import errors
from shim.auth.objects import RoleObject, UserObject
from shim.auth.perms import KeyPermissions
from shim.pb.rpc_pb2 import RequestOp, TxnRequest

ROOT_USER = "root"
ROOT_ROLE = "root"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: etcd's AuthInfo. ``revision`` is the auth revision when the
    identity was established (0: nobody, as etcd's empty AuthInfo)."""

    user: str = ""
    revision: int = 0


NOBODY = Caller()


@dataclass(slots=True)
class AuthState:
    version: int = 0  # identifies this state (changes with every change of the auth tables)
    enabled: bool = False
    revision: int = 1  # etcd's auth revision
    users: dict[str, UserObject] = field(default_factory=dict)  # the live ones
    roles: dict[str, RoleObject] = field(default_factory=dict)
    token_key: bytes = b""
    _merged: dict[str, KeyPermissions] = field(default_factory=dict)

    # -- identity ------------------------------------------------------------------------------

    def is_root(self, user: UserObject) -> bool:
        return ROOT_ROLE in user.roles

    def permissions_of(self, user: UserObject) -> KeyPermissions:
        merged = self._merged.get(user.name)
        if merged is None:
            granted = [p for name in user.roles if name in self.roles
                       for p in self.roles[name].permissions]
            merged = self._merged[user.name] = KeyPermissions.merge(granted)
        return merged

    # -- etcd's checks -------------------------------------------------------------------------

    def check_admin(self, caller: Caller) -> None:
        """IsAdminPermitted: the caller has the root role (anyone while auth is disabled)."""
        if not self.enabled:
            return
        if not caller.user:
            raise errors.UserEmpty()
        user = self.users.get(caller.user)
        if user is None:
            raise errors.UserNotFound()
        if not self.is_root(user):
            raise errors.PermissionDenied()

    def is_admin(self, caller: Caller) -> bool:
        try:
            self.check_admin(caller)
        except errors.AuthError:
            return False
        return True

    def _check_keys(self, caller: Caller, key: bytes, range_end: bytes, write: bool) -> None:
        """isOpPermitted: a user, an auth revision not older than the store's, then the
        user's roles."""
        if not self.enabled:
            return
        if caller.revision == 0:
            raise errors.UserEmpty()
        if caller.revision < self.revision:
            raise errors.AuthOldRevision()
        user = self.users.get(caller.user)
        if user is None:
            raise errors.PermissionDenied()
        if self.is_root(user):
            return
        if not self.permissions_of(user).allows(key, range_end, write):
            raise errors.PermissionDenied()

    def check_range(self, caller: Caller, key: bytes, range_end: bytes = b"") -> None:
        self._check_keys(caller, key, range_end, write=False)

    def check_put(self, caller: Caller, key: bytes) -> None:
        self._check_keys(caller, key, b"", write=True)

    def check_delete_range(self, caller: Caller, key: bytes, range_end: bytes) -> None:
        self._check_keys(caller, key, range_end, write=True)

    def check_txn(self, caller: Caller, txn: TxnRequest) -> None:
        """checkTxnAuth: every compare's keys are read, then every operation of both branches
        is checked (nested Txns are not looked into, as in etcd)."""
        for cmp in txn.compare:
            self.check_range(caller, cmp.key, cmp.range_end)
        self._check_ops(caller, txn.success)
        self._check_ops(caller, txn.failure)

    def _check_ops(self, caller: Caller, ops: Iterable[RequestOp]) -> None:
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.check_range(caller, op.request_range.key, op.request_range.range_end)
            elif kind == "request_put":
                self.check_put(caller, op.request_put.key)
            elif kind == "request_delete_range":
                delete = op.request_delete_range
                if delete.prev_kv:
                    self.check_range(caller, delete.key, delete.range_end)
                self.check_delete_range(caller, delete.key, delete.range_end)

    def check_lease_keys(self, caller: Caller, keys: Callable[[], list[bytes]]) -> None:
        """checkLeasePutsKeys: revoking a lease (or attaching a key to it) deletes every key
        attached to it, so the caller must be able to write all of them (admins always can).
        ``keys`` is called only when that has to be looked at."""
        if self.is_admin(caller):
            return
        for key in keys():
            self.check_put(caller, key)

    def check_lease_keys_readable(self, caller: Caller, keys: Callable[[], list[bytes]]) -> None:
        """LeaseTimeToLive with keys (etcd >= 3.5.9): the caller must read every key listed."""
        if not self.enabled:
            return
        if caller.revision == 0:
            raise errors.UserEmpty()
        for key in keys():
            self.check_range(caller, key)
