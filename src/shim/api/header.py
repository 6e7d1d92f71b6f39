"""The identity fields of every response header (cluster, member, raft term)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shim.backend.kv_wire import field
from shim.etcd_version import RAFT_TERM
from shim.mvcc.alarms import member_id_of
from shim.pb.rpc_pb2 import ResponseHeader

_HEADER = b"\x0a"  # every etcd response carries its header as field 1


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: int
    member_id: int

    @classmethod
    def from_node_id(cls, node_id: str) -> Identity:
        # etcd ids are uint64; derive stable ones from the node id kept in the database.
        raw = int(node_id, 16)
        mask = 0xFFFF_FFFF_FFFF_FFFF
        return cls(cluster_id=(raw >> 64) & mask, member_id=member_id_of(node_id))

    def fill(self, header: ResponseHeader) -> None:
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = RAFT_TERM

    def header_field(self, revision: int) -> bytes:
        """A response's header at ``revision``, encoded as its field 1."""
        return _header_field(self.cluster_id, self.member_id, revision)


# Reads between two commits all carry the same header: encode it once.
@functools.lru_cache(maxsize=8)
def _header_field(cluster_id: int, member_id: int, revision: int) -> bytes:
    header = ResponseHeader(
        cluster_id=cluster_id, member_id=member_id, revision=revision, raft_term=RAFT_TERM
    )
    return field(_HEADER, header.SerializeToString())
