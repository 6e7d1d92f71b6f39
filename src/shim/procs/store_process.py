"""``shim serve --processes N``: one store process, N serving processes on one port.

Python's gRPC stack costs far more CPU per request than the store behind it, and one process
runs Python on one core at a time. So with N > 1 this process keeps the one ordered write
path (the Writer with group commit, the lessor, the janitor) and no gRPC port of its own, and
starts N serving processes (``python -m shim.procs.worker``) that share the client port with
SO_REUSEPORT. Each serving process answers reads and watches from the database file itself
(WAL snapshots work across processes) and sends writes and lease calls here over its socket
pair; after every committed batch this process sends each of them the batch's revisions with
their changes, before any writer of the batch is answered, and their watch hubs publish them.

A serving process that dies takes the server down with it (exit status 1): better a clean
restart by the supervisor than a port where some connections fail. Every serving process
dies with this one (PR_SET_PDEATHSIG), so ``kill -9`` ends the whole server at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from shim.backend.base import Backend
from shim.config import ConfigError, ServerConfig
from shim.mvcc.errors import StoreError
from shim.mvcc.events import Revision
from shim.mvcc.owned import OwnedStore
from shim.procs import remote
from shim.procs.channel import Channel, ChannelClosed, encode
from shim.tasks import cancel_and_wait

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
# A serving process gets the same grace as a lone server's in-flight calls, and a little more.
STOP_TIMEOUT_SECONDS = 15.0


class ServingProcessFailed(Exception):
    """A serving process exited while the server was running; the message says which."""


@dataclass(eq=False)
class _Serving:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    ready: asyncio.Future[str | None]
    exit_watch: asyncio.Task[None] | None = None
    calls: set[asyncio.Task[None]] = field(default_factory=set)  # calls being answered


class StoreProcess:
    def __init__(self, config: ServerConfig, backend: Backend, owned: OwnedStore) -> None:
        self.config = config
        self.backend = backend
        self._owned = owned
        self.store, self.lessor = self._owned.store, self._owned.lessor
        self._serving: list[_Serving] = []
        self._stopping = False
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        await self._owned.start()
        self.store.add_commit_listener(self._broadcast)
        try:
            for index in range(self.config.processes):
                self._serving.append(await self._start_serving(index))
            for serving in self._serving:
                reason = await asyncio.wait_for(serving.ready, READY_TIMEOUT_SECONDS)
                if reason is not None:
                    raise ConfigError(reason)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "serving etcd v3 API on %s from %d processes (datastore %s)",
            self.config.listen_address, len(self._serving), self.backend.location,
        )

    async def _start_serving(self, index: int) -> _Serving:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shim.procs.worker", str(theirs.fileno()), str(os.getpid()),
                self.config.event_loop, pass_fds=(theirs.fileno(),),
            )
        channel = await Channel.open(ours)
        serving = _Serving(
            index, process, channel, asyncio.get_running_loop().create_future()
        )
        # Subscribed before it reads the database's revision: it misses no commit notice.
        channel.send((remote.START, self.config, index))
        # Its end closing is noticed through its exit (_watch_exit).
        channel.set_handler(functools.partial(self._received, serving), lambda: None)
        serving.exit_watch = asyncio.get_running_loop().create_task(self._watch_exit(serving))
        return serving

    def _broadcast(self, committed: list[Revision]) -> None:
        if not committed or not self._serving:
            return
        # Only the revisions themselves say how far this notice goes: the writer thread may
        # already have committed the next batch, so its current revision is not this one's.
        frame = encode((remote.COMMIT, committed))
        for serving in self._serving:
            with contextlib.suppress(ChannelClosed):  # a closed one: its exit is handled
                serving.channel.send_frame(frame)

    def _received(self, serving: _Serving, message: Any) -> None:
        kind = message[0]
        if kind == remote.CALL:
            _, call_id, name, argument = message
            task = asyncio.get_running_loop().create_task(
                self._answer(serving.channel, call_id, name, argument)
            )
            serving.calls.add(task)
            task.add_done_callback(serving.calls.discard)
        elif kind in (remote.READY, remote.FAILED) and not serving.ready.done():
            serving.ready.set_result(None if kind == remote.READY else message[1])

    async def _answer(self, channel: Channel, call_id: int, name: str, argument: Any) -> None:
        try:
            value = await self._call(name, argument)
            reply = (remote.REPLY, call_id, True, value)
        except StoreError as exc:
            reply = (remote.REPLY, call_id, False, exc)
        except Exception as exc:
            log.exception("internal error answering a serving process's %s", name)
            reply = (remote.REPLY, call_id, False, _portable(exc))
        with contextlib.suppress(ChannelClosed):  # the caller's process is gone
            channel.send(reply)

    async def _call(self, name: str, argument: Any) -> Any:
        if name == remote.WRITE:
            return await self.store.write(argument)
        if name == remote.LEASE_GRANT:
            return await self.lessor.grant(argument)
        if name == remote.LEASE_REVOKE:
            lease_id, caller = argument
            return await self.lessor.revoke(lease_id, caller)
        if name == remote.LEASE_RENEW:
            return await self.lessor.renew(argument)
        if name == remote.LEASE_TTL:
            return await self.lessor.time_to_live(argument)
        if name == remote.LEASE_IDS:
            return await self.lessor.lease_ids()
        raise ValueError(f"unknown call {name!r}")

    async def _watch_exit(self, serving: _Serving) -> None:
        code = await serving.process.wait()
        if not serving.ready.done():
            serving.ready.set_result(f"serving process {serving.index} exited with status {code}")
        if not self._stopping and not self.failed.done():
            self.failed.set_result(f"serving process {serving.index} exited with status {code}")

    async def stop(self) -> None:
        """Stop the serving processes (they finish their calls first), then the write path."""
        self._stopping = True
        for serving in self._serving:
            if serving.process.returncode is None:
                serving.process.send_signal(signal.SIGTERM)
        for serving in self._serving:
            try:
                await asyncio.wait_for(serving.process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                log.error("serving process %d did not stop; killing it", serving.index)
                serving.process.kill()
                await serving.process.wait()
        for serving in self._serving:
            await cancel_and_wait(serving.exit_watch, *serving.calls)
            serving.channel.close()
        self._serving = []
        await self._owned.stop()


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
