"""Versioned schema migrations, ``shim/migrations/<dialect>/NNNN_name.sql``, applied in order
at start.

Each applied file is recorded in the ``schema_version`` table. A database whose recorded version is
newer than the newest file this code knows was written by a newer shim and is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(Exception):
    """The database schema cannot be used by this version of shim."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of one dialect ("sqlite", "postgres"), oldest first."""
    folder = resources.files("shim.migrations").joinpath(dialect)
    found: list[Migration] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations for {dialect} are not numbered 1..N: {versions}")
    return found


def pending(applied_version: int, known: list[Migration]) -> list[Migration]:
    """Migrations still to apply on a database at ``applied_version``; refuses newer databases."""
    newest = known[-1].version if known else 0
    if applied_version > newest:
        raise SchemaError(
            f"database schema version {applied_version} is newer than this shim supports "
            f"({newest}); upgrade shim or use another data directory"
        )
    return [m for m in known if m.version > applied_version]
