"""The write requests replication sends through the store's write path, and their answers.

The writer hands each one to the replica hook (``shim.replication.replica.Replica``) inside
its write transaction; ``shim.replication.ingest`` applies a peer's batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.mvcc.replica import ReplicaAnswer, ReplicaRequest
from shim.replication.entry import Entry
from shim.replication.quarantine import Refusal


@dataclass(slots=True)
class MergeRequest(ReplicaRequest):
    """A batch of entries from a peer, applied in one transaction with the peer's cursor."""

    peer: str
    entries: list[Entry]
    cursor: int  # the peer's ingest position this batch covers
    peer_high: int  # the peer's newest ingest position
    acked: int = 0  # the peer's confirmed position in our log (it applied up to there)
    # Entries of the batch the ingest checks refused (``admission.admit``), recorded with it.
    refused: list[Refusal] = field(default_factory=list)
    # Fold the keys that received late entries now (with those deferred before); False: a
    # part of a catch-up whose later part folds them (``ingest``: each such key once).
    fold: bool = True

    def writes(self) -> int:
        return len(self.entries)


@dataclass(slots=True)
class FoldDeferred(ReplicaRequest):
    """Fold the keys whose fold a catch-up deferred (its link ended, or the node stopped,
    between its parts); answers a ``MergeResult``."""

    peer: str | None = None  # whose catch-up (None: every peer's)


@dataclass(slots=True)
class PeerRecords(ReplicaRequest):
    """Peers' rows as their heartbeats left them (``MergeRequest``s without entries), for
    several links in one transaction; answers how many."""

    records: list[MergeRequest]


@dataclass(slots=True)
class PruneEntries(ReplicaRequest):
    """Retention: delete up to ``limit`` entries older than ``written_before_ms`` that no
    merge needs any more; answers how many went."""

    written_before_ms: int
    limit: int


@dataclass(slots=True)
class ReleaseHeld(ReplicaRequest):
    """Apply the held entries (stamped beyond the clock-skew bound) that the clock now
    reaches, up to ``limit``; answers a MergeResult (``received``: how many were released)."""

    limit: int


@dataclass(slots=True)
class PeerRegistration(ReplicaRequest):
    """A link came up: record the peer; answers with our cursor into its log."""

    peer: str
    name: str
    address: str
    role: str
    origin: str = ""  # what the peer writes under in this run


@dataclass(slots=True)
class MergeResult(ReplicaAnswer):
    received: int
    duplicates: int
    applied: int
    conflicts: int
    unchanged: int = 0
    held: int = 0  # stamped beyond the clock-skew bound: kept apart until the clock gets there
    quarantined: int = 0  # refused on arrival, or set apart by a fold
    waiting: int = 0  # kept apart until the entries before them (same origin) arrive
    forks: int = 0  # entries found signed twice with other content (equivocation)
    # Entries the ingest refused in the write (beyond the checks before it): answered to the
    # peer like those.
    refused: list[Refusal] = field(default_factory=list)
    conflict_rules: list[str] = field(default_factory=list)  # the rule of each conflict
    lag_ms: int | None = None  # origin write (newest entry) to applied here
