"""Version vectors on a link: what the peer holds, so an entry crosses each link at most once.

Every node holds each origin's entries without gaps (``high_water``: the highest seq held with
none missing below it; an entry further ahead waits until the ones before it arrive). The two
sides of a link tell each other their vectors in the handshake and as they advance (``Have``),
and each tells which origins reach it directly over a live link. A sender then sends an entry
only if the peer lacks it (its seq is above the peer's high-water mark for its origin) and does
not get it from its origin directly: in a full mesh each entry goes from its origin to each node
once, in a tree it is relayed, and when a direct link goes down the peer says so and the others
send what it lacks of that origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shim.pb import replication_pb2 as pb
from shim.replication.framing import check_numbers
from shim.replication.tables import ReplicationTables

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

    def lacks(self, origin: str, seq: int, sender: str) -> bool:
        """Whether ``sender`` (this node's origin) should send entry (origin, seq)."""
        if origin in self.resend:
            return True
        if seq <= self.vector.get(origin, 0):
            return False
        return origin == sender or origin not in self.direct

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

    def have(self, heads: Heads, direct: frozenset[str]) -> pb.Have | None:
        """The Have to send now (what advanced, and the direct origins), or None."""
        advanced = {o: h for o, h in heads.items() if h[0] > self.told.get(o, 0)}
        if not advanced and direct == self.direct:
            return None
        self.told.update({o: h[0] for o, h in advanced.items()})
        self.direct = direct
        return pb.Have(vector=to_wire(advanced), direct=sorted(direct))
