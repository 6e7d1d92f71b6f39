"""Loopback ports for test and benchmark servers.

Ports come from just below the kernel's ephemeral range: a port picked there cannot be taken
by an outgoing connection (which a port the kernel picked with bind(0) can, between the moment
it is chosen and the moment the server binds it; with a hundred processes dialing each other
that happened). Within one process ports are handed out in turn, so none is handed out twice.
Under pytest-xdist each worker takes its own slice of that range, so two workers never pick
the same port.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from pathlib import Path

_SPAN = 10_000


def below_ephemeral() -> range:
    """The _SPAN ports just below the kernel's ephemeral range."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral_low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return range(max(1024, ephemeral_low - _SPAN), ephemeral_low)


def _worker_slice(ports: range) -> range:
    """This pytest-xdist worker's share of ``ports`` (all of it outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return ports
    index = int(worker[2:]) % count
    size = len(ports) // count
    return range(ports.start + index * size, ports.start + (index + 1) * size)


_RANGE = _worker_slice(below_ephemeral())
# A random start, so two test or bench runs at once mostly pick different ports.
_candidates = itertools.cycle(
    itertools.chain(
        range(random.choice(_RANGE), _RANGE.stop), range(_RANGE.start, _RANGE.stop)
    )
)
_lock = threading.Lock()


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago."""
    ports: list[int] = []
    with _lock:
        for _ in range(2 * len(_RANGE)):
            if len(ports) == count:
                break
            port = next(_candidates)
            if port not in ports and _is_free(port):
                ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"no {count} free loopback ports in {_RANGE}")
    return ports


def free_port() -> int:
    """Return one loopback port that was free a moment ago."""
    return free_ports(1)[0]
