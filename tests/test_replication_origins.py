"""Origins and version vectors (issue 17 cases 2 and 6, issue 14 "no duplicate forwarding").

Real nodes, real links: each entry crosses each link of a full mesh once; a node that loses
a direct link gets that origin's entries through another; an origin's entries are held without
gaps (an entry far ahead waits and does not silence the origin's real writes); a node restarted
on an older copy of its database writes under a new origin and gets its lost writes back.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.support.lying_peer import LyingPeer
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.replication import (
    get,
    node_args,
    put,
    reload_topology,
    sql,
    wait_converged,
    wait_for,
    write_topology,
)
from tests.support.shim_server import ShimServer

Factory = Callable[..., ShimServer]


def duplicates(address: str) -> float:
    """Entries this node received that it held already, from every peer."""
    return sum(value for name, value in scrape(address).items()
               if name.startswith("shim_replication_entries_total{")
               and 'outcome="duplicate"' in name)


def links_up(server: ShimServer) -> int:
    return len(sql(server, "SELECT 1 FROM link WHERE state = 'up'"))


def mesh(shim_factory: Factory, metrics: list[str] | None = None) -> list[ShimServer]:
    """Three nodes, each linked to the two others."""
    extra = [["--metrics-address", m] for m in metrics] if metrics else [[], [], []]
    n1 = shim_factory(extra_args=node_args("n1", extra=extra[0]))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1], extra=extra[1]))
    n3 = shim_factory(extra_args=node_args("n3", joins=[n1, n2], extra=extra[2]))
    nodes = [n1, n2, n3]
    for node in nodes:
        wait_for(lambda node=node: links_up(node), lambda n: n == 2, f"{node.name}'s two links")
    return nodes


def test_a_full_mesh_sends_each_entry_over_each_link_once(shim_factory: Factory) -> None:
    metrics = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = mesh(shim_factory, metrics)
    # Every link is up and has told its peer what reaches it directly.
    for i, node in enumerate(nodes):
        put(node.endpoint, f"/warm/{i}".encode(), b"w")
    wait_converged(nodes, prefix=b"/warm/", expect=lambda s: len(s) == 3)
    before = [duplicates(m) for m in metrics]

    for n in range(60):
        for i, node in enumerate(nodes):
            put(node.endpoint, f"/mesh/{i}/{n:03d}".encode(), b"x" * 256)
    wait_converged(nodes, prefix=b"/mesh/", expect=lambda s: len(s) == 180)
    # Each node got each other node's entries from that node alone: none came twice.
    assert [duplicates(m) - b for m, b in zip(metrics, before, strict=True)] == [0, 0, 0]
    for node in nodes:
        rows = sql(node, "SELECT received_from, COUNT(*) AS n FROM replication_log "
                         "WHERE key LIKE '/mesh/%' AND received_from != 'local' "
                         "GROUP BY received_from")
        assert sorted(r["n"] for r in rows) == [60, 60]


def test_an_origin_reaches_a_node_through_another_when_its_direct_link_goes(
    shim_factory: Factory, tmp_path: Path,
) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    topology = tmp_path / "n3-links.json"
    write_topology(topology, {"url": n1.url, "token": "test-token"},
                   {"url": n2.url, "token": "test-token"})
    n3 = shim_factory(extra_args=node_args("n3", extra=["--topology", str(topology)]))
    for node in (n1, n2, n3):
        wait_for(lambda node=node: links_up(node), lambda n: n == 2, f"{node.name}'s links")
    for n in range(20):
        put(n1.endpoint, f"/via/{n:02d}".encode(), b"direct")
    wait_converged([n1, n2, n3], prefix=b"/via/", expect=lambda s: len(s) == 20)

    # n3 drops its link to n1: n1's writes now reach it through n2.
    reload_topology(n3, topology, {"url": n2.url, "token": "test-token"})
    wait_for(lambda: links_up(n1), lambda n: n == 1, "n1 to see n3's link go")
    for n in range(20, 40):
        put(n1.endpoint, f"/via/{n:02d}".encode(), b"relayed")
    wait_converged([n1, n2, n3], prefix=b"/via/", expect=lambda s: len(s) == 40)
    relayed = sql(n3, "SELECT COUNT(*) AS n FROM replication_log WHERE key >= '/via/20' "
                      "AND key LIKE '/via/%'")
    assert relayed == [{"n": 20}]


def test_entries_beyond_a_gap_wait_and_a_forged_far_seq_does_not_silence_the_origin(
    shim_factory: Factory,
) -> None:
    node = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(node.endpoint) as peer:
        # Entry 3 and 2 come before 1: they wait, nothing of them applies.
        third, second = peer.entry(b"/gap/3", b"3", seq=3), peer.entry(b"/gap/2", b"2", seq=2)
        peer.send(third, second)
        wait_for(lambda: sql(node, "SELECT waiting FROM replication_origins "
                                   f"WHERE origin = '{peer.node_id}'"),
                 lambda rows: rows == [{"waiting": 2}], "two entries to wait")
        assert get(node.endpoint, b"/gap/3") is None and get(node.endpoint, b"/gap/2") is None
        peer.send(peer.entry(b"/gap/1", b"1", seq=1))
        wait_for(lambda: [get(node.endpoint, f"/gap/{n}".encode()) for n in (1, 2, 3)],
                 lambda values: values == [b"1", b"2", b"3"], "the three entries in order")

        # An entry far ahead of what the origin wrote (51 while it is at 3) waits; the
        # origin's next real writes are not taken for duplicates.
        peer.send(peer.entry(b"/gap/forged", b"forged", seq=51))
        peer.seq = 3
        peer.send(peer.entry(b"/gap/4", b"4"), peer.entry(b"/gap/5", b"5"))
        wait_for(lambda: get(node.endpoint, b"/gap/5"), lambda v: v == b"5", "entry 5")
        assert get(node.endpoint, b"/gap/forged") is None
        assert sql(node, "SELECT max_seq, waiting FROM replication_origins "
                         f"WHERE origin = '{peer.node_id}'") == [{"max_seq": 5, "waiting": 1}]


def _database_files(server: ShimServer) -> list[Path]:
    """The node's SQLite file and its WAL (the node is stopped)."""
    assert server.database is not None and not server.running
    return list(server.database.parent.glob(server.database.name + "*"))


def _copy_database(server: ShimServer, to: Path) -> None:
    to.mkdir()
    for path in _database_files(server):
        shutil.copy2(path, to / path.name)


def _restore_database(server: ShimServer, copy: Path) -> None:
    for path in _database_files(server):
        path.unlink()
    assert server.database is not None
    for path in copy.iterdir():
        shutil.copy2(path, server.database.parent / path.name)


def test_a_node_restarted_on_an_older_copy_of_its_database_converges(
    shim_factory: Factory, tmp_path: Path,
) -> None:
    n1, n2, n3 = mesh(shim_factory)
    nodes = [n1, n2, n3]
    for n in range(20):
        put(n2.endpoint, f"/restore/a{n:02d}".encode(), b"before the copy")
    wait_converged(nodes, prefix=b"/restore/", expect=lambda s: len(s) == 20)
    n2.stop()
    _copy_database(n2, tmp_path / "copy")
    n2.start()
    for n in range(50):
        put(n2.endpoint, f"/restore/b{n:02d}".encode(), b"after the copy")
    wait_converged(nodes, prefix=b"/restore/", expect=lambda s: len(s) == 70)

    # n2 comes back on the copy: it lost its 50 writes, its peers hold them.
    n2.stop()
    _restore_database(n2, tmp_path / "copy")
    n2.start()
    for n in range(30):
        put(n2.endpoint, f"/restore/c{n:02d}".encode(), b"after the restore")
    final = wait_converged(nodes, prefix=b"/restore/", expect=lambda s: len(s) == 100)
    assert sum(1 for k in final if k.startswith(b"/restore/b")) == 50
    # Three runs of n2, three origins: no (origin, seq) was written twice.
    origins = sql(n1, "SELECT origin, max_seq FROM replication_origins o WHERE EXISTS "
                      "(SELECT 1 FROM replication_log l WHERE l.origin = o.origin "
                      "AND l.key LIKE '/restore/%') ORDER BY max_seq")
    assert [o["max_seq"] for o in origins] == [20, 30, 50]
