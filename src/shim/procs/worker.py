"""A serving process of ``shim serve --processes N`` (started by the store process only).

    python -m shim.procs.worker FD PARENT_PID EVENT_LOOP

FD is this process's end of the socket pair; the settings arrive on it as the first message.
The process serves the etcd gRPC API on the shared port (SO_REUSEPORT) until SIGTERM/SIGINT
or until the store process goes away.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys

from shim import allocator, event_loop
from shim.api.server import ShimServer
from shim.app import database_errors_reported, stop_on_signals
from shim.backend.base import BackendOpenError
from shim.backend.sqlite import SqliteBackend
from shim.config import ConfigError, SqliteEndpoint, parse_datastore_endpoint
from shim.logs import configure_logging
from shim.procs import remote
from shim.procs.channel import Channel

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when the store process dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the closed channel still stops this process
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the line above took effect


async def run(sock: socket.socket) -> int:
    channel = await Channel.open(sock)
    kind, config, index = await channel.first_message()
    assert kind == remote.START
    configure_logging(config.log_level, config.log_format)
    stop = stop_on_signals()
    endpoint = parse_datastore_endpoint(config.datastore_endpoint)
    assert isinstance(endpoint, SqliteEndpoint)
    backend = SqliteBackend(endpoint.path, synchronous=config.sqlite_synchronous)
    try:
        try:
            backend.open_reader()
            with backend.read() as view:
                revision = view.revision()
            link = remote.StoreLink(channel, revision, on_lost=stop.set)
            server = ShimServer(config, backend, store_link=link)
            with database_errors_reported(backend):
                await server.start()
        except (ConfigError, BackendOpenError) as exc:
            # The store process reports it (one line) and stops the server.
            channel.send((remote.FAILED, str(exc)))
            channel.close()  # sends what is queued first
            return 2
        channel.send((remote.READY, None))
        log.debug("serving process %d ready", index)
        await stop.wait()
        await server.stop()
        return 1 if link.lost else 0
    finally:
        backend.close()


def main() -> None:
    fd, parent_pid, loop_kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    _die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    allocator.keep_large_buffers()
    sys.exit(event_loop.run(run(sock), loop_kind))


if __name__ == "__main__":
    main()
