"""A node that has never been linked and admits no links keeps no replication entries (its
writes pay nothing for replication); when it is first started to link, its live keys and auth
objects are recorded at start and reach the first peer."""

from __future__ import annotations

from collections.abc import Callable

from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer
from tests.support.replication import delete, get, node_args, put, sql, wait_for

Factory = Callable[..., ShimServer]


def test_a_standalone_node_records_no_entries_until_it_is_first_linked(
    shim_factory: Factory,
) -> None:
    lone = shim_factory(extra_args=["--name", "lone"])
    put(lone.endpoint, b"/pre/a", b"1")
    put(lone.endpoint, b"/pre/b", b"2")
    put(lone.endpoint, b"/pre/gone", b"3")
    assert delete(lone.endpoint, b"/pre/gone") == 1
    with Client(lone.endpoint) as client:
        client.auth.RoleAdd(pb.AuthRoleAddRequest(name="reader"), timeout=5)
    assert sql(lone, "SELECT COUNT(*) AS n FROM repl_entry") == [{"n": 0}]
    assert sql(lone, "SELECT COUNT(*) AS n FROM peer") == [{"n": 0}]

    # Started to admit links: what it holds becomes its first entries, and a peer gets it.
    lone.extra_args = node_args("lone")
    lone.restart()
    entries = sql(lone, "SELECT kind, CAST(key AS TEXT) AS key FROM repl_entry ORDER BY seq")
    assert entries == [
        {"kind": "", "key": "/pre/a"}, {"kind": "", "key": "/pre/b"},
        {"kind": "auth", "key": "role/reader"},
    ]
    peer = shim_factory(extra_args=node_args("peer", joins=[lone], admit=False))
    wait_for(lambda: get(peer.endpoint, b"/pre/b"), lambda v: v == b"2", "/pre/b on the peer")
    assert get(peer.endpoint, b"/pre/a") == b"1"
    assert get(peer.endpoint, b"/pre/gone") is None

    # Linked once, it keeps recording even when started without any link again.
    peer.stop()
    lone.extra_args = ["--name", "lone"]
    lone.restart()
    put(lone.endpoint, b"/post", b"4")
    recorded = sql(lone, "SELECT CAST(key AS TEXT) AS key FROM repl_entry WHERE kind = ''")
    assert {"key": "/post"} in recorded
