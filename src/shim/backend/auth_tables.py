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
    no_password: bool
    roles: tuple[str, ...]
    epoch: str
    deleted: bool
    hlc: int
    origin: str


@dataclass(frozen=True, slots=True)
class RoleRow:
    name: str
    # Each permission as (type, key, range_end), in etcd's order.
    permissions: tuple[tuple[int, bytes, bytes], ...]
    deleted: bool
    hlc: int
    origin: str


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


def _encode_permissions(permissions: Sequence[tuple[int, bytes, bytes]]) -> str:
    return json.dumps(
        [{"type": t, "key": k.hex(), "range_end": e.hex()} for t, k, e in permissions],
        separators=(",", ":"),
    )


def _decode_permissions(text: str) -> tuple[tuple[int, bytes, bytes], ...]:
    return tuple(
        (int(p["type"]), bytes.fromhex(p["key"]), bytes.fromhex(p["range_end"]))
        for p in json.loads(text)
    )


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
        users = [
            UserRow(str(r[0]), str(r[1]), bool(r[2]), tuple(json.loads(r[3])), str(r[4]),
                    bool(r[5]), int(r[6]), str(r[7]))
            for r in self._fetch(
                "SELECT name, password, no_password, roles, epoch, deleted, hlc, origin "
                "FROM auth_user ORDER BY name", ()
            )
        ]
        roles = [
            RoleRow(str(r[0]), _decode_permissions(str(r[1])), bool(r[2]), int(r[3]), str(r[4]))
            for r in self._fetch(
                "SELECT name, permissions, deleted, hlc, origin FROM auth_role ORDER BY name", ()
            )
        ]
        settings = {
            str(r[0]): SettingRow(str(r[0]), str(r[1]), int(r[2]), str(r[3]))
            for r in self._fetch("SELECT name, value, hlc, origin FROM auth_setting", ())
        }
        return AuthRows(self.version(), self.revision(), users, roles, settings)

    # -- writes (in the write transaction) -----------------------------------------------------

    def put_user(self, row: UserRow) -> None:
        self._fetch(
            "INSERT INTO auth_user (name, password, no_password, roles, epoch, deleted, hlc, "
            f"origin) VALUES ({self._params(8)}) ON CONFLICT (name) DO UPDATE SET "
            "password = excluded.password, no_password = excluded.no_password, "
            "roles = excluded.roles, epoch = excluded.epoch, deleted = excluded.deleted, "
            "hlc = excluded.hlc, origin = excluded.origin",
            (row.name, row.password, row.no_password, json.dumps(list(row.roles)), row.epoch,
             row.deleted, row.hlc, row.origin),
        )

    def put_role(self, row: RoleRow) -> None:
        self._fetch(
            "INSERT INTO auth_role (name, permissions, deleted, hlc, origin) "
            f"VALUES ({self._params(5)}) ON CONFLICT (name) DO UPDATE SET "
            "permissions = excluded.permissions, deleted = excluded.deleted, "
            "hlc = excluded.hlc, origin = excluded.origin",
            (row.name, _encode_permissions(row.permissions), row.deleted, row.hlc, row.origin),
        )

    def put_setting(self, row: SettingRow) -> None:
        self._fetch(
            f"INSERT INTO auth_setting (name, value, hlc, origin) VALUES ({self._params(4)}) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, hlc = excluded.hlc, "
            "origin = excluded.origin",
            (row.name, row.value, row.hlc, row.origin),
        )

    def set_revision(self, revision: int) -> None:
        self._write_meta("auth_revision", revision)

    def set_version(self, version: int) -> None:
        self._write_meta("auth_version", version)

    def _write_meta(self, name: str, value: int) -> None:
        if self._set_meta is None:
            raise RuntimeError("the auth tables are read-only here")
        self._set_meta(name, value)
