"""The auth tables (auth_user, auth_role, auth_setting) and their meta rows, for both dialects.

The SQL is the same on SQLite and PostgreSQL but for parameter markers; each view hands in
how it runs a query and reads or writes a ``meta`` row (PostgreSQL views keep the meta rows
read at BEGIN, so the auth version costs no round trip there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Fetch = Callable[[str, Sequence[object]], Sequence[Sequence[Any]]]
Param = Callable[[int], str]


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    password: str
    roles: tuple[str, ...]
    no_password: bool
    deleted: bool
    hlc: int
    origin: str
    state: str  # JSON the auth store merges by (shim.auth.objects)


@dataclass(frozen=True, slots=True)
class RoleRow:
    name: str
    permissions: tuple[str, ...]  # for people ("READ /k"); the grants themselves are in state
    deleted: bool
    hlc: int
    origin: str
    state: str


@dataclass(frozen=True, slots=True)
class SettingRow:
    name: str
    value: str
    hlc: int
    origin: str


@dataclass(frozen=True, slots=True)
class AuthRows:
    """Everything the auth store holds, read at one snapshot."""

    version: int
    revision: int
    users: list[UserRow]
    roles: list[RoleRow]
    settings: dict[str, SettingRow]


_USER_COLUMNS = "name, password, roles, no_password, deleted, hlc, origin, state"
_ROLE_COLUMNS = "name, permissions, deleted, hlc, origin, state"
_SETTING_COLUMNS = "name, value, hlc, origin"


def _user(r: Sequence[Any]) -> UserRow:
    return UserRow(str(r[0]), str(r[1]), tuple(json.loads(r[2])), bool(r[3]), bool(r[4]),
                   int(r[5]), str(r[6]), str(r[7]))


def _role(r: Sequence[Any]) -> RoleRow:
    return RoleRow(str(r[0]), tuple(json.loads(r[1])), bool(r[2]), int(r[3]), str(r[4]),
                   str(r[5]))


def _setting(r: Sequence[Any]) -> SettingRow:
    return SettingRow(str(r[0]), str(r[1]), int(r[2]), str(r[3]))


class AuthTables:
    """Queries on one connection inside the caller's transaction."""

    def __init__(
        self,
        fetch: Fetch,
        param: Param,
        meta: Callable[[str], int],
        set_meta: Callable[[str, int], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._param = param
        self._meta = meta
        self._set_meta = set_meta

    def _params(self, count: int) -> str:
        return ", ".join(self._param(i) for i in range(1, count + 1))

    # -- reads ---------------------------------------------------------------------------------

    def version(self) -> int:
        return self._meta("auth_version")

    def revision(self) -> int:
        return self._meta("auth_revision")

    def load(self) -> AuthRows:
        users = [_user(r) for r in self._fetch(f"SELECT {_USER_COLUMNS} FROM auth_user", ())]
        roles = [_role(r) for r in self._fetch(f"SELECT {_ROLE_COLUMNS} FROM auth_role", ())]
        settings = {
            str(r[0]): _setting(r)
            for r in self._fetch(f"SELECT {_SETTING_COLUMNS} FROM auth_setting", ())
        }
        return AuthRows(self.version(), self.revision(), users, roles, settings)

    def user(self, name: str) -> UserRow | None:
        """One user's row, a tombstone too."""
        rows = self._fetch(
            f"SELECT {_USER_COLUMNS} FROM auth_user WHERE name = {self._param(1)}", (name,)
        )
        return _user(rows[0]) if rows else None

    def role(self, name: str) -> RoleRow | None:
        rows = self._fetch(
            f"SELECT {_ROLE_COLUMNS} FROM auth_role WHERE name = {self._param(1)}", (name,)
        )
        return _role(rows[0]) if rows else None

    def setting(self, name: str) -> SettingRow | None:
        rows = self._fetch(
            f"SELECT {_SETTING_COLUMNS} FROM auth_setting WHERE name = {self._param(1)}", (name,)
        )
        return _setting(rows[0]) if rows else None

    # -- writes (in the write transaction) -----------------------------------------------------

    def _upsert(self, table: str, columns: str, values: Sequence[object]) -> None:
        names = [c.strip() for c in columns.split(",")]
        updates = ", ".join(f"{c} = excluded.{c}" for c in names[1:])
        self._fetch(
            f"INSERT INTO {table} ({columns}) VALUES ({self._params(len(names))}) "
            f"ON CONFLICT ({names[0]}) DO UPDATE SET {updates}",
            values,
        )

    def put_user(self, row: UserRow) -> None:
        self._upsert("auth_user", _USER_COLUMNS, (
            row.name, row.password, json.dumps(list(row.roles)), row.no_password, row.deleted,
            row.hlc, row.origin, row.state,
        ))

    def put_role(self, row: RoleRow) -> None:
        self._upsert("auth_role", _ROLE_COLUMNS, (
            row.name, json.dumps(list(row.permissions)), row.deleted, row.hlc, row.origin,
            row.state,
        ))

    def put_setting(self, row: SettingRow) -> None:
        self._upsert("auth_setting", _SETTING_COLUMNS, (row.name, row.value, row.hlc, row.origin))

    def set_revision(self, revision: int) -> None:
        self._write_meta("auth_revision", revision)

    def set_version(self, version: int) -> None:
        self._write_meta("auth_version", version)

    def _write_meta(self, name: str, value: int) -> None:
        if self._set_meta is None:
            raise RuntimeError("the auth tables are read-only here")
        self._set_meta(name, value)
