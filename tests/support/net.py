"""Loopback ports for test servers."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports that were free a moment ago.

    All sockets stay bound until every port is chosen, so the same port is never
    handed out twice in one call; another process may still take one before use.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """Return one loopback port that was free a moment ago."""
    return free_ports(1)[0]
