"""``shim snapshot status`` and ``shim snapshot restore``: the files `etcdctl snapshot save`
makes from a shim server (written by ``shim.mvcc.snapshot_file``).

Such a file is a bbolt database laid out as etcd's (``shim.backend.bolt``), followed by the
SHA-256 of those bytes (etcd's trailer: `etcdctl snapshot save` checks the file ends with one,
and `etcdutl snapshot restore` checks it matches). Its ``key`` bucket holds every stored
version as etcd stores it (the same items HashKV hashes), ``meta`` the revision as etcd's
consistent index and the compacted revision, ``lease`` the leases; so `etcdctl snapshot status`
reads it and reports shim's revision and keys. Bucket ``shim`` holds the node's whole SQLite
database, in pieces: what ``restore`` brings back, replication state and all. Files from
before bbolt (the SQLite database itself plus the trailer) are read too, and so are etcd's
own snapshots (no ``shim`` bucket): ``shim.backend.etcd_import`` rebuilds a database from
their buckets.

Restoring makes a new database file from the snapshot. By default the restored node gets a
new node id (a new etcd member and cluster id); ``--keep-identity`` keeps the old one. Either
way it writes under a new origin, as at every start (``shim.replication.signing``), so the
(origin, seq) pairs it writes never collide with those its old self wrote after the snapshot,
and its peers send those back (their version vectors hold more of them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import apsw

from shim.backend.bolt import SHIM_BUCKET, BoltError, BoltReader, is_bolt
from shim.backend.etcd_import import AuthImport, ImportRefused, import_etcd
from shim.backend.sqlite_rows import one
from shim.config import ConfigError, PostgresEndpoint, parse_datastore_endpoint

TRAILER_BYTES = 32  # a SHA-256
COPY_CHUNK_BYTES = 1024 * 1024
SQLITE_MAGIC = b"SQLite format 3\x00"


class SnapshotError(Exception):
    """A snapshot that cannot be used, or a restore that cannot be done (one line)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    revision: int
    compact_revision: int
    total_keys: int
    total_size: int  # bytes of the snapshot's database file (its trailer aside)
    node_id: str
    checksum: str  # "sha256 ok", or "not checked"


def _chunks(source: BinaryIO, length: int, path: Path) -> Iterator[bytes]:
    """The next ``length`` bytes of ``source``, a piece at a time."""
    remaining = length
    while remaining:
        chunk = source.read(min(COPY_CHUNK_BYTES, remaining))
        if not chunk:
            raise SnapshotError(f"{path} shrank while it was read")
        remaining -= len(chunk)
        yield chunk


def _database_bytes(path: Path, skip_hash_check: bool) -> int:
    """How many leading bytes of ``path`` are the database (the rest is the trailer),
    verifying the trailer unless told not to."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from None
    if skip_hash_check:
        return size
    if size % 512 != TRAILER_BYTES:
        raise SnapshotError(
            f"{path} does not end with a SHA-256 trailer (not a file from `etcdctl snapshot "
            "save`?); --skip-hash-check uses a plain copy of a database as it is"
        )
    body = size - TRAILER_BYTES
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in _chunks(source, body, path):
            digest.update(chunk)
        trailer = source.read(TRAILER_BYTES)
    if digest.digest() != trailer:
        raise SnapshotError(
            f"{path}: the SHA-256 checksum does not match (the file is damaged or incomplete)"
        )
    return body


def _copy_database(
    source: Path, target: Path, length: int, auth_import: AuthImport | None
) -> bool:
    """The database the snapshot's first ``length`` bytes hold, into ``target`` (new): shim's
    own, or one rebuilt from an etcd snapshot (then True)."""
    with open(source, "rb") as src:
        head = src.read(64)
        src.seek(0)
        if head.startswith(SQLITE_MAGIC):  # a file from before bbolt: the database itself
            _write_file(target, _chunks(src, length, source))
            return False
        if not is_bolt(head):
            raise SnapshotError(
                f"{source} is not a snapshot (neither etcd's bbolt nor a SQLite database)"
            )
        try:
            reader = BoltReader(src)
            if SHIM_BUCKET in reader.buckets():
                _write_file(target, (piece for _, piece in reader.bucket(SHIM_BUCKET)))
                return False
            import_etcd(reader, target, auth_import)
            return True
        except (BoltError, ImportRefused) as exc:
            raise SnapshotError(f"{source}: {exc}") from None


def _write_file(target: Path, pieces: Iterator[bytes]) -> None:
    with open(target, "xb") as dst:
        for piece in pieces:
            dst.write(piece)
        dst.flush()
        os.fsync(dst.fileno())


def _one_line(exc: Exception, limit: int = 300) -> str:
    """SQLite's message on one line (a damaged schema's quotes its SQL, lines and all)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _inspect(conn: apsw.Connection, path: Path) -> tuple[int, int, int, str]:
    """(revision, compact revision, live keys, node id) of a copied database, after SQLite's
    own consistency check."""
    try:
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            first = " ".join(str(check[0][0]).split())  # SQLite's report spans lines
            raise SnapshotError(f"{path}: the database is damaged ({first})")
        meta: dict[str, object] = {
            str(row[0]): row[1] for row in conn.execute("SELECT name, value FROM meta")
        }
        keys = int(one(conn.execute("SELECT COUNT(*) FROM current"))[0])
    except apsw.SQLError as exc:
        raise SnapshotError(f"{path} is not a shim database ({_one_line(exc)})") from None
    except apsw.Error as exc:
        raise SnapshotError(
            f"{path} is not a usable SQLite database ({_one_line(exc)})"
        ) from None
    except UnicodeDecodeError:  # text SQLite hands back that is not UTF-8: damage
        raise SnapshotError(f"{path}: the database is damaged (text that is not UTF-8)") from None
    if "node_id" not in meta or "revision" not in meta:
        raise SnapshotError(f"{path} is not a shim database (no node id or revision)")
    try:
        revision = int(str(meta["revision"]))
        compacted = int(str(meta.get("compact_revision", -1)))
    except ValueError:
        raise SnapshotError(f"{path}: the database is damaged (a revision is no number)") from None
    return revision, compacted, keys, str(meta["node_id"])


def status(
    path: Path, skip_hash_check: bool = False, auth_import: AuthImport | None = None
) -> SnapshotInfo:
    """What a snapshot holds; the file itself is not changed. ``auth_import`` reads an etcd
    snapshot's users and roles (``shim.backend.etcd_import``)."""
    body = _database_bytes(path, skip_hash_check)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f".shim-snapshot-status-{uuid.uuid4().hex}"
    try:
        from_etcd = _copy_database(path, scratch, body, auth_import)
        conn = apsw.Connection(str(scratch), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            revision, compacted, keys, node_id = _inspect(conn, path)
        finally:
            conn.close()
        if from_etcd:
            node_id = ""  # etcd's: no shim node yet
    finally:
        for leftover in (scratch, Path(f"{scratch}-wal"), Path(f"{scratch}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return SnapshotInfo(
        revision, compacted, keys, body, node_id,
        "not checked" if skip_hash_check else "sha256 ok",
    )


def restore(
    path: Path, endpoint: str, keep_identity: bool = False, skip_hash_check: bool = False,
    auth_import: AuthImport | None = None,
) -> SnapshotInfo:
    """Make the database ``endpoint`` names (a new SQLite file) from the snapshot ``path``
    (``auth_import``: as for ``status``)."""
    target = parse_datastore_endpoint(endpoint)
    if isinstance(target, PostgresEndpoint):
        raise ConfigError(
            "restoring into PostgreSQL is not supported: shim snapshots are SQLite files; "
            "use pg_dump / pg_restore for a PostgreSQL datastore"
        )
    database = target.path
    for existing in (database, Path(f"{database}-wal")):
        if existing.exists():
            raise SnapshotError(
                f"{existing} already exists; restore into a new path (move the old database "
                "away first)"
            )
    body = _database_bytes(path, skip_hash_check)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(f"cannot create {database.parent}: {exc.strerror}") from None
    partial = database.with_name(f".{database.name}.restore-{uuid.uuid4().hex[:8]}")
    try:
        if _copy_database(path, partial, body, auth_import) and keep_identity:
            raise SnapshotError(f"{path} is etcd's: there is no shim node identity to keep")
        conn = apsw.Connection(str(partial))
        try:
            revision, compacted, keys, node_id = _inspect(conn, path)
            if not keep_identity:
                node_id = uuid.uuid4().hex
                with conn:
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'node_id'", (node_id,))
            conn.execute("PRAGMA journal_mode = DELETE").fetchall()  # one self-contained file
        finally:
            conn.close()
        with open(partial, "rb") as done:
            os.fsync(done.fileno())
        os.rename(partial, database)
        directory = os.open(database.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    except OSError as exc:
        raise SnapshotError(f"cannot write {database}: {exc.strerror}") from None
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    checksum = "not checked" if skip_hash_check else "sha256 ok"
    return SnapshotInfo(revision, compacted, keys, body, node_id, checksum)
