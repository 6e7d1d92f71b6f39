"""The auth store as etcd keeps it in its bbolt file: buckets ``auth``, ``authRoles``,
``authUsers``. A shim snapshot carries them, so `etcdutl snapshot restore` brings back users
(their bcrypt hashes, the kind etcd makes), roles, the auth revision and whether auth is on;
an etcd snapshot's buckets become shim's users and roles.

``auth`` holds ``authEnabled`` (one byte, 1 or 0) and ``authRevision`` (8 bytes, big-endian);
``authRoles`` each role's ``authpb.Role`` under its name; ``authUsers`` each user's
``authpb.User`` (its roles sorted, as etcd keeps them) under its name.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from shim.auth.apply import new_epoch, new_version
from shim.auth.cache import ENABLED, TOKEN_KEY
from shim.auth.objects import Grant, RoleObject, Stamp, UserObject, role_row, user_row
from shim.auth.passwords import is_bcrypt
from shim.auth.state import ROOT_ROLE, AuthState
from shim.auth.tokens import new_token_key
from shim.backend.auth_tables import AuthTables, SettingRow
from shim.pb.auth_pb2 import Permission, Role, User

log = logging.getLogger(__name__)

AUTH_BUCKET = b"auth"
ROLES_BUCKET = b"authRoles"
USERS_BUCKET = b"authUsers"
ENABLED_KEY = b"authEnabled"
REVISION_KEY = b"authRevision"
_REVISION = struct.Struct(">Q")

Items = list[tuple[bytes, bytes]]


class LayoutError(ValueError):
    """Auth buckets that are not etcd's (one line)."""


def etcd_buckets(state: AuthState) -> list[tuple[bytes, Items]]:
    """``state``'s buckets, in name order, each with its items in key order.

    Auth stays on only if some root user can still get in on etcd: with a bcrypt hash, or
    without a password (a client certificate). A password set before shim made bcrypt hashes
    (scrypt) matches nothing on etcd; were every root user's such, an etcd restored with auth
    on would let nobody in, not even to turn it off: such a layout has auth off (and a
    warning says so); shim's own copy in the file keeps everything."""
    enabled = state.enabled and any(
        ROOT_ROLE in user.roles and (user.no_password or is_bcrypt(user.password))
        for user in state.users.values()
    )
    if state.enabled and not enabled:
        log.warning(
            "snapshot: no root user has a password etcd can check (set before shim made "
            "bcrypt hashes), so auth is off in its etcd layout; set root's password again "
            "(etcdctl user passwd root) to keep auth on in etcd"
        )
    auth = [(ENABLED_KEY, b"\x01" if enabled else b"\x00"),
            (REVISION_KEY, _REVISION.pack(state.revision))]
    roles = [
        (name.encode(), Role(name=name.encode(), keyPermission=role.permissions)
         .SerializeToString(deterministic=True))
        for name, role in state.roles.items()
    ]
    users = []
    for name, user in state.users.items():
        record = User(name=name.encode(), password=user.password.encode(), roles=user.roles)
        record.options.no_password = user.no_password
        record.options.SetInParent()  # etcdctl always sends options; etcd stores them
        users.append((name.encode(), record.SerializeToString(deterministic=True)))
    return [(AUTH_BUCKET, sorted(auth)), (ROLES_BUCKET, sorted(roles)),
            (USERS_BUCKET, sorted(users))]


@dataclass(frozen=True)
class EtcdUser:
    name: str
    password: str  # etcd's bcrypt hash; "" for none
    roles: tuple[str, ...]
    no_password: bool


@dataclass(frozen=True)
class EtcdRole:
    name: str
    permissions: tuple[Permission, ...]  # in etcd's order


@dataclass(frozen=True)
class EtcdAuth:
    enabled: bool
    revision: int
    users: tuple[EtcdUser, ...]
    roles: tuple[EtcdRole, ...]


def read_etcd_auth(
    auth: Iterable[tuple[bytes, bytes]],
    roles: Iterable[tuple[bytes, bytes]],
    users: Iterable[tuple[bytes, bytes]],
) -> EtcdAuth:
    """What an etcd file's three auth buckets hold (``LayoutError`` for what etcd would not
    have written)."""
    settings = dict(auth)
    revision_bytes = settings.get(REVISION_KEY, _REVISION.pack(0))
    if len(revision_bytes) != _REVISION.size:
        raise LayoutError("the auth bucket's authRevision is not 8 bytes")
    try:
        found_roles = tuple(_role(name, Role.FromString(data)) for name, data in roles)
        found_users = tuple(_user(name, User.FromString(data)) for name, data in users)
    except (DecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"an auth user or role does not decode: {exc}") from None
    return EtcdAuth(
        enabled=settings.get(ENABLED_KEY, b"\x00") == b"\x01",
        revision=_REVISION.unpack(revision_bytes)[0],
        users=found_users,
        roles=found_roles,
    )


def _role(key: bytes, role: Role) -> EtcdRole:
    return EtcdRole(key.decode(), tuple(role.keyPermission))


def _user(key: bytes, user: User) -> EtcdUser:
    # A hash that is no bcrypt (etcd stores a client's hashedPassword as sent) is kept as
    # it is: it matches no password, there as here.
    return EtcdUser(key.decode(), user.password.decode("latin-1"), tuple(sorted(user.roles)),
                    user.options.no_password)


def write_shim_auth(
    bucket: Callable[[bytes], Iterable[tuple[bytes, bytes]]], tables: AuthTables, at: Stamp
) -> None:
    """Write what an etcd file's auth buckets (``bucket(name)``) hold into ``tables``, a new
    database's, as writes made at ``at``: the same users (and password hashes), roles,
    permissions in etcd's order, auth revision and enabled flag. Nothing for an etcd that
    never had auth set up."""
    found = read_etcd_auth(bucket(AUTH_BUCKET), bucket(ROLES_BUCKET), bucket(USERS_BUCKET))
    if not (found.enabled or found.users or found.roles):
        return
    for role in found.roles:
        grants = {}
        for position, perm in enumerate(role.permissions):
            # Equal keys list in the order they were added: etcd's list gives that order.
            added = (at[0] + position, at[1])
            grants[(perm.key, perm.range_end)] = Grant(
                perm.key, perm.range_end, perm.permType, at, added)
        tables.put_role(role_row(RoleObject(role.name, at, None, grants)))
    for user in found.users:
        tables.put_user(user_row(UserObject(
            user.name, at, None, user.password, user.no_password, new_epoch(), at,
            {role: (True, at) for role in user.roles},
        )))
    tables.put_setting(SettingRow(ENABLED, "1" if found.enabled else "0", *at))
    if found.enabled:
        tables.put_setting(SettingRow(TOKEN_KEY, new_token_key().hex(), *at))
    tables.set_revision(max(found.revision, 1))
    tables.set_version(new_version())
