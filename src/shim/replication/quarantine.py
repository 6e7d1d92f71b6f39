"""Entries set apart: refused on arrival, or stored but impossible to apply.

No entry may stop a link or a key. An entry a peer sends that fails the ingest checks
(``shim.replication.admission``) is refused whole and never stored; an entry that was stored but
cannot be folded into its key (the fold raised: written by an older version before the checks
existed, or a case the checks miss) is set apart (outcome ``quarantined``): every later fold
of its key leaves it out, so the key and its link go on. Either way the entry is recorded in
``repl_quarantine`` (``shim status`` counts them and shows the latest reasons, the
``replication_quarantine`` view lists them), counted by the metric
``shim_replication_quarantined_total`` and logged once.

``quarantine(repl, entry, reason)`` is the one way in, for any reason an entry must be kept
out of the merge (a malformed entry, a policy violation, an equivocating origin).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shim.replication.entry import Entry
    from shim.replication.tables import ReplicationTables

log = logging.getLogger(__name__)

# Where an entry was stopped: "ingest" (refused on arrival, not stored, not forwarded),
# "fold" (stored and forwarded, left out of every fold of its key).
INGEST = "ingest"
FOLD = "fold"
# The outcome of a stored entry that is set apart.
OUTCOME = "quarantined"
_MAX_SHOWN_KEY = 120


@dataclass(frozen=True, slots=True)
class Refusal:
    """An entry refused on arrival: what identifies it (as the peer sent it) and why."""

    origin: str
    seq: int
    hlc: int
    key: bytes
    reason: str
    # Its place in its origin's sequence (a stub) when its origin really wrote it (the
    # signature verifies, or a legacy origin), so the origin's later entries need not wait.
    place: Entry | None = None


def quarantine(
    repl: ReplicationTables,
    entry: Entry | Refusal,
    reason: str,
    *,
    peer: str | None = None,
    stored: bool = False,
) -> None:
    """Record ``entry`` as set apart for ``reason``. ``stored``: it is in ``repl_entry``
    (it stays there, so it is still forwarded and recognised as a duplicate, but no fold
    reads it again); otherwise it was refused on arrival from ``peer``."""
    stage = FOLD if stored else INGEST
    if stored:
        repl.set_outcome_of(entry.origin, entry.seq, OUTCOME)
    repl.add_quarantined(
        entry.origin, entry.seq, entry.hlc, entry.key, stage, reason, peer,
        time.time_ns() // 1_000_000,
    )
    log.warning(
        "entry %s/%d of key %s %s: %s",
        entry.origin, entry.seq, _show(entry.key),
        "set apart (its key goes on without it)" if stored else f"refused from {peer}",
        reason,
    )


def _show(key: bytes) -> str:
    text = repr(key)
    return text if len(text) <= _MAX_SHOWN_KEY else text[:_MAX_SHOWN_KEY] + "..."
