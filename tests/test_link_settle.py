"""Relays right after links start (issue 14, "no duplicate forwarding"): a node that comes back
and links all its peers at once gets each entry once, from its origin, and not again relayed
by a peer whose own link came up a moment earlier; a node whose other dial never links still
gets everything through the peer it reaches."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from shim.pb import rpc_pb2 as pb
from shim.replication.vectors import SETTLE_SECONDS
from tests.support import ShimServer, free_port
from tests.support.client import Client
from tests.support.metrics import scrape
from tests.support.replication import (
    TOKEN,
    node_args,
    reload_topology,
    url,
    wait_converged,
)

Factory = Callable[..., ShimServer]
_LINKED = re.compile(r"^(\S+ \S+) \S+ shim\.replication\.links: linked to ", re.MULTILINE)


def put_many(endpoint: str, prefix: bytes, count: int) -> None:
    with Client(endpoint) as client:
        for start in range(0, count, 50):
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"%04d" % i,
                                                          value=b"v" * 256))
                   for i in range(start, min(count, start + 50))]
            assert client.kv.Txn(pb.TxnRequest(success=ops), timeout=30).succeeded


def duplicates(metrics: str) -> int:
    """Entries this node received that it held already."""
    return int(sum(value for name, value in scrape(metrics).items()
                   if name.startswith("shim_replication_entries_total{")
                   and 'outcome="duplicate"' in name))


def linked_at(server: ShimServer) -> list[datetime.datetime]:
    """When the node's dialed links came up, from its log."""
    text = server.log_path.read_text(errors="replace")
    return [datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
            for stamp in _LINKED.findall(text)]


def test_a_node_linking_all_its_peers_at_once_gets_each_entry_once(
    shim_factory: Factory, tmp_path: Path
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    topology = tmp_path / "topology.json"
    links = [{"url": url(n), "token": TOKEN} for n in (n1, n2)]
    reload_args = ["--topology", str(topology)]
    topology.write_text("{\"links\": []}")
    metrics = f"127.0.0.1:{free_port()}"
    n3 = shim_factory(extra_args=node_args("n3", extra=[*reload_args, "--metrics-address",
                                                         metrics]))
    # n1 and n2 write while n3 is away; each holds the other's entries when n3 comes.
    put_many(n1.endpoint, b"/settle/n1/", 300)
    put_many(n2.endpoint, b"/settle/n2/", 300)
    put_many(n3.endpoint, b"/settle/n3/", 300)
    wait_converged([n1, n2], prefix=b"/settle/", expect=lambda s: len(s) == 600)
    before = duplicates(metrics)

    reload_topology(n3, topology, *links)  # both dials start at once
    wait_converged([n1, n2, n3], prefix=b"/settle/", expect=lambda s: len(s) == 900)

    up = linked_at(n3)
    assert len(up) == 2, up
    spread = abs((up[1] - up[0]).total_seconds())
    if spread >= SETTLE_SECONDS:  # the relays went after waiting: duplicates are expected
        pytest.skip(f"n3's links came up {spread:.2f}s apart (machine too busy)")
    assert duplicates(metrics) - before == 0


def test_a_node_whose_other_dial_never_links_gets_entries_relayed(
    shim_factory: Factory,
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: n3 stays linking
    n3 = shim_factory(extra_args=node_args("n3", joins=[n1, nowhere]))
    put_many(n2.endpoint, b"/settle/n2/", 100)
    put_many(n3.endpoint, b"/settle/n3/", 100)
    wait_converged([n1, n2, n3], prefix=b"/settle/", expect=lambda s: len(s) == 200)
