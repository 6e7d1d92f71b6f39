"""Self-test of tests/support/netns.py: reachability, partition, heal, delay and cleanup.

Plain TCP echo servers run in the lab's namespaces; the test process talks to them
through sockets made inside host namespaces (NetLab.connect). Not skipped when
namespaces are unavailable: the test fails with the reason, as the replication tests do.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.netns import NetLab

PORT = 7000
# Stall checks wait this long for a reply that must not come.
SILENCE = 1.0

ECHO_SERVER = """
import socket, sys, threading
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def lab_namespaces(prefix: str) -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(f"{prefix}-"))


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    with NetLab.for_test(3, prefix=f"shimt{os.getpid()}") as lab:
        for i in (1, 2, 3):
            server = lab.popen(
                i,
                [sys.executable, "-c", ECHO_SERVER, lab.addr(i), str(PORT)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready", f"echo server on h{i} failed"
        yield lab
    assert lab_namespaces(lab.prefix) == [], "down() left namespaces behind"


@pytest.fixture(autouse=True)
def healed(lab: NetLab) -> Iterator[None]:
    yield
    lab.heal()


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        received += chunk
    return received


def reaches(lab: NetLab, a: int, b: int) -> bool:
    """Whether a new TCP connection from host a to b's echo server gets an echo."""
    try:
        with lab.connect(a, (lab.addr(b), PORT), timeout=SILENCE) as sock:
            return echo(sock, b"ping") == b"ping"
    except OSError:  # includes TimeoutError
        return False


def test_hosts_reach_each_other(lab: NetLab) -> None:
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            assert reaches(lab, a, b), f"h{a} -> h{b}"


def test_lab_has_no_route_off_its_subnet(lab: NetLab) -> None:
    routes = subprocess.run(
        lab.command(1, ["ip", "-4", "route"]), capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes
    assert routes.split()[0] == f"{lab.subnet}.0/24"


def test_partition_stalls_new_and_open_connections_until_heal(lab: NetLab) -> None:
    open_12 = lab.connect(1, (lab.addr(2), PORT))
    open_13 = lab.connect(1, (lab.addr(3), PORT))
    with open_12, open_13:
        assert echo(open_12, b"before") == b"before"

        lab.partition(1, 2)
        assert not reaches(lab, 1, 2), "new connection h1 -> h2 during partition"
        assert not reaches(lab, 2, 1), "new connection h2 -> h1 during partition"
        open_12.settimeout(SILENCE)
        with pytest.raises(TimeoutError):
            echo(open_12, b"during")  # sent, retransmitted, never answered
        assert reaches(lab, 1, 3) and reaches(lab, 3, 2), "partition hit other pairs"
        assert echo(open_13, b"other pair") == b"other pair"

        lab.heal()
        assert reaches(lab, 1, 2) and reaches(lab, 2, 1)
        # The stalled stream resumes at its next retransmit (backoff: a few seconds).
        open_12.settimeout(15)
        start = time.monotonic()
        assert open_12.recv(65536) == b"during"
        assert time.monotonic() - start < 15


def test_isolate_cuts_one_host_off(lab: NetLab) -> None:
    lab.isolate(3)
    assert not reaches(lab, 1, 3) and not reaches(lab, 3, 2)
    assert reaches(lab, 1, 2)
    assert reaches(lab, 3, 3), "a host still reaches itself"
    lab.heal()
    assert reaches(lab, 1, 3) and reaches(lab, 3, 2)


def test_delay_holds_each_hosts_ingress_and_probe_measures_it(lab: NetLab) -> None:
    """A delay holds what a host receives: a round trip crosses the two hosts' ingresses, so
    it takes at least the sum of their delays (the probe is what the edge bench checks before
    each run). Removing a delay gives the plain lab back."""
    reason = NetLab.delay_available()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    try:
        lab.delay(2, 20)
        one_way = lab.probe(1, 2, count=10)
        assert one_way[0] >= 20, one_way  # h1 -> h2 held at h2; the echo back is not
        lab.delay(1, 15)
        both = lab.probe(1, 2, count=10)
        assert both[0] >= 35, both
        assert lab.probe(3, 1, count=5)[0] >= 15  # h3 is not delayed: only h1's 15 ms
        assert lab.delays() == {1: 15, 2: 20}
        # Delayed, not blocked: the typical round trip stays near the delays.
        assert statistics.median(both) < 35 + 100, both
    finally:
        lab.delay(1, 0)
        lab.delay(2, 0)
    assert lab.delays() == {}
    assert lab.probe(1, 2, count=10)[0] < 15
    assert reaches(lab, 1, 2) and reaches(lab, 2, 1)


def test_down_is_idempotent_and_safe_on_partial_labs() -> None:
    prefix = f"shimt{os.getpid()}x"
    lab = NetLab(2, prefix=prefix)
    lab.down()  # never up: nothing to do
    lab.up()
    sleeper = lab.popen(2, ["sleep", "600"])
    subprocess.run([*lab.command(1, ["true"])], check=True)
    # Simulate a partial up(): one host namespace already gone.
    subprocess.run(["ip", "netns", "del", f"{prefix}-h1"], check=True)
    lab.down()
    lab.down()
    assert sleeper.poll() is not None, "down() left a lab process running"
    assert lab_namespaces(prefix) == []
