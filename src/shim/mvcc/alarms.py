"""etcd's alarms and backend quota, as the write path keeps them.

An alarm is (member id, type). NOSPACE is raised when a write would take the database past
``--quota-backend-bytes``; while it is active, writes that add data (Put, a Txn with a Put in
either branch at its top level, LeaseGrant) are refused, and deletes, lease revokes and
compaction still work, exactly as in etcd. CORRUPT refuses every write. Alarms are kept in the
database (``meta`` rows ``alarm:<member id>:<type>``), so they survive a restart, and end only
with ``alarm disarm`` (AlarmRequest DEACTIVATE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from shim.mvcc.errors import CorruptError, NoSpaceError
from shim.pb.rpc_pb2 import (
    AlarmType,
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RequestOp,
    TxnRequest,
)

log = logging.getLogger(__name__)

NOSPACE = AlarmType.Value("NOSPACE")
CORRUPT = AlarmType.Value("CORRUPT")
# What the operator is told when the database reports damage (a read's or a write's).
DAMAGED = ("the database is damaged (%s): alarm CORRUPT raised, writes are refused until it "
           "is disarmed; bring the node back from a snapshot (shim snapshot restore)")

DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default --quota-backend-bytes
MAX_SUGGESTED_QUOTA_BYTES = 8 * 1024**3  # etcd warns above this
# etcd's estimates of what a write adds to the database beyond its key and value.
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64

Alarm = tuple[int, int]  # (member id, AlarmType)

# What CORRUPT refuses (etcd's corrupt applier); reads and read-only Txns never get here.
_CORRUPT_REFUSES = (
    PutRequest, DeleteRangeRequest, TxnRequest, CompactionRequest, LeaseGrantRequest,
    LeaseRevokeRequest,
)


def member_id_of(node_id: str) -> int:
    """The etcd member id of a node: the low 64 bits of its 128-bit node id (hex)."""
    return int(node_id, 16) & 0xFFFF_FFFF_FFFF_FFFF


def _put_cost(op: RequestOp) -> int:
    if not op.HasField("request_put"):
        return 0  # etcd counts only the Txn's own puts, not those of nested Txns
    put = op.request_put
    return KV_OVERHEAD + len(put.key) + len(put.value)


def quota_cost(request: object) -> int:
    """Bytes etcd expects a request to add (0: it adds nothing, never refused for space)."""
    if isinstance(request, PutRequest):
        return KV_OVERHEAD + len(request.key) + len(request.value)
    if isinstance(request, TxnRequest):
        return max(
            sum(_put_cost(op) for op in request.success),
            sum(_put_cost(op) for op in request.failure),
        )
    if isinstance(request, LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


class AlarmState:
    """The active alarms and the quota, on the write path (the writer thread's copy)."""

    def __init__(self, member_id: int, active: Iterable[Alarm], quota_bytes: int) -> None:
        self.member_id = member_id
        self.active: set[Alarm] = set(active)
        # <= 0: no quota (etcd disables it for a negative --quota-backend-bytes).
        self.quota_bytes = quota_bytes
        # NOSPACE alarms raised by refused writes, to be stored with the batch.
        self.raised: list[Alarm] = []

    def has(self, kind: int) -> bool:
        return any(alarm[1] == kind for alarm in self.active)

    def reload(self, active: Iterable[Alarm]) -> None:
        """The alarms as stored, plus those raised and not stored yet."""
        self.active = set(active) | set(self.raised)

    def check(self, request: object, database_size: Callable[[], int]) -> None:
        """Refuse ``request`` as etcd would under the active alarms, or raise NOSPACE (and
        refuse it) when it would take the database to the quota."""
        if isinstance(request, _CORRUPT_REFUSES) and self.has(CORRUPT):
            raise CorruptError()
        cost = quota_cost(request)
        if cost == 0:
            return
        if self.has(NOSPACE):
            raise NoSpaceError()
        if self.quota_bytes > 0 and database_size() + cost >= self.quota_bytes:
            alarm = (self.member_id, NOSPACE)
            self.active.add(alarm)
            self.raised.append(alarm)
            log.warning(
                "alarm NOSPACE raised: the database would pass --quota-backend-bytes (%d); "
                "compact, defragment and disarm the alarm to write again", self.quota_bytes,
            )
            raise NoSpaceError()
