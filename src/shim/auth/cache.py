"""The auth state of a snapshot, read from the database only when it changed.

Every snapshot (a read view, or the write transaction) carries the auth version, a number
that changes with every change of the auth tables; the state read for a version is kept and
reused until a snapshot shows another one. A rolled-back change leaves the old version in
the database, so a state is never taken for one it is not.
"""

from __future__ import annotations

from typing import Protocol

from shim.auth.objects import role_from_row, user_from_row
from shim.auth.state import AuthState
from shim.backend.auth_tables import AuthRows, AuthTables

ENABLED = "enabled"
TOKEN_KEY = "token_key"


class HasAuthTables(Protocol):
    @property
    def auth(self) -> AuthTables: ...


def state_from_rows(rows: AuthRows) -> AuthState:
    users = {row.name: user_from_row(row) for row in rows.users if not row.deleted}
    roles = {row.name: role_from_row(row) for row in rows.roles if not row.deleted}
    enabled = rows.settings.get(ENABLED)
    key = rows.settings.get(TOKEN_KEY)
    return AuthState(
        version=rows.version,
        enabled=enabled is not None and enabled.value == "1",
        revision=rows.revision,
        users=users,
        roles=roles,
        token_key=bytes.fromhex(key.value) if key is not None else b"",
    )


class AuthCache:
    """The newest state read; any thread may ask (a state never changes once read)."""

    def __init__(self) -> None:
        self._state: AuthState | None = None

    def state(self, view: HasAuthTables) -> AuthState:
        tables = view.auth
        state = self._state
        if state is None or state.version != tables.version():
            state = self._state = state_from_rows(tables.load())
        return state
