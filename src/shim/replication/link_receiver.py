"""A link's receiving side: it reads the peer's messages, checks each batch's entries in a
thread while the batches before it merge, and merges what arrived meanwhile together (in
parts of at most ``MERGE_PART`` entries), with the peer's cursor, in one transaction. The
peer's Have (what it holds) goes back to the ``Replicator``, whose senders act on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shim.mvcc.store import Store
from shim.pb import replication_pb2 as pb
from shim.replication.admission import BadBatch, IngestLimits, admit_batch, check_batch
from shim.replication.entry import Entry
from shim.replication.heartbeat_records import HeartbeatRecorder
from shim.replication.ingest import fold_deferred, merge
from shim.replication.link_stream import (
    HEARTBEAT_SECONDS,
    SILENCE_SECONDS,
    LinkRefused,
    LinkStream,
    check_link_numbers,
)
from shim.replication.live_link import LinkState
from shim.replication.quarantine import Refusal
from shim.replication.requests import MergeRequest
from shim.replication.resolve import Replica
from shim.replication.tables import tables
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Batches read ahead while a merge commits (each at most what this node accepts in a message).
INBOX_BATCHES = 8
# Entries merged in one transaction at most (a larger batch is merged in parts): a catch-up
# is merged in parts, so this node's own writes wait for one part at most, never all of it.
MERGE_PART = 200
# Keys that received late entries are folded again once the batches waiting are merged, or
# after this many entries if more keep coming (one fold for a key's late entries of many
# parts: folding at every part would fold a long history again and again).
MERGE_ENTRIES = 5000
# An idle link still records "last seen" (shim status) this often.
PEER_RECORD_SECONDS = 10.0


@dataclass(slots=True)
class _Arrived:
    """A peer's batch as the reader hands it on: its entries checked, admitted or refused."""

    batch: pb.Batch
    entries: list[Entry]
    refused: list[Refusal]


class LinkReceiver:
    """Receives on every live link of this node (each link's own state is its ``LinkState``).
    ``heard`` takes a peer's Have; ``wake_senders`` wakes this node's senders (a merge found
    forks, whose proof goes to every peer)."""

    def __init__(
        self,
        store: Store,
        replica: Replica,
        limits: IngestLimits,
        peer_rows: HeartbeatRecorder,
        heard: Callable[[LinkState, pb.Have], Awaitable[None]],
        wake_senders: Callable[[], None],
    ) -> None:
        self._store = store
        self._replica = replica
        # Entries from peers respect the client API's limits.
        self._limits = limits
        # Peers' rows as heartbeats leave them, one transaction for all links.
        self._peer_rows = peer_rows
        self._heard = heard
        self._wake_senders = wake_senders

    async def run(self, stream: LinkStream, state: LinkState, receive: bool) -> None:
        """Read the peer's messages and apply them, reading ahead while a merge commits: the
        batches that arrived meanwhile are merged together, in one transaction (bigger
        batches under load, one fsync for all). The inbox is bounded, so a receiver that
        cannot keep up holds the sender back through gRPC's flow control."""
        inbox: asyncio.Queue[_Arrived | Exception | None] = asyncio.Queue(INBOX_BATCHES)
        reader = asyncio.ensure_future(self._read(stream, state, inbox, receive))
        try:
            await self._apply(stream, state, inbox, receive)
        finally:
            await cancel_and_wait(reader, timeout=1.0, log_errors=False)

    async def _read(
        self, stream: LinkStream, state: LinkState,
        inbox: asyncio.Queue[_Arrived | Exception | None], receive: bool,
    ) -> None:
        try:
            while True:
                msg = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
                if msg is None:
                    break
                kind = msg.WhichOneof("kind")
                if kind == "refused":
                    notice = msg.refused
                    log.warning("node %s refused entry %s/%d: %s",
                                state.peer, notice.origin, notice.seq, notice.reason)
                    continue
                if kind == "have":
                    await self._heard(state, msg.have)
                    continue
                if kind != "batch":
                    continue
                batch = msg.batch
                check_link_numbers(f"a batch from node {state.peer}", cursor=batch.cursor,
                               high=batch.high, hlc=batch.hlc, acked=batch.acked)
                try:
                    check_batch(batch)
                except BadBatch as exc:
                    raise LinkRefused(f"node {state.peer} sent a bad batch: {exc}") from exc
                for sent in batch.entries:  # the peer holds what it sends: never send it back
                    state.holds.has(sent.origin, sent.seq)
                await inbox.put(await self._checked(batch, receive, state))
        except Exception as exc:  # raised by the applier, after what arrived before it
            await inbox.put(exc)
            return
        await inbox.put(None)

    async def _checked(self, batch: pb.Batch, receive: bool, state: LinkState) -> _Arrived:
        """The batch with its entries checked (``admission.admit``). Checking signatures takes
        CPU (about 100 us an entry, with the GIL released): in a thread, while the applier
        merges the batches before it, so on two cores the check and the merge overlap."""
        if not receive or not batch.entries:
            return _Arrived(batch, [], [])
        if self._limits.unsigned_before is None:
            bound = await self._store.read(lambda view: tables(view).unsigned_before())
            self._limits = dataclasses.replace(self._limits, unsigned_before=bound)
        entries, refused = await asyncio.to_thread(
            admit_batch, list(batch.entries), self._replica.policy, self._limits,
            state.received_runs)
        return _Arrived(batch, entries, refused)

    async def _apply(
        self, stream: LinkStream, state: LinkState,
        inbox: asyncio.Queue[_Arrived | Exception | None], receive: bool,
    ) -> None:
        """Apply the peer's batches, and record what it says (its cursor and newest position,
        and how far it applied ours) in its peer row: with every batch of entries, and for
        heartbeats when something changed (at most once a heartbeat) or every
        PEER_RECORD_SECONDS (last seen)."""
        last: tuple[int, int, int] | None = None
        recorded = 0.0  # when the peer's row was last written
        ended = False
        unfolded = 0  # entries merged since late keys were last folded (none: no fold due)
        while not ended:
            item = await inbox.get()
            arrived: list[_Arrived] = []
            entries = 0
            failed = False
            while True:
                if isinstance(item, Exception):
                    if arrived:
                        inbox.put_nowait(item)  # after merging what came before (room: taken)
                        failed = True
                    break
                if item is None:
                    ended = True
                    break
                arrived.append(item)
                entries += len(item.batch.entries)
                if entries >= MERGE_PART or inbox.empty():
                    break
                item = inbox.get_nowait()
            if not arrived:  # the link ended or failed: fold what its catch-up deferred
                if unfolded:
                    await fold_deferred(self._store, state.peer)
                if isinstance(item, Exception):
                    raise item
                return
            newest = arrived[-1].batch
            acked = max(a.batch.acked for a in arrived)
            merged = [e for a in arrived for e in a.entries]
            refused = [r for a in arrived for r in a.refused]
            if receive:
                cursor, high = newest.cursor, newest.high
            else:  # the link's other direction only: heartbeats of a receive-only peer
                cursor, high = state.applied, state.peer_high
            known = (cursor, high, acked)
            # Late keys are folded once the peer has sent all it had (its catch-up's last
            # part), or once many entries wait, or when the link ends.
            fold = (
                ended or failed or (cursor >= high and inbox.empty())
                or unfolded + len(merged) >= MERGE_ENTRIES
            )
            due = fold and unfolded > 0  # a fold the parts merged so far left to this one
            since = time.monotonic() - recorded
            if not (merged or refused or due) and since < PEER_RECORD_SECONDS and (
                known == last or since < HEARTBEAT_SECONDS
            ):
                continue  # heartbeats with nothing new to record yet
            if state.registered is not None:
                await state.registered  # its failure ends the link, as it did the handshake
                state.registered = None
            # A batch larger than a part: its parts but the last are merged first, with the
            # cursor left where it was (a stop between them resends the batch; entries this
            # node holds are skipped) and their late keys' fold left to the last part.
            while len(merged) > MERGE_PART:
                part, merged = merged[:MERGE_PART], merged[MERGE_PART:]
                await self._merge(stream, MergeRequest(
                    state.peer, part, state.applied, state.peer_high, acked, fold=False
                ))
                unfolded += len(part)
            unfolded = 0 if fold else unfolded + len(merged)
            request = MergeRequest(state.peer, merged, cursor, high, acked, refused, fold)
            if not (merged or refused or due):
                # Bookkeeping only: written together with the other links' rows.
                self._peer_rows.note(request)
                state.applied, state.peer_high = cursor, high
                last, recorded = known, time.monotonic()
                continue
            self._peer_rows.forget(state.peer)
            await self._merge(stream, request)
            state.applied, state.peer_high = cursor, high
            last, recorded = known, time.monotonic()

    async def _merge(self, stream: LinkStream, request: MergeRequest) -> None:
        """Merge ``request``, then tell the peer which of its entries were refused."""
        result = await merge(self._store, request)
        if result.forks:
            # Counted once committed: a sender that saw the count move before the commit
            # would read no proof, and never look again.
            self._replica.forks_found += result.forks
            self._wake_senders()
        for refusal in [*request.refused, *result.refused]:  # recorded here; the sender logs it
            await stream.send(pb.LinkMessage(refused=pb.Refused(
                origin=refusal.origin, seq=refusal.seq, reason=refusal.reason
            )))
