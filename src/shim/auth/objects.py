"""Users, roles and settings as objects that replicas merge.

Every auth write stamps what it changes with its hybrid-clock time and node id (a ``Stamp``).
Two versions of one object merge into one, the same whatever the order they meet in, and
merging a version in twice changes nothing (a join), so nodes that have seen the same writes
hold the same auth store:

- **An object's life** (its incarnation): created at a stamp; a later creation (the user or
  role added again after a deletion, or added on two nodes at once) is another incarnation,
  and the latest one wins. A deletion is a stamp on the incarnation it saw: a deleted user or
  role stays deleted, whatever older writes arrive later, until it is created again.
- **A user's password** (with its no-password flag and the epoch its tokens carry): the latest
  change wins.
- **A user's roles and a role's permissions are sets**: each role (each permission, by key and
  range end) remembers its latest grant or revocation, so concurrent grants on two nodes both
  stay, and a revocation undoes only the grants it came after.
- **A setting** (whether auth is enabled): the latest write wins.

Within one node the same operations give exactly etcd's results: a user added again starts
without roles, a role's permissions list in etcd's order (by key, equal keys in the order
they were granted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from shim.backend.auth_tables import RoleRow, UserRow
from shim.pb.auth_pb2 import Permission

Stamp = tuple[int, str]  # (hybrid-clock time, node id) of a write


def _later(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _stamp(raw: Any) -> Stamp:
    return (int(raw[0]), str(raw[1]))


@dataclass(frozen=True)
class UserObject:
    name: str
    created: Stamp
    deleted: Stamp | None
    password: str  # bcrypt hash (scrypt, when made before bcrypt); "" without one
    no_password: bool
    epoch: str  # tokens name it: new with each creation and password change
    password_set: Stamp
    # role -> (granted, when granted or revoked)
    grants: dict[str, tuple[bool, Stamp]] = field(default_factory=dict)

    @cached_property
    def roles(self) -> tuple[str, ...]:
        return tuple(sorted(r for r, (granted, _) in self.grants.items() if granted))

    @property
    def live(self) -> bool:
        return self.deleted is None

    @property
    def latest(self) -> Stamp:
        return max([self.created, self.password_set, *(s for _, s in self.grants.values()),
                    *([self.deleted] if self.deleted else [])])

    def with_grant(self, role: str, granted: bool, at: Stamp) -> UserObject:
        return replace(self, grants={**self.grants, role: (granted, at)})

    def merge(self, other: UserObject) -> UserObject:
        if self.created != other.created:
            return self if self.created > other.created else other
        secret = self if self.password_set >= other.password_set else other
        grants = dict(self.grants)
        for role, (granted, at) in other.grants.items():
            if role not in grants or at > grants[role][1]:
                grants[role] = (granted, at)
        return UserObject(
            self.name, self.created, _later(self.deleted, other.deleted), secret.password,
            secret.no_password, secret.epoch, secret.password_set, grants,
        )

    def state(self) -> str:
        """Everything but the password hash, as JSON (it travels and is stored apart)."""
        return json.dumps({
            "created": self.created, "deleted": self.deleted, "no_password": self.no_password,
            "epoch": self.epoch, "password_set": self.password_set,
            "grants": {r: [g, *at] for r, (g, at) in sorted(self.grants.items())},
        }, separators=(",", ":"))

    @classmethod
    def from_state(cls, name: str, state: str, password: str) -> UserObject:
        raw = json.loads(state)
        return cls(
            name, _stamp(raw["created"]),
            None if raw["deleted"] is None else _stamp(raw["deleted"]),
            password, bool(raw["no_password"]), str(raw["epoch"]), _stamp(raw["password_set"]),
            {r: (bool(g[0]), _stamp(g[1:])) for r, g in raw["grants"].items()},
        )


@dataclass(frozen=True)
class Grant:
    """One permission of a role, with the write that last set it and the one that added it."""

    key: bytes
    range_end: bytes
    type: int | None  # a Permission.Type; None: revoked
    changed: Stamp
    added: Stamp


@dataclass(frozen=True)
class RoleObject:
    name: str
    created: Stamp
    deleted: Stamp | None
    grants: dict[tuple[bytes, bytes], Grant] = field(default_factory=dict)

    @cached_property
    def permissions(self) -> tuple[Permission, ...]:
        """The granted permissions in etcd's order: by key, equal keys as they were added."""
        held = sorted((g for g in self.grants.values() if g.type is not None),
                      key=lambda g: (g.key, g.added))
        return tuple(
            Permission(permType=g.type, key=g.key, range_end=g.range_end)  # type: ignore[arg-type]  # type is not None (filtered above)
            for g in held
        )

    @property
    def live(self) -> bool:
        return self.deleted is None

    @property
    def latest(self) -> Stamp:
        return max([self.created, *(g.changed for g in self.grants.values()),
                    *([self.deleted] if self.deleted else [])])

    def with_grant(self, key: bytes, range_end: bytes, type_: int | None, at: Stamp
                   ) -> RoleObject:
        old = self.grants.get((key, range_end))
        # A permission granted anew goes after the equal keys already there (etcd appends).
        added = old.added if old is not None and old.type is not None else at
        return replace(self, grants={
            **self.grants, (key, range_end): Grant(key, range_end, type_, at, added)
        })

    def merge(self, other: RoleObject) -> RoleObject:
        if self.created != other.created:
            return self if self.created > other.created else other
        grants = dict(self.grants)
        for where, grant in other.grants.items():
            if where not in grants or grant.changed > grants[where].changed:
                grants[where] = grant
        return RoleObject(self.name, self.created, _later(self.deleted, other.deleted), grants)

    def state(self) -> str:
        return json.dumps({
            "created": self.created, "deleted": self.deleted,
            "grants": [[g.key.hex(), g.range_end.hex(), g.type, *g.changed, *g.added]
                       for _, g in sorted(self.grants.items())],
        }, separators=(",", ":"))

    @classmethod
    def from_state(cls, name: str, state: str) -> RoleObject:
        raw = json.loads(state)
        grants = {}
        for key, end, type_, *stamps in raw["grants"]:
            grant = Grant(bytes.fromhex(key), bytes.fromhex(end), type_,
                          _stamp(stamps[0:2]), _stamp(stamps[2:4]))
            grants[(grant.key, grant.range_end)] = grant
        return cls(name, _stamp(raw["created"]),
                   None if raw["deleted"] is None else _stamp(raw["deleted"]), grants)


@dataclass(frozen=True)
class Setting:
    name: str
    value: str
    at: Stamp

    def merge(self, other: Setting) -> Setting:
        return self if self.at >= other.at else other


def describe_permission(perm: Permission) -> str:
    """One permission as etcdctl shows it, for people reading the tables."""
    kind = Permission.Type.Name(perm.permType)
    key = perm.key.decode("utf-8", "backslashreplace")
    if not perm.range_end:
        return f"{kind} {key}"
    if perm.range_end == b"\x00":
        return f"{kind} [{key}, <open ended>"
    return f"{kind} [{key}, {perm.range_end.decode('utf-8', 'backslashreplace')})"


# -- rows of the auth tables ------------------------------------------------------------------


def user_from_row(row: UserRow) -> UserObject:
    return UserObject.from_state(row.name, row.state, row.password)


def user_row(user: UserObject) -> UserRow:
    latest = user.latest
    return UserRow(user.name, user.password, user.roles, user.no_password, not user.live,
                   latest[0], latest[1], user.state())


def role_from_row(row: RoleRow) -> RoleObject:
    return RoleObject.from_state(row.name, row.state)


def role_row(role: RoleObject) -> RoleRow:
    latest = role.latest
    return RoleRow(role.name, tuple(describe_permission(p) for p in role.permissions),
                   not role.live, latest[0], latest[1], role.state())
