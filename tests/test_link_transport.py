"""The transport under replication links (issue 14): the server admits the links' keepalive,
and a failed dial leaves no gRPC channel behind to reconnect on its own.

The ping policy is checked on the options both ends use, not by watching a link for a while:
with the server's policy stricter than the keepalive, gRPC ends the connection with GOAWAY
"too_many_pings" after the third early ping, so a behavioural test would have to wait for
that not to happen (a sleep standing in for "nothing happens").
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from pathlib import Path

from grpc._cython import cygrpc

from shim.backend.sqlite import SqliteBackend
from shim.mvcc.store import Store
from shim.replication.link_stream import SILENCE_SECONDS, LinkSpec
from shim.replication.links import Replicator
from shim.replication.resolve import Replica
from shim.replication.transport import channel_options, server_options
from tests.support import free_port

# etcd's default --grpc-keepalive-min-time: what etcd clients may count on.
ETCD_MIN_PING_INTERVAL_MS = 5000


def test_the_server_admits_the_links_keepalive_and_is_no_stricter_than_etcd() -> None:
    server = dict(server_options())
    dialer = dict(channel_options(4 * 1024 * 1024))
    admitted = server["grpc.http2.min_ping_interval_without_data_ms"]
    # A ping up to half a keepalive early (it waited behind data) is still no strike.
    assert admitted <= dialer["grpc.keepalive_time_ms"] // 2
    assert admitted <= ETCD_MIN_PING_INTERVAL_MS
    assert server["grpc.keepalive_permit_without_calls"] == 1  # etcd clients' idle pings
    # A dead peer is noticed by keepalive no later than by the link's own silence check.
    noticed_ms = dialer["grpc.keepalive_time_ms"] + dialer["grpc.keepalive_timeout_ms"]
    assert noticed_ms <= SILENCE_SECONDS * 1000
    # The flow-control settings are the same on both ends.
    for name in ("grpc.http2.lookahead_bytes", "grpc.http2.bdp_probe",
                 "grpc.http2.max_frame_size"):
        assert server[name] == dialer[name], name


def live_channels() -> int:
    """gRPC channels alive in this process (channelz lists each until it is destroyed)."""
    gc.collect()
    return len(json.loads(cygrpc.channelz_get_top_channels(0)).get("channel", []))


class DownProbe(logging.Handler):
    """At each "link ... down" line, the channels still alive: the failed attempt's must be
    gone by then (its replacement is made only after the pause the line announces)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.alive: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if " down (" in record.getMessage():
            self.alive.append(live_channels())


async def dial_nothing(tmp_path: Path, attempts: int) -> list[int]:
    backend = SqliteBackend(tmp_path / "state.db")
    backend.open()
    replica = Replica(backend.node_id)
    store = Store(backend, replica)
    await store.start()
    probe = DownProbe()
    logger = logging.getLogger("shim.replication.links")
    logger.addHandler(probe)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # failures after the first are logged at DEBUG
    try:
        before = live_channels()
        assert before == 0, f"{before} channels alive before the test"
        # Nothing listens on the port: each attempt is refused, then retried after 0.5 s.
        spec = LinkSpec(f"http://127.0.0.1:{free_port()}", "token")
        replicator = Replicator(store, replica, "dialer", None, [spec])
        try:
            async with asyncio.timeout(20):
                while len(probe.alive) < attempts:
                    await asyncio.sleep(0.05)
        finally:
            await replicator.close()
    finally:
        logger.removeHandler(probe)
        logger.setLevel(level)
        await store.close()
        backend.close()
    return probe.alive


def test_a_failed_dial_leaves_no_channel_to_reconnect_later(tmp_path: Path) -> None:
    """A channel still referenced after its attempt failed is reconnected by gRPC in the
    background once the peer is back: an extra connection no link uses (which the peer, with
    a ping policy stricter than the keepalive, ended with GOAWAY "too_many_pings")."""
    alive = asyncio.run(dial_nothing(tmp_path, attempts=3))
    assert alive[:3] == [0, 0, 0], alive
