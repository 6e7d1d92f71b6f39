"""Typed row access for SQLite queries (apsw types every row as optional)."""

from __future__ import annotations

from typing import Any

import apsw


def one(cursor: apsw.Cursor) -> Any:
    """The row of a query that always yields one (an aggregate, a PRAGMA)."""
    row = cursor.fetchone()
    if row is None:
        raise apsw.SQLError("a query that always returns a row returned none")
    return row
