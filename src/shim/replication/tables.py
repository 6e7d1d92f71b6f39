"""The replication tables' protocol: what replication stores and asks, owned here and
implemented by a backend that replicates (``shim.backend.sqlite_repl``).

Entries (every write of every origin, with its stamp), tombstones of replaced object
incarnations, this node's own sequence and clock, and the peers with their cursors. The caller
holds the transaction (the writer's, or a read snapshot's).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, cast

from shim.pb.kv_pb2 import KeyValue
from shim.replication.entry import Entry, Stamp


@dataclass(slots=True)
class PeerRow:
    node_id: str
    name: str
    address: str
    role: str
    cursor: int
    peer_high: int
    entries_received: int
    entries_applied: int
    conflicts: int
    last_lag_ms: int
    first_seen_ms: int
    last_seen_ms: int


class ReplicationTables(Protocol):
    # -- entries ---------------------------------------------------------------------------------

    def insert(
        self, e: Entry, received_from: str | None, received_ms: int, skewed: bool, outcome: str,
        log_revision: int = 0,
    ) -> int | None:
        """Store an entry; its ingest position, or None when (origin, seq) is already here.
        ``log_revision``: a local write's, whose log row at that revision holds its value.
        A peer's entry (``received_from``) is the next of its origin: the caller keeps each
        origin gapless and records how far with ``advance_origin``."""
        ...

    def advance_origin(
        self, origin: str, seq: int, max_hlc: int, max_skewed_hlc: int, head: bytes
    ) -> None:
        """The origin's entries are held up to ``seq`` (chain ``head``); the newest stamps
        among them, applied (``max_hlc``) and held apart (``max_skewed_hlc``)."""
        ...

    # A batch's lookups, one query each for the whole batch.

    def current_values(self, keys: Collection[bytes]) -> dict[bytes, KeyValue]:
        """The live version of each of ``keys`` that has one."""
        ...

    def keys_with_entries(self, keys: Collection[bytes]) -> set[bytes]:
        """Those of ``keys`` that have a key-value entry stored here."""
        ...

    def pending_origins(self) -> set[str]:
        """The origins with entries waiting for earlier ones."""
        ...

    def defer_folds(self, peer: str, late: dict[bytes, list[int]]) -> None:
        """Keep keys' late entries (ingest positions) for a fold in a later transaction of
        ``peer``'s catch-up."""
        ...

    def deferred_keys(self) -> set[bytes]:
        """The keys whose fold waits for a later transaction (``defer_folds``)."""
        ...

    def take_deferred(self, peer: str | None) -> dict[bytes, list[int]]:
        """The keys ``peer``'s catch-up deferred (None: every peer's), with their late
        entries' positions, no longer kept."""
        ...

    def set_outcome(self, ingest: int, outcome: str) -> None: ...

    def set_outcome_of(self, origin: str, seq: int, outcome: str) -> None: ...

    def newest_stamp(self, key: bytes, excluding: int = 0) -> Stamp | None:
        """The largest stamp among the key's entries, leaving out the one at ``excluding``."""
        ...

    def key_entries(self, key: bytes) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """The entries a fold of ``key`` reads, and those stored but unreadable (with why)."""
        ...

    def entry_value(self, key: bytes, origin: str, seq: int) -> bytes | None:
        """The value of an entry of ``key`` a fold of it reads (a put's; None otherwise)."""
        ...

    def held_due(self, hlc_limit: int, limit: int) -> list[tuple[int, Entry]]:
        """Held entries stamped at or below ``hlc_limit``, as (ingest position, entry)."""
        ...

    def min_held_hlc(self) -> int | None: ...

    def add_quarantined(
        self, origin: str, seq: int, hlc: int, key: bytes, stage: str, reason: str,
        received_from: str | None, received_ms: int,
    ) -> None: ...

    # -- version vectors (each origin's entries held without gaps) ---------------------------

    def high_water(self, origin: str) -> int:
        """The highest seq of ``origin`` held here with none missing below it."""
        ...

    def vector(self) -> dict[str, int]:
        """``high_water`` of every origin known here."""
        ...

    def hold_pending(self, e: Entry, received_from: str, received_ms: int) -> bool:
        """Keep an entry that arrived before the ones below it (not applied, not forwarded)."""
        ...

    def take_pending(self, origin: str, seq: int) -> tuple[Entry, str] | None:
        """The kept entry at (origin, seq), taken out of the waiting ones, and its sender."""
        ...

    def drop_pending_through(self, origin: str, seq: int) -> None: ...

    def pending_count(self) -> int: ...

    def first_position(self, origin: str, after_seq: int) -> int | None:
        """The ingest position of ``origin``'s first entry above ``after_seq``."""
        ...

    def positions_after(self, cursor: int, limit: int) -> list[tuple[int, str, int]]:
        """Up to ``limit`` (ingest, origin, seq) after ``cursor``, in ingest order."""
        ...

    def entries_at(self, positions: list[int]) -> list[tuple[int, Entry]]: ...

    def max_ingest(self) -> int: ...

    def is_empty(self) -> bool: ...

    def prune(self, written_before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` entries no merge can need any more; how many went."""
        ...

    # -- this node's sequence and clock ------------------------------------------------------------

    def max_seq(self, origin: str) -> int: ...

    def set_local(self, origin: str, seq: int, hlc: int, head: bytes = b"") -> None: ...

    # -- signatures, chains, forks (shim.replication.signing) ---------------------------------

    def origin_head(self, origin: str) -> bytes:
        """The origin's chain at its high-water mark (``signing.NO_CHAIN``: none yet)."""
        ...

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every origin's high-water mark and the chain there (empty: none kept)."""
        ...

    def chain_at(self, origin: str, seq: int) -> bytes: ...

    def set_head_sig(self, origin: str, seq: int, sig: bytes) -> None:
        """Keep the origin's signature of its chain at ``seq`` with that entry."""
        ...

    def up_to_signed(self, origin: str, after_seq: int, limit: int) -> list[tuple[int, Entry]]:
        """``origin``'s entries after ``after_seq`` up to the first whose chain is signed
        (at most ``limit``), as (ingest position, entry)."""
        ...

    def stored(self, origin: str, seq: int) -> Entry | None: ...

    def unsigned_before(self) -> int:
        """Entries of origins without a key are accepted only stamped before this."""
        ...

    def add_fork(self, e: Entry, found_ms: int) -> bool: ...

    def forks(self) -> list[Entry]: ...

    def forked(self) -> dict[str, int]: ...

    def mark_forked(self, origin: str, seq: int, now_ms: int) -> None: ...

    def quarantine_from(self, origin: str, seq: int) -> list[bytes]: ...

    def name_origin(self, origin: str, node_id: str) -> None:
        """Record which node writes under ``origin``."""
        ...

    def max_hlc(self) -> int: ...

    def max_skewed_hlc(self) -> int: ...

    # -- tombstones --------------------------------------------------------------------------------

    def tombstones(self, key: bytes) -> set[str]: ...

    def add_tombstones(self, key: bytes, uids: set[str]) -> None: ...

    # -- peers -------------------------------------------------------------------------------------

    def peer(self, node_id: str) -> PeerRow | None: ...

    def peers(self) -> list[PeerRow]: ...

    def upsert_peer(
        self, node_id: str, name: str, address: str, role: str, now_ms: int
    ) -> None: ...

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
    ) -> None: ...

    def record_link(
        self, key: str, role: str, node_id: str, state: str, since_ms: int, failures: int,
        error: str, error_ms: int,
    ) -> int: ...


def tables(view: object) -> ReplicationTables:
    """The replication tables of a read view or write transaction of a backend that
    replicates (``Backend.replicates``)."""
    found = getattr(view, "replication", None)
    if found is None:
        raise TypeError(f"{type(view).__name__} keeps no replication tables")
    return cast(ReplicationTables, found)
