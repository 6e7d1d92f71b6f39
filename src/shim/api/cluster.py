"""etcdserverpb.Cluster: MemberList lists this node and the replicas it is linked to.

Membership is not changed through this API: a node joins by dialing another (``--join``) or by
a link in ``--topology``, and leaves by no longer being linked. MemberAdd, and MemberRemove or
MemberUpdate of a listed member, answer FAILED_PRECONDITION saying so. An id that is not listed
gets etcd's NOT_FOUND, and promoting a listed member etcd's answer for a member that is not a
learner (no shim node is one), so clients that check those codes see what etcd would send.

A member's peer URLs are where its peers reach it. Links ride a node's client port (the Link
service is served beside the etcd services), so a shim node's peer URLs are its client URLs:
this node's own (``--advertise-client-urls``, else the address it bound), and a replica's as
it told them in its Hello (else the URL this node dialed). etcd lists peer URLs for every
member, and clients rely on the field being there (etcd3gw's ``members()`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from shim.api.errors import RequestError, grpc_errors
from shim.api.header import Identity
from shim.auth.guard import Guard, Rule, permission
from shim.mvcc.alarms import member_id_of
from shim.mvcc.store import Store
from shim.pb import rpc_pb2, rpc_pb2_grpc

MEMBERSHIP_BY_LINKS = (
    "shim: members are not {} through the Cluster API: a node joins a replica set by "
    "dialing one of its nodes (shim serve --join URL) or through a link in --topology FILE, "
    "and leaves it when no link names it any more"
)


@dataclass(frozen=True, slots=True)
class Replica:
    """A node this one is linked to."""

    node_id: str
    name: str
    client_urls: tuple[str, ...]  # the ones the peer told, else the URL this node dialed


MEMBER_NOT_FOUND = "etcdserver: member not found"
MEMBER_NOT_LEARNER = "etcdserver: can only promote a learner member"


def _refuse(what: str) -> RequestError:
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, MEMBERSHIP_BY_LINKS.format(what))


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(
        self,
        store: Store,
        identity: Identity,
        name: str,
        client_urls: Callable[[], list[str]],
        guard: Guard,
        replicas: Callable[[], list[Replica]] = list,
    ) -> None:
        self.guard = guard
        self._store = store
        self._identity = identity
        self._name = name
        self._client_urls = client_urls
        self._replicas = replicas

    def _members(self) -> dict[int, rpc_pb2.Member]:
        """This node and the replicas it is linked to, by member id."""
        own_urls = self._client_urls()
        members = {
            self._identity.member_id: rpc_pb2.Member(
                ID=self._identity.member_id, name=self._name, peerURLs=own_urls,
                clientURLs=own_urls,
            )
        }
        for replica in self._replicas():
            member_id = member_id_of(replica.node_id)
            known = members.get(member_id)
            if known is None:
                known = members[member_id] = rpc_pb2.Member(ID=member_id, name=replica.name)
            for url in replica.client_urls:
                if url not in known.clientURLs:
                    known.clientURLs.append(url)
                if url not in known.peerURLs:
                    known.peerURLs.append(url)
        return members

    def _listed(self, member_id: int) -> None:
        if member_id not in self._members():
            raise RequestError(grpc.StatusCode.NOT_FOUND, MEMBER_NOT_FOUND)

    @grpc_errors
    @permission(Rule.OPEN)
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        members = self._members()
        resp = rpc_pb2.MemberListResponse()
        resp.members.extend(members[key] for key in sorted(members))  # by ID, as etcd
        self._identity.fill(resp.header)
        return resp

    @grpc_errors
    @permission(Rule.ADMIN)
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        raise _refuse("added")

    @grpc_errors
    @permission(Rule.ADMIN)
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        self._listed(request.ID)
        raise _refuse("removed")

    @grpc_errors
    @permission(Rule.ADMIN)
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        self._listed(request.ID)
        raise _refuse("updated")

    @grpc_errors
    @permission(Rule.ADMIN)
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        self._listed(request.ID)
        # Every shim node is a voting member that takes writes: none is a learner.
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, MEMBER_NOT_LEARNER)
