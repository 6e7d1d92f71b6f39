"""Origins and version vectors (issue 17 cases 2 and 6, issue 14 "no duplicate forwarding").

Real nodes, real links: each entry crosses each link of a full mesh once; a node that loses
a direct link gets that origin's entries through another; an origin's entries are held without
gaps (an entry far ahead waits and does not silence the origin's real writes); a node restarted
on an older copy of its database writes under a new origin and gets its lost writes back.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.support import etcdctl, sqlite_endpoint
from tests.support.lying_peer import LyingPeer, hlc_now
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.replication import (
    get,
    node_args,
    put,
    reload_topology,
    shim_command,
    sql,
    status,
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


def test_entries_beyond_a_gap_wait_and_a_far_seq_does_not_silence_the_origin(
    shim_factory: Factory,
) -> None:
    node = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(node.endpoint) as peer:
        waiting = f"SELECT max_seq, waiting FROM replication_origins WHERE origin = '{peer.origin}'"
        # Entry 3 and 2 come before 1: they wait, nothing of them applies.
        third, second = peer.entry(b"/gap/3", b"3", seq=3), peer.entry(b"/gap/2", b"2", seq=2)
        peer.send(third, second)
        wait_for(lambda: sql(node, waiting), lambda rows: rows == [{"max_seq": 0, "waiting": 2}],
                 "two entries to wait")
        assert get(node.endpoint, b"/gap/3") is None and get(node.endpoint, b"/gap/2") is None
        peer.send(peer.entry(b"/gap/1", b"1", seq=1))
        wait_for(lambda: [get(node.endpoint, f"/gap/{n}".encode()) for n in (1, 2, 3)],
                 lambda values: values == [b"1", b"2", b"3"], "the three entries in order")

        # An entry far ahead of what the origin wrote (51 while it is at 3) waits; the
        # origin's next writes are not taken for duplicates.
        peer.send(peer.entry(b"/gap/far", b"far", seq=51))
        peer.seq = 3
        peer.send(peer.entry(b"/gap/4", b"4"), peer.entry(b"/gap/5", b"5"))
        wait_for(lambda: get(node.endpoint, b"/gap/5"), lambda v: v == b"5", "entry 5")
        assert get(node.endpoint, b"/gap/far") is None
        assert sql(node, waiting) == [{"max_seq": 5, "waiting": 1}]


def local_origin(server: ShimServer) -> str:
    """The origin the node writes under in this run."""
    rows = sql(server, "SELECT origin FROM replication_log WHERE received_from = 'local' "
                       "ORDER BY ingest DESC LIMIT 1")
    return str(rows[0]["origin"])


def test_an_entry_forged_under_another_nodes_origin_is_refused(shim_factory: Factory) -> None:
    """Case 6: one entry under a real node's origin, far ahead of it or next in line, cannot
    make that node's real writes look like duplicates: only its key signs under its origin."""
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    put(n1.endpoint, b"/real/1", b"1")
    wait_converged([n1, n2], prefix=b"/real/", expect=lambda s: len(s) == 1)
    victim = local_origin(n1)
    with LyingPeer(n2.endpoint) as peer:
        for seq in (51, 2):
            forged = peer.entry(b"/real/forged", b"forged", origin=victim, seq=seq)
            peer.send(forged)
            assert "forged: the signature does not verify" in peer.wait_refused(seq, victim)
        # The same content under the victim's origin with no signature at all: refused too.
        peer.send(peer.entry(b"/real/forged", b"forged", origin=victim, seq=3, sig=b""))
        assert "forged" in peer.wait_refused(3, victim)
        assert peer.status() is None
    for n in range(2, 6):
        put(n1.endpoint, f"/real/{n}".encode(), str(n).encode())
    final = wait_converged([n1, n2], prefix=b"/real/", expect=lambda s: len(s) == 5)
    assert b"/real/forged" not in final
    reasons = [q["reason"] for q in status(n2)["quarantine"]["latest"]]
    assert any("forged" in reason for reason in reasons), reasons


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


def test_an_origin_that_signs_two_versions_of_one_entry_is_flagged_and_left_out(
    shim_factory: Factory,
) -> None:
    """Case 5: one origin sends n1 and n2 different entries under the same (origin, seq). The
    nodes find it by comparing their chains, flag the origin, leave its entries from that seq
    out on both, and go on converging: the cluster does not split."""
    metrics = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    n1 = shim_factory(extra_args=node_args("n1", extra=["--metrics-address", metrics[0]]))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1],
                                           extra=["--metrics-address", metrics[1]]))
    wait_for(lambda: links_up(n1), lambda n: n == 1, "the link")
    with LyingPeer(n1.endpoint) as to_n1, LyingPeer(n2.endpoint, signer=to_n1.signer) as to_n2:
        base = to_n1.entry(b"/fork/k", b"base", seq=1)
        to_n1.send(base)
        to_n2.send(base)
        to_n1.send(to_n1.entry(b"/fork/k", b"told n1", seq=2),
                   to_n1.entry(b"/fork/n1-only", b"x", seq=3))
        to_n2.send(to_n2.entry(b"/fork/k", b"told n2", seq=2))
        for node in (n1, n2):
            wait_for(lambda node=node: status(node)["origins"]["equivocating"],
                     lambda flagged: [o["origin"] for o in flagged] == [to_n1.origin]
                     and flagged[0]["from_seq"] == 2, f"{node.name} to flag the origin")
        final = wait_converged([n1, n2], prefix=b"/fork/")
        assert final == {b"/fork/k": (b"base", 0)}
        assert to_n1.status() is None and to_n2.status() is None
    assert [scrape(m)["shim_replication_equivocations_total"] for m in metrics] == [1.0, 1.0]
    # The two nodes go on replicating everything else.
    put(n1.endpoint, b"/fork/after", b"1")
    put(n2.endpoint, b"/fork/after2", b"2")
    wait_converged([n1, n2], prefix=b"/fork/", expect=lambda s: len(s) == 3)
    text = shim_command("status", "--datastore-endpoint", n1.datastore_endpoint)
    assert f"EQUIVOCATING {to_n1.origin}" in text.stdout


def test_entries_of_origins_from_before_signatures_replicate_only_from_before(
    shim_factory: Factory,
) -> None:
    """Upgrading: a database's entries from before signatures stay under their origin (the
    old node id), unsigned, and still replicate (a node joining later gets them); an unsigned
    entry stamped after the node started signing is refused: no one writes under an old
    origin any more."""
    n1 = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(n1.endpoint) as old:
        legacy = secrets.token_hex(16)  # an origin as node ids were
        before = hlc_now(ahead_ms=-3_600_000)
        old.send(old.entry(b"/old/1", b"from before", origin=legacy, seq=1, hlc=before, sig=b""))
        wait_for(lambda: get(n1.endpoint, b"/old/1"), lambda v: v == b"from before",
                 "the old entry")
        old.send(old.entry(b"/old/2", b"after", origin=legacy, seq=2, sig=b""))
        assert "unsigned" in old.wait_refused(2, legacy)
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    final = wait_converged([n1, n2], prefix=b"/old/", expect=lambda s: len(s) == 1)
    assert final == {b"/old/1": (b"from before", 0)}


def test_a_snapshot_restored_with_its_identity_writes_under_a_new_origin(
    shim_factory: Factory, tmp_path: Path,
) -> None:
    """Case 2 through `etcdctl snapshot save` and `shim snapshot restore --keep-identity`."""
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    for n in range(20):
        put(n2.endpoint, f"/snap/a{n:02d}".encode(), b"before the snapshot")
    wait_converged([n1, n2], prefix=b"/snap/", expect=lambda s: len(s) == 20)
    snapshot = tmp_path / "n2.snapshot"
    etcdctl(n2.endpoint, "snapshot", "save", str(snapshot))
    for n in range(50):
        put(n2.endpoint, f"/snap/b{n:02d}".encode(), b"after the snapshot")
    wait_converged([n1, n2], prefix=b"/snap/", expect=lambda s: len(s) == 70)
    n2.stop()

    restored = tmp_path / "restored" / "state.db"
    result = shim_command("snapshot", "restore", str(snapshot), "--keep-identity",
                          "--datastore-endpoint", sqlite_endpoint(restored))
    assert result.returncode == 0, result.stderr
    n2b = shim_factory(datastore_endpoint=sqlite_endpoint(restored),
                       extra_args=node_args("n2", joins=[n1]))
    assert status(n2b)["node_id"] == status(n2)["node_id"]
    for n in range(30):
        put(n2b.endpoint, f"/snap/c{n:02d}".encode(), b"after the restore")
    wait_converged([n1, n2b], prefix=b"/snap/", expect=lambda s: len(s) == 100)


def test_entries_pruned_by_retention_keep_their_place_for_a_node_that_joins_later(
    shim_factory: Factory,
) -> None:
    """Retention strips superseded entries to stubs; a node that joins afterwards gets the
    origin's whole sequence (stubs included), with nothing left waiting."""
    n1 = shim_factory(extra_args=node_args(
        "n1", extra=["--replication-retention", "0", "--maintenance-interval", "0.2"]))
    for n in range(5):
        put(n1.endpoint, b"/pruned/k", f"v{n}".encode())
    put(n1.endpoint, b"/pruned/other", b"x")
    wait_for(lambda: sql(n1, "SELECT COUNT(*) AS n FROM replication_log WHERE outcome = 'pruned'"),
             lambda rows: rows == [{"n": 4}], "retention to strip the four superseded puts")
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    final = wait_converged([n1, n2], prefix=b"/pruned/", expect=lambda s: len(s) == 2)
    assert final[b"/pruned/k"] == (b"v4", 0)
    origin = local_origin(n1)
    assert sql(n2, "SELECT max_seq, waiting FROM replication_origins "
                   f"WHERE origin = '{origin}'") == [{"max_seq": 6, "waiting": 0}]
    assert sql(n2, "SELECT COUNT(*) AS n FROM replication_log WHERE outcome = 'pruned'") == [
        {"n": 4}]


def test_the_proof_of_an_equivocation_reaches_a_node_that_saw_one_version(
    shim_factory: Factory,
) -> None:
    """n3 is linked to n1 only and gets one version through it; n1 and n2 find the fork, and
    the proof n1 sends on makes n3 leave the origin out too: all three hold the same."""
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    n3 = shim_factory(extra_args=node_args("n3", joins=[n1]))
    wait_for(lambda: links_up(n1), lambda n: n == 2, "n1's links")
    with LyingPeer(n1.endpoint) as to_n1, LyingPeer(n2.endpoint, signer=to_n1.signer) as to_n2:
        to_n1.send(to_n1.entry(b"/proof/k", b"told n1", seq=1))
        wait_converged([n1, n3], prefix=b"/proof/", expect=lambda s: len(s) == 1)
        to_n2.send(to_n2.entry(b"/proof/k", b"told n2", seq=1))
        _wait_all_flag([n1, n2, n3], to_n1.origin)


def test_a_run_signed_once_applies_whole_and_a_forged_run_is_refused_whole(
    shim_factory: Factory,
) -> None:
    """Origins sign their chain once for a run of entries: a run whose one signature verifies
    applies whole (one entry of it refused for its content keeps its place); a run signed by
    another key, one altered after signing, or one with no signature at its end is refused,
    every entry of it with the same reason as a forged entry."""
    n1 = shim_factory(extra_args=node_args("n1"))
    put(n1.endpoint, b"/run/real", b"1")
    victim = local_origin(n1)
    with LyingPeer(n1.endpoint) as peer:
        run = [peer.entry(b"/run/a", b"1"), peer.entry(b"/run/b", b"2", kind="gossip"),
               peer.entry(b"/run/c", b"3")]
        before = peer.sign_run(*run)
        peer.send(*run)
        assert "unknown kind" in peer.wait_refused(2)
        wait_for(lambda: get(n1.endpoint, b"/run/c"), lambda v: v == b"3", "the run to apply")
        altered = [peer.entry(b"/run/d", b"4"), peer.entry(b"/run/e", b"5")]
        peer.sign_run(*altered, before=before)
        altered[0].value = b"changed after signing"
        peer.send(*altered)
        unsigned = [peer.entry(b"/run/f", b"6", seq=6, sig=b"")]
        unsigned[0].prev_chain = before
        peer.send(*unsigned)
        under_victim = [peer.entry(b"/run/g", b"7", origin=victim, seq=2)]
        peer.sign_run(*under_victim)  # this peer's key, the victim's origin
        peer.send(*under_victim)
        for seq, origin in ((4, None), (5, None), (6, None), (2, victim)):
            reason = peer.wait_refused(seq, origin)
            assert reason.startswith("forged: the signature does not verify"), reason
        assert peer.status() is None
    for key in (b"/run/d", b"/run/e", b"/run/f", b"/run/g"):
        assert get(n1.endpoint, key) is None
    assert get(n1.endpoint, b"/run/a") == b"1"


def test_an_equivocation_under_signed_runs_is_proven_to_a_node_that_saw_one_version(
    shim_factory: Factory,
) -> None:
    """The proof of an equivocation by an origin that signs its chain: each version travels
    with the chain before it, the messages after it and the signature that covers it, so n3
    (linked to n1 only) checks it too and leaves the origin out like n1 and n2."""
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    n3 = shim_factory(extra_args=node_args("n3", joins=[n1]))
    wait_for(lambda: links_up(n1), lambda n: n == 2, "n1's links")
    with LyingPeer(n1.endpoint) as to_n1, LyingPeer(n2.endpoint, signer=to_n1.signer) as to_n2:
        told_n1 = [to_n1.entry(b"/proof/k", b"told n1", seq=1),
                   to_n1.entry(b"/proof/j", b"same", seq=2)]
        to_n1.sign_run(*told_n1)
        to_n1.send(*told_n1)
        wait_converged([n1, n3], prefix=b"/proof/", expect=lambda s: len(s) == 2)
        told_n2 = [to_n2.entry(b"/proof/k", b"told n2", seq=1),
                   to_n2.entry(b"/proof/j", b"same", seq=2)]
        for msg, same in zip(told_n2, told_n1, strict=True):
            msg.hlc = same.hlc
        to_n2.sign_run(*told_n2)
        to_n2.send(*told_n2)
        _wait_all_flag([n1, n2, n3], to_n1.origin)


def _wait_all_flag(nodes: list[ShimServer], origin: str) -> None:
    """Every node flags ``origin`` as equivocating, and they converge without its keys."""
    for node in nodes:
        wait_for(lambda node=node: [o["origin"] for o in status(node)["origins"]["equivocating"]],
                 lambda flagged: flagged == [origin], f"{node.name} to flag it")
    assert wait_converged(nodes, prefix=b"/proof/") == {}
