"""What one live link knows of its peer and of what it sent it: the state its sender and its
receiver share (``links.Replicator``, ``link_receiver.LinkReceiver``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shim.replication.framing import GRPC_DEFAULT_MESSAGE_BYTES
from shim.replication.vectors import Heads, PeerHolds, Teller


@dataclass(slots=True)
class LinkState:
    """A live link: the peer's node id and where it is (for logs; counted by metrics; listed
    by MemberList with the peer's name and client URLs: the ones the peer told in its Hello,
    else the one this node dialed)."""

    peer: str
    address: str
    name: str = ""
    client_urls: list[str] = field(default_factory=list)
    # The largest message the peer accepts (stated in its Hello).
    peer_max_message: int = GRPC_DEFAULT_MESSAGE_BYTES
    # The peer's position in its log that this node has durably applied: sent back as `acked`.
    applied: int = 0
    peer_high: int = 0  # the peer's newest log position it told us
    peer_origin: str = ""  # what the peer writes its entries under in this run
    peer_heads: Heads = field(default_factory=dict)  # the vector of its Hello, with chains
    # What the peer holds (its version vector), and what we told it of ours.
    holds: PeerHolds = field(default_factory=PeerHolds)
    teller: Teller = field(default_factory=Teller)
    # Set to make this link's sender look again (entries committed, or the peer's Have).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Runs (``runs``): per origin, the last entry this side sent on this link, and the last
    # one it accepted with the chain there: a run that goes on from it needs no chain sent.
    sent_runs: dict[str, int] = field(default_factory=dict)
    received_runs: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # The peer's registration (``Replicator._register``): awaited before the first merge.
    registered: asyncio.Future[int] | None = None
    # Ends the link's settling (``vectors.SETTLE_SECONDS``) if the peer does not first.
    settle_timer: asyncio.TimerHandle | None = None
