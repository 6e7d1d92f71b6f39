"""A Deployment stored as protobuf (kube-apiserver's default) edited at two sites across a cut
link: real `shim serve` processes, real gRPC links, values written through the etcd API as
kube-apiserver writes them (``k8s\\0`` + runtime.Unknown, built by Google's protobuf runtime).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from shim.pb import replication_pb2 as repl_pb
from shim.pb import replication_pb2_grpc
from shim.replication.policy import Policy
from shim.replication.wire import PROTOCOL
from tests.support import ShimServer, k8s_pb
from tests.support.k8s_pb import condition, edited
from tests.support.replication import (
    TOKEN,
    get,
    log_count,
    node_args,
    put,
    reload_topology,
    sql,
    url,
    wait_converged,
    wait_for,
    write_topology,
)

Factory = Callable[..., ShimServer]
KEY = b"/registry/deployments/default/web"


def read(server: ShimServer) -> Any:
    value = get(server.endpoint, KEY)
    assert value is not None, f"{KEY!r} missing on {server.name}"
    return k8s_pb.parse(value, "Deployment")


def scale(d: Any) -> None:
    d.spec.replicas = 5
    d.metadata.generation += 1


def label_and_condition(d: Any) -> None:
    d.metadata.labels["site"] = "edge-2"
    d.status.conditions.append(condition("Available", "True"))


def test_a_protobuf_deployment_edited_at_two_sites_keeps_all_three_edits(
    shim_factory: Factory, tmp_path: Path
) -> None:
    hub = shim_factory(extra_args=node_args("hub"))
    topology = tmp_path / "topology.json"
    link = {"url": url(hub), "token": TOKEN}
    write_topology(topology, link)
    edge = shim_factory(extra_args=node_args("edge", admit=False,
                                             extra=["--topology", str(topology)]))
    other = shim_factory(extra_args=node_args("other", admit=False, joins=[hub]))
    nodes = [hub, edge, other]

    base = k8s_pb.deployment()
    put(hub.endpoint, KEY, k8s_pb.stored(base))
    wait_converged(nodes, prefix=b"/registry/", expect=lambda s: KEY in s)

    removed = log_count(edge, f"link to {url(hub)} removed")
    reload_topology(edge, topology)  # cut the edge off
    wait_for(lambda: log_count(edge, f"link to {url(hub)} removed"), lambda n: n > removed,
             "the edge to drop its link")

    # Each site reads what it has and writes the object back, as kube-apiserver does.
    put(hub.endpoint, KEY, k8s_pb.stored(edited(read(hub), scale)))
    put(edge.endpoint, KEY, k8s_pb.stored(edited(read(edge), label_and_condition)))
    assert read(edge).spec.replicas == 3 and "site" not in read(hub).metadata.labels

    reload_topology(edge, topology, link)  # heal
    want = k8s_pb.stored(edited(edited(base, scale), label_and_condition))
    final = wait_converged(nodes, prefix=b"/registry/", expect=lambda s: s.get(KEY, (b"",))[0]
                           == want)
    # Byte for byte what Go's marshaller (here: the protobuf runtime) writes for the object with
    # all three edits, on every node.
    assert final[KEY][0] == want
    merged = k8s_pb.parse(want, "Deployment")
    assert merged.spec.replicas == 5 and merged.metadata.generation == 2
    assert merged.metadata.labels["site"] == "edge-2"
    assert [c.type for c in merged.status.conditions] == ["Progressing", "Available"]
    for node in nodes:
        assert get(node.endpoint, KEY) == want

    # The edits travelled as field operations, not whole values (the README's query).
    rows = sql(edge, "SELECT kind, ops FROM replication_log WHERE received_from = 'local' "
                     "ORDER BY seq")
    assert [row["kind"] for row in rows] == ["fields"]
    assert {tuple(op[1]) for op in json.loads(rows[0]["ops"])} >= {
        ("metadata", "labels", "site"), ("status", "conditions")}


@pytest.mark.parametrize("old", [1, 2, PROTOCOL - 1])
def test_a_node_of_an_older_protocol_is_refused(shim_factory: Factory, old: int) -> None:
    """Protocol 1 nodes kept protobuf objects whole, protocol 2 nodes would take auth entries
    for keys, the one before this one does not know its newest operations (entries by
    reference in protocol 7): linked with them, nodes would not converge, so a link says why
    it is refused."""
    node = shim_factory(extra_args=node_args("n1"))
    hello = repl_pb.Hello(node_id="an-old-node", name="old", token=TOKEN, send=True,
                          receive=True, policy_digest=Policy.load().digest, protocol=old)
    with grpc.insecure_channel(node.endpoint) as channel:
        call = replication_pb2_grpc.ReplicationStub(channel).Link(
            iter([repl_pb.LinkMessage(hello=hello)]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            next(call)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == f"protocol {old} is not {PROTOCOL}"
