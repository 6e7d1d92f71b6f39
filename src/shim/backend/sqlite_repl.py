"""SQLite access to the replication tables (repl_entry, repl_tombstone, peer)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from shim.backend.base import kv_from_row
from shim.backend.rows import KV_COLUMNS
from shim.backend.sqlite_rows import one
from shim.pb.kv_pb2 import KeyValue
from shim.replication import ops as field_ops
from shim.replication.entry import Entry, Stamp
from shim.replication.framing import MAX_NUMBER
from shim.replication.quarantine import OUTCOME as QUARANTINED
from shim.replication.signing import DIGEST_BYTES, NO_CHAIN
from shim.replication.tables import PeerRow

# Stored entries no fold reads: held apart (stamped beyond the clock-skew bound, until the
# clock reaches them) or quarantined (they cannot be folded).
HELD = "held"
# Retention's stubs: an entry's place in its origin's sequence, without value or operations.
PRUNED = "pruned"
_FOLDED = f"e.outcome NOT IN ('{HELD}', '{QUARANTINED}', '{PRUNED}')"

log = logging.getLogger(__name__)

# An entry's value (``e`` is repl_entry): its own, or that of the log row it was written with
# (log_revision; the stamp tells it from another version at that revision). Found through
# the log's (key, revision) index, one row: not by stamp among every version of the key.
ENTRY_VALUE_SQL = (
    "CASE WHEN e.log_revision = 0 THEN e.value ELSE "
    "(SELECT l.value FROM log l WHERE l.key = e.key AND l.revision = e.log_revision "
    "AND l.hlc = e.hlc) END"
)
_ENTRY_COLUMNS = (
    f"e.origin, e.seq, e.hlc, e.key, e.deleted, {ENTRY_VALUE_SQL}, e.lease, e.ops, e.base_uid, "
    f"e.uid, e.kind, e.secret, e.outcome = '{PRUNED}', e.sig, e.digest, e.chain, e.head_sig"
)
# What an entry waiting for the entries before it keeps (repl_pending, the same names).
_PENDING_COLUMNS = (
    "e.origin, e.seq, e.hlc, e.key, e.deleted, e.value, e.lease, e.ops, e.base_uid, e.uid, "
    "e.kind, e.secret, e.pruned, e.sig, e.digest, NULL, e.head_sig"
)


def _entry(row: Sequence[Any]) -> Entry:
    (origin, seq, hlc, key, deleted, value, lease, ops, base_uid, uid, kind, secret, pruned,
     sig, digest, chain, head_sig) = row
    return Entry(
        origin=str(origin),
        seq=int(seq),
        hlc=int(hlc),
        key=bytes(key),
        deleted=bool(deleted),
        value=bytes(value),
        lease=int(lease),
        ops=None if ops is None else field_ops.loads_stored(str(ops)),
        ops_json=None if ops is None else str(ops),
        base_uid=None if base_uid is None else str(base_uid),
        uid=None if uid is None else str(uid),
        kind=str(kind),
        secret=None if secret is None else str(secret),
        pruned=bool(pruned),
        sig=bytes(sig or b""),
        digest=bytes(digest or b""),
        chain=bytes(chain or b""),
        head_sig=bytes(head_sig or b""),
    )


_T = TypeVar("_T")


def _chunks(items: Collection[_T], size: int = 500) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``size`` (the parameters of one statement)."""
    listed = list(items)
    for start in range(0, len(listed), size):
        yield listed[start:start + size]


def _fork(row: Sequence[Any]) -> Entry:
    """A kept version of an equivocated entry, as a stub with its proof."""
    o, s, h, k, d, lease, b, u, kind, dg, sg, proof = row
    signed_alone = proof is None  # signed by itself; otherwise by a signed chain after it
    proof = bytes(proof or b"")
    return Entry(str(o), int(s), int(h), bytes(k), bool(d), b"", int(lease), None,
                 None if b is None else str(b), None if u is None else str(u), str(kind),
                 pruned=True, digest=bytes(dg), sig=bytes(sg) if signed_alone else b"",
                 head_sig=b"" if signed_alone else bytes(sg), prev_chain=proof[:DIGEST_BYTES],
                 tail=proof[DIGEST_BYTES:])


def _int64(value: int) -> int | None:
    return value if -MAX_NUMBER - 1 <= value <= MAX_NUMBER else None


class SqliteReplicationTables:
    """``shim.replication.tables.ReplicationTables`` on one SQLite connection; the caller
    holds the transaction."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    # -- entries ---------------------------------------------------------------------------------

    def insert(
        self, e: Entry, received_from: str | None, received_ms: int, skewed: bool, outcome: str,
        log_revision: int = 0,
    ) -> int | None:
        """Store an entry; its ingest position, or None when (origin, seq) is already here.
        ``log_revision``: a local write whose log row at that revision (same key and stamp)
        holds exactly ``e.value``; the entry then stores no copy of it. A peer's entry
        (``received_from``) is the next of its origin (the caller keeps each origin gapless
        and tells ``advance_origin`` once per batch)."""
        self._conn.execute(
            "INSERT OR IGNORE INTO repl_entry (origin, seq, hlc, key, deleted, value, lease, ops, "
            "base_uid, uid, received_from, received_ms, skewed, outcome, log_revision, kind, "
            "secret, sig, digest, chain, head_sig) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.origin,
                e.seq,
                e.hlc,
                e.key,
                int(e.deleted),
                b"" if log_revision or e.pruned else e.value,
                e.lease,
                None if e.pruned else e.ops_text(),
                e.base_uid,
                e.uid,
                received_from,
                received_ms,
                int(skewed),
                PRUNED if e.pruned else outcome,
                log_revision,
                e.kind,
                e.secret,
                e.sig or None,
                e.digest or None,
                e.chain or None,
                None if e.tail else e.head_sig or None,  # with a tail: a later entry's
            ),
        )
        if self._conn.changes() == 0:
            return None
        return int(self._conn.last_insert_rowid())

    def advance_origin(
        self, origin: str, seq: int, max_hlc: int, max_skewed_hlc: int, head: bytes
    ) -> None:
        """The origin's entries are now held up to ``seq`` (its chain there: ``head``), the
        newest stamps among them ``max_hlc`` (applied or waiting for nothing) and
        ``max_skewed_hlc`` (held apart)."""
        self._conn.execute(
            "INSERT INTO repl_origin (origin, max_seq, max_hlc, max_skewed_hlc, head) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
            "max_seq = MAX(max_seq, excluded.max_seq), "
            "max_hlc = MAX(max_hlc, excluded.max_hlc), "
            "max_skewed_hlc = MAX(max_skewed_hlc, excluded.max_skewed_hlc), "
            "head = COALESCE(excluded.head, head)",
            (origin, seq, max_hlc, max_skewed_hlc, head or None),
        )

    # -- a batch's lookups: one query per batch, not one per entry -----------------------------

    def current_values(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        """The live version of each of ``keys`` that has one."""
        found: dict[bytes, KeyValue] = {}
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            for row in self._conn.execute(
                f"SELECT {KV_COLUMNS} FROM current c JOIN log l ON l.id = c.id "
                f"WHERE c.key IN ({marks})", part,
            ):
                kv = kv_from_row(row)
                found[kv.key] = kv
        return found

    def keys_with_entries(self, keys: Collection[bytes]) -> set[bytes]:
        """Those of ``keys`` that have a key-value entry stored here."""
        found: set[bytes] = set()
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            found.update(bytes(key) for (key,) in self._conn.execute(
                f"SELECT DISTINCT key FROM repl_entry WHERE key IN ({marks}) AND kind = ''",
                part,
            ))
        return found

    def pending_origins(self) -> set[str]:
        """The origins with entries waiting for earlier ones."""
        return {str(o) for (o,) in self._conn.execute("SELECT DISTINCT origin FROM repl_pending")}

    def defer_folds(self, peer: str, late: dict[bytes, list[int]]) -> None:
        self._conn.executemany(
            "INSERT OR IGNORE INTO repl_deferred_fold (peer, key, ingest) VALUES (?, ?, ?)",
            [(peer, key, position) for key, positions in late.items() for position in positions],
        )

    def deferred_keys(self) -> set[bytes]:
        return {bytes(k) for (k,) in self._conn.execute(
            "SELECT DISTINCT key FROM repl_deferred_fold")}

    def take_deferred(self, peer: str | None) -> dict[bytes, list[int]]:
        where, params = ("", ()) if peer is None else (" WHERE peer = ?", (peer,))
        late: dict[bytes, list[int]] = {}
        for key, position in self._conn.execute(
            f"SELECT key, ingest FROM repl_deferred_fold{where} ORDER BY key, ingest", params
        ):
            late.setdefault(bytes(key), []).append(int(position))
        if late:
            self._conn.execute(f"DELETE FROM repl_deferred_fold{where}", params)
        return late

    def keep_values_of(self, rows_sql: str, params: tuple[object, ...]) -> None:
        """Copy into the entries that read their value from the log rows ``rows_sql`` selects
        (key, hlc, value) the value they read, before those rows are deleted."""
        self._conn.execute(
            "UPDATE repl_entry AS e SET value = gone.value, log_revision = 0 "
            f"FROM ({rows_sql}) AS gone "
            "WHERE e.key = gone.key AND e.hlc = gone.hlc AND e.log_revision != 0",
            params,
        )

    def set_outcome(self, ingest: int, outcome: str) -> None:
        self._conn.execute("UPDATE repl_entry SET outcome = ? WHERE ingest = ?", (outcome, ingest))

    def set_outcome_of(self, origin: str, seq: int, outcome: str) -> None:
        self._conn.execute(
            "UPDATE repl_entry SET outcome = ? WHERE origin = ? AND seq = ?", (outcome, origin, seq)
        )

    def newest_stamp(self, key: bytes, excluding: int = 0) -> Stamp | None:
        """The largest stamp among the key's folded entries, leaving out the one at
        ``excluding``."""
        row = self._conn.execute(
            "SELECT hlc, origin, seq FROM repl_entry e "
            f"WHERE key = ? AND kind = '' AND ingest != ? AND {_FOLDED} "
            "ORDER BY hlc DESC, origin DESC, seq DESC LIMIT 1",
            (key, excluding),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

    def key_entries(self, key: bytes) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """The key's entries a fold reads, in stamp order; and those whose stored operations
        cannot be read (each with the reason), which the fold must leave out."""
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM repl_entry e WHERE e.key = ? AND e.kind = '' "
            f"AND {_FOLDED} ORDER BY e.hlc, e.origin, e.seq",
            (key,),
        )
        entries: list[Entry] = []
        unreadable: list[tuple[Entry, str]] = []
        for row in rows:
            try:
                entries.append(_entry(row))
            except field_ops.BadOps as exc:
                bare = _entry((*row[:7], None, *row[8:]))
                unreadable.append((bare, f"stored operations: {exc}"))
        return entries, unreadable

    def entry_value(self, key: bytes, origin: str, seq: int) -> bytes | None:
        """The value of an entry of ``key`` a fold of it reads (a put's; None otherwise):
        ``stored`` held to what ``key_entries`` gives, without reading the entry whole."""
        row = self._conn.execute(
            f"SELECT {ENTRY_VALUE_SQL} FROM repl_entry e WHERE e.origin = ? AND e.seq = ? "
            f"AND e.key = ? AND e.kind = '' AND e.deleted = 0 AND {_FOLDED}",
            (origin, _int64(seq), key),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def held_due(self, hlc_limit: int, limit: int) -> list[tuple[int, Entry]]:
        """Held entries stamped at or below ``hlc_limit`` (oldest stamp first)."""
        rows = self._conn.execute(
            f"SELECT e.ingest, {_ENTRY_COLUMNS} FROM repl_entry e "
            f"WHERE e.outcome = '{HELD}' AND e.hlc <= ? ORDER BY e.hlc LIMIT ?",
            (hlc_limit, limit),
        ).fetchall()
        return [(int(row[0]), _entry(row[1:])) for row in rows]  # type: ignore[arg-type]

    def min_held_hlc(self) -> int | None:
        row = one(self._conn.execute(f"SELECT MIN(hlc) FROM repl_entry WHERE outcome = '{HELD}'"))
        return None if row[0] is None else int(row[0])

    def add_quarantined(
        self, origin: str, seq: int, hlc: int, key: bytes, stage: str, reason: str,
        received_from: str | None, received_ms: int,
    ) -> None:
        self._conn.execute(
            "INSERT INTO repl_quarantine (origin, seq, hlc, key, stage, reason, received_from, "
            "received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (origin, _int64(seq), _int64(hlc), key, stage, reason, received_from, received_ms),
        )

    # -- version vectors -------------------------------------------------------------------------

    def high_water(self, origin: str) -> int:
        row = self._conn.execute(
            "SELECT max_seq FROM repl_origin WHERE origin = ?", (origin,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def vector(self) -> dict[str, int]:
        return {
            str(origin): int(seq)
            for origin, seq in self._conn.execute("SELECT origin, max_seq FROM repl_origin")
        }

    def hold_pending(self, e: Entry, received_from: str, received_ms: int) -> bool:
        """Keep an entry that arrived before the ones below it; False if one is already kept
        at its (origin, seq)."""
        self._conn.execute(  # the origin is known (replication_origins counts what waits)
            "INSERT OR IGNORE INTO repl_origin (origin, max_seq) VALUES (?, 0)", (e.origin,)
        )
        self._conn.execute(
            "INSERT OR IGNORE INTO repl_pending (origin, seq, hlc, key, deleted, value, lease, "
            "ops, base_uid, uid, kind, secret, pruned, received_from, received_ms, sig, digest, "
            "head_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.origin, e.seq, e.hlc, e.key, int(e.deleted), e.value, e.lease,
             e.ops_text(), e.base_uid, e.uid, e.kind,
             e.secret, int(e.pruned), received_from, received_ms, e.sig or None,
             e.digest or None, None if e.tail else e.head_sig or None),
        )
        return self._conn.changes() > 0

    def take_pending(self, origin: str, seq: int) -> tuple[Entry, str] | None:
        """The kept entry at (origin, seq), removed from the waiting ones, with its sender."""
        row = self._conn.execute(
            f"SELECT {_PENDING_COLUMNS}, e.received_from FROM repl_pending e "
            "WHERE e.origin = ? AND e.seq = ?",
            (origin, seq),
        ).fetchone()
        if row is None:
            return None
        self._conn.execute(
            "DELETE FROM repl_pending WHERE origin = ? AND seq = ?", (origin, seq)
        )
        return _entry(row[:-1]), str(row[-1])

    def drop_pending_through(self, origin: str, seq: int) -> None:
        """Forget kept entries of ``origin`` at or below ``seq`` (held here already)."""
        self._conn.execute(
            "DELETE FROM repl_pending WHERE origin = ? AND seq <= ?", (origin, seq)
        )

    def pending_count(self) -> int:
        return int(one(self._conn.execute("SELECT COUNT(*) FROM repl_pending"))[0])

    def first_position(self, origin: str, after_seq: int) -> int | None:
        """The ingest position of ``origin``'s first entry above ``after_seq`` (an origin's
        entries are stored in sequence order)."""
        row = self._conn.execute(
            "SELECT ingest FROM repl_entry WHERE origin = ? AND seq > ? ORDER BY seq LIMIT 1",
            (origin, after_seq),
        ).fetchone()
        return None if row is None else int(row[0])

    def positions_after(self, cursor: int, limit: int) -> list[tuple[int, str, int]]:
        """Up to ``limit`` (ingest, origin, seq) after ``cursor``, in ingest order."""
        rows = self._conn.execute(
            "SELECT ingest, origin, seq FROM repl_entry WHERE ingest > ? ORDER BY ingest LIMIT ?",
            (cursor, limit),
        )
        return [(int(ingest), str(origin), int(seq)) for ingest, origin, seq in rows]

    def entries_at(self, positions: list[int]) -> list[tuple[int, Entry]]:
        """The entries at these ingest positions, in ingest order."""
        rows: list[Sequence[Any]] = []
        for part in _chunks(positions):
            marks = ",".join("?" * len(part))
            rows += self._conn.execute(
                f"SELECT e.ingest, {_ENTRY_COLUMNS} FROM repl_entry e WHERE e.ingest IN ({marks})",
                part,
            ).fetchall()
        rows.sort(key=lambda row: int(row[0]))
        return [(int(row[0]), _entry(row[1:])) for row in rows]

    def max_ingest(self) -> int:
        row = one(self._conn.execute("SELECT MAX(ingest) FROM repl_entry"))
        return int(row[0] or 0)

    def max_seq(self, origin: str) -> int:
        row = one(self._conn.execute(
            "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM repl_entry WHERE origin = ?1 "
            "UNION ALL SELECT max_seq FROM repl_origin WHERE origin = ?1)",
            (origin,),
        ))
        return int(row[0] or 0)

    def set_local(self, origin: str, seq: int, hlc: int, head: bytes = b"") -> None:
        """This node's newest sequence number, clock stamp and chain, kept apart from the
        entries (retention may prune the newest one)."""
        self._conn.execute(
            "INSERT INTO repl_origin (origin, max_seq, max_hlc, head) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (origin) DO UPDATE SET max_seq = MAX(max_seq, excluded.max_seq), "
            "max_hlc = MAX(max_hlc, excluded.max_hlc), head = COALESCE(excluded.head, head)",
            (origin, seq, hlc, head or None),
        )

    # -- signatures, chains, forks ---------------------------------------------------------

    def origin_head(self, origin: str) -> bytes:
        row = self._conn.execute(
            "SELECT head FROM repl_origin WHERE origin = ?", (origin,)
        ).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else NO_CHAIN

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every origin's high-water mark and the chain there (empty: none kept)."""
        return {
            str(origin): (int(seq), bytes(head or b""))
            for origin, seq, head in self._conn.execute(
                "SELECT origin, max_seq, head FROM repl_origin"
            )
        }

    def chain_at(self, origin: str, seq: int) -> bytes:
        row = self._conn.execute(
            "SELECT chain FROM repl_entry WHERE origin = ? AND seq = ?", (origin, seq)
        ).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else b""

    def set_head_sig(self, origin: str, seq: int, sig: bytes) -> None:
        self._conn.execute(
            "UPDATE repl_entry SET head_sig = ? WHERE origin = ? AND seq = ?", (sig, origin, seq)
        )

    def up_to_signed(self, origin: str, after_seq: int, limit: int) -> list[tuple[int, Entry]]:
        """``origin``'s entries after ``after_seq`` up to the first that carries its chain's
        signature (at most ``limit``), as (ingest position, entry)."""
        rows: Sequence[Sequence[Any]] = self._conn.execute(
            f"SELECT e.ingest, {_ENTRY_COLUMNS} FROM repl_entry e "
            "WHERE e.origin = ?1 AND e.seq > ?2 AND e.seq <= COALESCE((SELECT MIN(s.seq) "
            "FROM repl_entry s WHERE s.origin = ?1 AND s.seq > ?2 AND s.head_sig IS NOT NULL), "
            "?2) ORDER BY e.seq LIMIT ?3",
            (origin, after_seq, limit),
        ).fetchall()
        return [(int(row[0]), _entry(row[1:])) for row in rows]

    def stored(self, origin: str, seq: int) -> Entry | None:
        row = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM repl_entry e WHERE e.origin = ? AND e.seq = ?",
            (origin, seq),
        ).fetchone()
        return None if row is None else _entry(row)

    def unsigned_before(self) -> int:
        row = self._conn.execute("SELECT unsigned_before FROM repl_signing").fetchone()
        return int(row[0]) if row is not None else 0

    def add_fork(self, e: Entry, found_ms: int) -> bool:
        """Keep one version of an entry its origin equivocated on; False if known."""
        self._conn.execute(
            "INSERT OR IGNORE INTO repl_fork (origin, seq, hlc, key, deleted, lease, base_uid, "
            "uid, kind, digest, sig, found_ms, proof) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.origin, e.seq, e.hlc, e.key, int(e.deleted), e.lease, e.base_uid, e.uid, e.kind,
             e.digest, e.sig or e.head_sig, found_ms,
             None if e.sig else e.prev_chain + e.tail),
        )
        return self._conn.changes() > 0

    def forks(self) -> list[Entry]:
        """Every kept version of an equivocated entry, as a stub."""
        rows = self._conn.execute(
            "SELECT origin, seq, hlc, key, deleted, lease, base_uid, uid, kind, digest, sig, "
            "proof FROM repl_fork ORDER BY origin, seq"
        )
        return [_fork(row) for row in rows]

    def forked(self) -> dict[str, int]:
        """Origins known to equivocate: the first seq left out of folds."""
        return {
            str(origin): int(seq) for origin, seq in self._conn.execute(
                "SELECT origin, forked_seq FROM repl_origin WHERE forked_seq IS NOT NULL"
            )
        }

    def mark_forked(self, origin: str, seq: int, now_ms: int) -> None:
        self._conn.execute(
            "UPDATE repl_origin SET forked_seq = MIN(COALESCE(forked_seq, ?1), ?1), "
            "forked_ms = COALESCE(forked_ms, ?2) WHERE origin = ?3",
            (seq, now_ms, origin),
        )

    def quarantine_from(self, origin: str, seq: int) -> list[bytes]:
        """Leave ``origin``'s stored entries from ``seq`` on out of every fold; the keys of
        those that were folded (they need folding again)."""
        keys = [bytes(row[0]) for row in self._conn.execute(
            f"SELECT DISTINCT e.key FROM repl_entry e WHERE e.origin = ? AND e.seq >= ? "
            f"AND e.kind = '' AND {_FOLDED}", (origin, seq),
        )]
        self._conn.execute(
            f"UPDATE repl_entry SET outcome = '{QUARANTINED}' WHERE origin = ? AND seq >= ? "
            f"AND outcome NOT IN ('{PRUNED}', '{QUARANTINED}')", (origin, seq),
        )
        return keys

    def name_origin(self, origin: str, node_id: str) -> None:
        self._conn.execute(
            "INSERT INTO repl_origin (origin, max_seq, node_id) VALUES (?, 0, ?) "
            "ON CONFLICT (origin) DO UPDATE SET node_id = excluded.node_id",
            (origin, node_id),
        )

    def prune(self, written_before_ms: int, limit: int) -> int:
        """Strip up to ``limit`` entries that no merge can need any more to their place in
        their origin's sequence (outcome 'pruned': no value, no operations), so peers that
        catch up later still get each origin's entries without gaps: an entry of a key whose
        entries carry no object identity, followed (in stamp order) by a whole-value write or
        a delete of that key, which makes the key's state independent of everything before
        it. Only entries stored before ``written_before_ms`` go, so recent ones still reach
        peers as they are. Auth objects' entries are kept: they are few, and a later version
        of an object supersedes an earlier one only if its writer had seen it."""
        self._conn.execute(
            "UPDATE repl_entry SET value = x'', ops = NULL, log_revision = 0, "
            f"outcome = '{PRUNED}' "
            "WHERE ingest IN ("
            " SELECT e.ingest FROM repl_entry e"
            " WHERE e.received_ms < ?1 AND e.uid IS NULL AND e.base_uid IS NULL AND e.kind = ''"
            f" AND e.outcome != '{PRUNED}'"
            " AND EXISTS (SELECT 1 FROM repl_entry w WHERE w.key = e.key AND w.kind = ''"
            "   AND (w.hlc, w.origin, w.seq) > (e.hlc, e.origin, e.seq)"
            "   AND w.uid IS NULL AND w.base_uid IS NULL AND (w.deleted = 1 OR w.ops IS NULL)"
            f"   AND w.outcome NOT IN ('{HELD}', '{QUARANTINED}', '{PRUNED}'))"
            " AND NOT EXISTS (SELECT 1 FROM repl_entry u WHERE u.key = e.key AND u.kind = ''"
            "   AND (u.uid IS NOT NULL OR u.base_uid IS NOT NULL))"
            " LIMIT ?2)",
            (written_before_ms, limit),
        )
        return self._conn.changes()

    def max_hlc(self) -> int:
        """The largest clock stamp issued here or received unflagged."""
        row = one(self._conn.execute("SELECT MAX(max_hlc) FROM repl_origin"))
        return int(row[0] or 0)

    def max_skewed_hlc(self) -> int:
        row = one(self._conn.execute("SELECT MAX(max_skewed_hlc) FROM repl_origin"))
        return int(row[0] or 0)

    def is_empty(self) -> bool:
        return self._conn.execute("SELECT 1 FROM repl_entry LIMIT 1").fetchone() is None

    # -- tombstones ------------------------------------------------------------------------------

    def tombstones(self, key: bytes) -> set[str]:
        rows = self._conn.execute("SELECT uid FROM repl_tombstone WHERE key = ?", (key,))
        return {str(row[0]) for row in rows}

    def add_tombstones(self, key: bytes, uids: set[str]) -> None:
        for uid in uids:
            self._conn.execute(
                "INSERT OR IGNORE INTO repl_tombstone (key, uid) VALUES (?, ?)", (key, uid)
            )

    # -- peers -----------------------------------------------------------------------------------

    def peer(self, node_id: str) -> PeerRow | None:
        row = self._conn.execute(
            "SELECT node_id, name, address, role, cursor, peer_high, entries_received, "
            "entries_applied, conflicts, last_lag_ms, first_seen_ms, last_seen_ms "
            "FROM peer WHERE node_id = ?",
            (node_id,),
        ).fetchone()
        return None if row is None else PeerRow(*row)

    def peers(self) -> list[PeerRow]:
        rows: Sequence[Sequence[Any]] = self._conn.execute(
            "SELECT node_id, name, address, role, cursor, peer_high, entries_received, "
            "entries_applied, conflicts, last_lag_ms, first_seen_ms, last_seen_ms "
            "FROM peer ORDER BY first_seen_ms, node_id"
        ).fetchall()
        return [PeerRow(*row) for row in rows]

    def upsert_peer(self, node_id: str, name: str, address: str, role: str, now_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO peer (node_id, name, address, role, first_seen_ms, last_seen_ms) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
            "name = excluded.name, address = excluded.address, role = excluded.role, "
            "last_seen_ms = excluded.last_seen_ms",
            (node_id, name, address, role, now_ms, now_ms),
        )

    def record_batch(
        self,
        node_id: str,
        cursor: int,
        peer_high: int,
        received: int,
        applied: int,
        conflicts: int,
        lag_ms: int | None,
        now_ms: int,
        acked: int = 0,
    ) -> None:
        self._conn.execute(
            "UPDATE peer SET cursor = ?, peer_high = ?, entries_received = entries_received + ?, "
            "entries_applied = entries_applied + ?, conflicts = conflicts + ?, "
            "last_lag_ms = COALESCE(?, last_lag_ms), last_seen_ms = ?, acked = MAX(acked, ?) "
            "WHERE node_id = ?",
            (cursor, peer_high, received, applied, conflicts, lag_ms, now_ms, acked, node_id),
        )

    def record_link(
        self, key: str, role: str, node_id: str, state: str, since_ms: int, failures: int,
        error: str, error_ms: int,
    ) -> int:
        self._conn.execute(
            "INSERT INTO link (link_key, role, node_id, state, since_ms, failures, last_error, "
            "last_error_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (link_key) DO UPDATE SET "
            "role = excluded.role, node_id = CASE excluded.node_id WHEN '' THEN node_id "
            "ELSE excluded.node_id END, state = excluded.state, since_ms = excluded.since_ms, "
            "failures = excluded.failures, last_error = excluded.last_error, "
            "last_error_ms = excluded.last_error_ms",
            (key, role, node_id, state, since_ms, failures, error, error_ms),
        )
        return self._conn.changes()

