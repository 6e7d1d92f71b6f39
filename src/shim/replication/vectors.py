"""Version vectors on a link: what the peer holds, so an entry crosses each link at most once.

Every node holds each origin's entries without gaps (``high_water``: the highest seq held with
none missing below it; an entry further ahead waits until the ones before it arrive). The two
sides of a link tell each other their vectors in the handshake and as they advance (``Have``),
and each tells which origins reach it directly over a live link. A sender then sends an entry
only if the peer lacks it (its seq is above the peer's high-water mark for its origin) and does
not get it from its origin directly: in a full mesh each entry goes from its origin to each node
once, in a tree it is relayed, and when a direct link goes down the peer says so and the others
send what it lacks of that origin.

Right after a link starts, the peer may be linking to other origins too (after a heal a node
dials all its peers at once, and the links come up milliseconds to a second apart). While it
says so (``linking``), relayed entries wait, at most ``SETTLE_SECONDS``: the origin itself is
about to send them, and a relay sent meanwhile would cross the link for nothing. Likewise this
node holds back relaying a linking peer's own entries to others. The relays go as soon as the
peer says its links are up (or the wait ends): a peer that cannot reach an origin directly
still gets its entries through this node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shim.pb import replication_pb2 as pb
from shim.replication.framing import check_numbers
from shim.replication.tables import ReplicationTables

# How long at most relays wait after a link starts while the peer is linking: its other
# dials are retried every quarter second (``redial``), so one that takes longer is unreachable
# or busy, and relaying beats waiting.
SETTLE_SECONDS = 1.0

# Per origin: the high-water mark and the origin's hash chain there (empty: none kept).
Heads = dict[str, tuple[int, bytes]]


def to_wire(heads: Heads) -> list[pb.OriginSeq]:
    return [pb.OriginSeq(origin=origin, seq=seq, head=head)
            for origin, (seq, head) in sorted(heads.items())]


def from_wire(items: Iterable[pb.OriginSeq]) -> Heads:
    """A vector the peer sent; positions beyond what the tables hold refuse the link
    (``framing.OutOfRange``)."""
    heads: Heads = {}
    for item in items:
        check_numbers("a version vector", seq=item.seq)
        if item.seq >= heads.get(item.origin, (0, b""))[0]:
            heads[item.origin] = (item.seq, bytes(item.head))
    return heads


def diverging(repl: ReplicationTables, heads: Heads) -> list[str]:
    """Origins whose chain here differs from the peer's at a seq both hold: the two nodes hold
    different entries under one (origin, seq), and each must show the other its own. Origins
    already known to equivocate are left alone."""
    forked = repl.forked()
    found = []
    for origin, (seq, head) in heads.items():
        if not head or not seq or origin in forked or seq > repl.high_water(origin):
            continue
        mine = repl.chain_at(origin, seq)
        if mine and mine != head:
            found.append(origin)
    return found


@dataclass(slots=True)
class PeerHolds:
    """What this node knows the peer holds: its vector (raised by what it says and by what
    either side sends the other) and the origins that reach it directly."""

    vector: dict[str, int] = field(default_factory=dict)
    direct: frozenset[str] = frozenset()
    # Set when the peer stopped getting an origin directly, or holds other entries of an
    # origin: the sender looks back for what it should send.
    rewind: bool = False
    # Origins whose entries the peer gets all of again: it holds other entries under the
    # same seqs (it finds the equivocation by comparing them).
    resend: set[str] = field(default_factory=set)
    # The link is young and the peer is linking to other origins: relays wait (``settle``).
    settling: bool = False
    # Origins whose relay waits at this node: linking peers of this node's (set by the sender).
    waiting: frozenset[str] = frozenset()

    def lacks(self, origin: str, seq: int, sender: str) -> bool:
        """Whether ``sender`` (this node's origin) should send entry (origin, seq)."""
        if origin in self.resend:
            return True
        if seq <= self.vector.get(origin, 0):
            return False
        if origin == sender:
            return True
        return origin not in self.direct and not self.settling and origin not in self.waiting

    def settle(self) -> None:
        """Relays go from now on: the sender looks back for what it held back."""
        self.settling = False
        self.rewind = True

    def has(self, origin: str, seq: int) -> None:
        if seq > self.vector.get(origin, 0):
            self.vector[origin] = seq

    def learn(self, vector: dict[str, int], direct: frozenset[str]) -> None:
        for origin, seq in vector.items():
            self.has(origin, seq)
        if self.direct - direct:
            self.rewind = True
        self.direct = direct

    def diverged(self, origins: list[str]) -> None:
        if set(origins) - self.resend:
            self.resend.update(origins)
            self.rewind = True

    def first_lacking(self, repl: ReplicationTables, sender: str) -> int | None:
        """The ingest position of the first entry the peer lacks (None: none)."""
        first: int | None = None
        for origin, seq in repl.vector().items():
            if not self.lacks(origin, seq, sender):
                continue
            after = 0 if origin in self.resend else self.vector.get(origin, 0)
            position = repl.first_position(origin, after)
            if position is not None and (first is None or position < first):
                first = position
        return first


@dataclass(slots=True)
class Teller:
    """What this node has told the peer of its own vector and direct origins."""

    told: dict[str, int] = field(default_factory=dict)
    direct: frozenset[str] | None = None
    linking: bool | None = None

    def have(self, heads: Heads, direct: frozenset[str], linking: bool) -> pb.Have | None:
        """The Have to send now (what advanced, the direct origins, whether this node is
        linking), or None."""
        advanced = {o: h for o, h in heads.items() if h[0] > self.told.get(o, 0)}
        if not advanced and direct == self.direct and linking == self.linking:
            return None
        self.told.update({o: h[0] for o, h in advanced.items()})
        self.direct, self.linking = direct, linking
        return pb.Have(vector=to_wire(advanced), direct=sorted(direct), linking=linking)
