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


def write_shim_auth(
    bucket: Callable[[bytes], Iterable[tuple[bytes, bytes]]], tables: AuthTables, at: Stamp
) -> None:
    """Write what an etcd file's auth buckets (``bucket(name)``) hold into ``tables``, a new
    database's, as writes made at ``at``: the same users (and password hashes), roles,
    permissions in etcd's order, auth revision and enabled flag (``LayoutError`` for what
    etcd would not have written). Nothing for an etcd that never had auth set up."""
    settings = dict(bucket(AUTH_BUCKET))
    revision = settings.get(REVISION_KEY, _REVISION.pack(0))
    if len(revision) != _REVISION.size:
        raise LayoutError("the auth bucket's authRevision is not 8 bytes")
    enabled = settings.get(ENABLED_KEY, b"\x00") == b"\x01"
    try:
        roles = [Role.FromString(data) for _, data in bucket(ROLES_BUCKET)]
        users = [User.FromString(data) for _, data in bucket(USERS_BUCKET)]
        for role in roles:
            grants: dict[tuple[bytes, bytes], Grant] = {}
            for position, perm in enumerate(role.keyPermission):
                kind = perm.permType
                twin = grants.get((perm.key, perm.range_end))
                if twin is not None:
                    # etcd can list one range twice (a grant on a range that shares its
                    # start with another's appends instead of replacing, etcd#21845) and
                    # allows what either entry allows: one entry allowing both comes in.
                    added = twin.added
                    if twin.type != kind:
                        kind = Permission.READWRITE
                else:
                    # Equal keys list in the order they were added: etcd's list gives it.
                    added = (at[0] + position, at[1])
                grants[(perm.key, perm.range_end)] = Grant(
                    perm.key, perm.range_end, kind, at, added)
            tables.put_role(role_row(RoleObject(role.name.decode(), at, None, grants)))
        for user in users:
            # A hash that is no bcrypt (etcd stores a client's hashedPassword as sent) is
            # kept as it is: it matches no password, there as here.
            tables.put_user(user_row(UserObject(
                user.name.decode(), at, None, user.password.decode("latin-1"),
                user.options.no_password, new_epoch(), at,
                {role: (True, at) for role in user.roles},
            )))
    except (DecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"an auth user or role does not decode: {exc}") from None
    if not (enabled or users or roles):
        return
    tables.put_setting(SettingRow(ENABLED, "1" if enabled else "0", *at))
    if enabled:
        tables.put_setting(SettingRow(TOKEN_KEY, new_token_key().hex(), *at))
    tables.set_revision(max(_REVISION.unpack(revision)[0], 1))
    tables.set_version(new_version())
