"""Key permissions as etcd 3.5 checks them: intervals of keys, merged over a user's roles.

A permission covers one key (``range_end`` empty), the keys in ``[key, range_end)``, or every
key from ``key`` on (``range_end`` = "\\0"). A request for one key needs an interval holding
that key; a request for a range needs the union of the user's intervals to cover all of it,
without a gap (etcd's ``IntervalTree.Contains``). Ends compare as etcd's
``BytesAffineComparable``: the empty end is larger than every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.pb.auth_pb2 import Permission

READ = Permission.READ
WRITE = Permission.WRITE
READWRITE = Permission.READWRITE

# An end that is empty stands for "past every key".
_INFINITY = (1, b"")


def _bound(key: bytes) -> tuple[int, bytes]:
    """A key or end as a sortable bound; the empty one is larger than every key."""
    return _INFINITY if not key else (0, key)


@dataclass(frozen=True, slots=True)
class Interval:
    begin: tuple[int, bytes]
    end: tuple[int, bytes]

    @classmethod
    def of(cls, key: bytes, end: bytes) -> Interval:
        return cls(_bound(key), _bound(end))

    @classmethod
    def point(cls, key: bytes) -> Interval:
        # etcd's point [key, key + "\0")
        return cls(_bound(key), _bound(key + b"\x00"))

    def overlaps(self, other: Interval) -> bool:
        # etcd's Interval.Compare == 0: neither lies wholly left nor wholly right of the other.
        left = self.begin < other.begin and self.end <= other.begin
        right = self.begin >= other.end
        return not left and not right


def interval_of(perm: Permission) -> Interval:
    """The keys one granted permission covers."""
    if not perm.range_end:
        return Interval.point(perm.key)
    end = b"" if perm.range_end == b"\x00" else perm.range_end
    return Interval.of(perm.key, end)


def is_valid_range(key: bytes, range_end: bytes) -> bool:
    """What etcd (3.5.x, since 3.5.5) accepts as a permission's range."""
    if not key:
        return False
    if not range_end or range_end == b"\x00":
        return True
    return key < range_end


@dataclass(slots=True)
class KeyPermissions:
    """The read and write intervals one user holds through all of its roles."""

    read: list[Interval] = field(default_factory=list)
    write: list[Interval] = field(default_factory=list)

    @classmethod
    def merge(cls, permissions: list[Permission]) -> KeyPermissions:
        merged = cls()
        for perm in permissions:
            interval = interval_of(perm)
            if perm.permType in (READ, READWRITE):
                merged.read.append(interval)
            if perm.permType in (WRITE, READWRITE):
                merged.write.append(interval)
        merged.read.sort(key=lambda i: (i.begin, i.end))
        merged.write.sort(key=lambda i: (i.begin, i.end))
        return merged

    def allows(self, key: bytes, range_end: bytes, write: bool) -> bool:
        """Whether the user may read (or write) ``key``, or ``[key, range_end)`` when
        ``range_end`` is given ("\\0": from ``key`` on)."""
        intervals = self.write if write else self.read
        if not range_end:
            point = Interval.point(key)
            return any(point.overlaps(i) for i in intervals)
        wanted = Interval.of(key, b"" if range_end == b"\x00" else range_end)
        return _covers(intervals, wanted)


def _covers(intervals: list[Interval], wanted: Interval) -> bool:
    """etcd's IntervalTree.Contains: the intervals overlapping ``wanted``, in order of their
    beginnings, join without a gap and reach from its beginning to its end."""
    begin: tuple[int, bytes] | None = None
    end: tuple[int, bytes] = _INFINITY
    for interval in intervals:
        if not interval.overlaps(wanted):
            continue
        if begin is None:
            begin, end = interval.begin, interval.end
            continue
        if end < interval.begin:
            return False
        end = max(end, interval.end)
    return begin is not None and end >= wanted.end and begin <= wanted.begin
