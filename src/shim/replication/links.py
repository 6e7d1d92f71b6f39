"""Links between nodes: dialing, admitting, and the two streams of entries a link carries.

A link is one bidirectional gRPC stream opened by the dialing node (so a node behind NAT only
needs to dial out). After the handshake each side runs a sender, which streams the entries the
other side lacks from the cursor it named and then follows the local log, and a receiver, which
hands each batch to the store: entries and the peer's cursor commit in one transaction, then
watchers are woken. A restart resumes from the persisted cursor; duplicates are dropped by
(origin, seq), so delivery is at-least-once and the effect exactly-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from shim.backend.sqlite_repl import tables as repl_tables
from shim.config import DEFAULT_MAX_REQUEST_BYTES
from shim.mvcc.errors import StoreError
from shim.mvcc.store import Store
from shim.pb import replication_pb2 as pb
from shim.pb import replication_pb2_grpc as pb_grpc
from shim.replication.held import release_held_forever
from shim.replication.ingest import BadBatch, IngestLimits, admit, check_batch
from shim.replication.merge import Entry
from shim.replication.quarantine import Refusal
from shim.replication.resolve import MergeRequest, PeerRegistration
from shim.replication.wire import PROTOCOL, to_wire
from shim.tasks import cancel_and_wait
from shim.tls import PeerTls

log = logging.getLogger(__name__)

BATCH_ENTRIES = 500
BATCH_BYTES = 4 * 1024 * 1024
HEARTBEAT_SECONDS = 1.0
# An idle link still records "last seen" (shim status) this often.
PEER_RECORD_SECONDS = 10.0
# A link that hears nothing (not even a heartbeat) for this long is dropped and redialed.
SILENCE_SECONDS = 6.0
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 3.0

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 3000),
]


class LinkRefused(Exception):
    """The other side will not link with us; the message says why."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link this node dials: the peer's URL, its bootstrap token, and which way entries flow
    (``send``: ours to it; ``receive``: its to us)."""

    url: str
    token: str
    send: bool = True
    receive: bool = True

    @property
    def target(self) -> str:
        """host:port for gRPC (the URL without its scheme)."""
        return self.url.split("://", 1)[-1].rstrip("/")


class _Stream:
    """One side of a Link: the dialer's call or the acceptor's servicer context, which read
    and write messages the same way."""

    def __init__(self, call: grpc.aio.StreamStreamCall | grpc.aio.ServicerContext) -> None:
        self._call = call
        # The sender and the receiver (answering refused entries) both write: one at a time.
        self._writing = asyncio.Lock()

    async def send(self, msg: pb.LinkMessage) -> None:
        async with self._writing:
            await self._call.write(msg)

    async def recv(self) -> pb.LinkMessage | None:
        msg = await self._call.read()
        return None if msg is grpc.aio.EOF else msg


@dataclass(slots=True)
class LinkState:
    """A live link: the peer's node id and where it is (for logs; counted by metrics; listed
    by MemberList with the peer's name, and its client URL where this node dialed it)."""

    peer: str
    address: str
    name: str = ""
    client_url: str = ""


class Replicator:
    """Runs this node's links: the ones it dials and the ones it admits."""

    def __init__(
        self,
        store: Store,
        name: str,
        bootstrap_token: str | None,
        links: list[LinkSpec],
        peer_tls: PeerTls | None = None,
        limits: IngestLimits | None = None,
    ) -> None:
        replica = store.replica
        if replica is None:
            raise ValueError("the store's backend does not replicate")
        self._store = store
        self.node_id = replica.node_id
        self.policy_digest = replica.policy.digest
        self._name = name
        self._token = bootstrap_token
        self._peer_tls = peer_tls
        self._specs: dict[str, LinkSpec] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._wakers: set[asyncio.Event] = set()
        self.live: dict[int, LinkState] = {}
        self._admitted: set[asyncio.Task[Any]] = set()
        self._closed = False
        # Entries from peers respect the client API's limits (None: etcd's defaults).
        self._limits = limits or IngestLimits(DEFAULT_MAX_REQUEST_BYTES)
        store.add_commit_listener(self._wake_senders)
        self._release = asyncio.get_running_loop().create_task(
            release_held_forever(store), name="release held entries"
        )
        self.set_links(links)

    # -- life cycle ------------------------------------------------------------------------------

    def set_links(self, links: list[LinkSpec]) -> None:
        """Dial exactly these links: new ones start, removed ones close (live, no restart)."""
        wanted = {spec.url: spec for spec in links}
        for url in list(self._dialers):
            if url not in wanted or wanted[url] != self._specs.get(url):
                self._dialers.pop(url).cancel()
                self._specs.pop(url, None)
                log.info("link to %s removed", url)
        for url, spec in wanted.items():
            if url not in self._dialers and not self._closed:
                self._specs[url] = spec
                self._dialers[url] = asyncio.get_running_loop().create_task(
                    self._dial_forever(spec), name=f"link {url}"
                )

    async def close(self) -> None:
        """Close every link, dialed and admitted."""
        self._closed = True
        for task in self._admitted:
            task.cancel()
        tasks = list(self._dialers.values())
        self._dialers.clear()
        await cancel_and_wait(*tasks, log_errors=False)  # each dialer logs its own failures
        await cancel_and_wait(self._release)

    def _wake_senders(self, _revisions: object) -> None:
        """After every committed batch: it may have stored entries to send."""
        for event in self._wakers:
            event.set()

    # -- dialing ---------------------------------------------------------------------------------

    async def _dial_forever(self, spec: LinkSpec) -> None:
        delay = RETRY_MIN_SECONDS
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self._dial_once(spec)
                reason = "closed by the peer"
            except asyncio.CancelledError:
                raise
            except LinkRefused as exc:
                reason = f"refused: {exc}"
            except TimeoutError:
                reason = f"silent for {SILENCE_SECONDS:.0f}s"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except StoreError as exc:
                reason = f"local store: {exc}"
            except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                reason = f"stream ended: {exc}"  # e.g. a write racing the stream's end
            except Exception as exc:  # a bug in one link must not end the others
                log.exception("link to %s failed", spec.url)
                reason = repr(exc)
            if time.monotonic() - started > 10 * RETRY_MAX_SECONDS:
                delay, failures = RETRY_MIN_SECONDS, 0  # it worked for a while: retry quickly
            failures += 1
            level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else logging.DEBUG
            log.log(level, "link to %s down (%s); retrying in %.1fs", spec.url, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _dial_once(self, spec: LinkSpec) -> None:
        target = spec.target
        if spec.url.startswith("https://"):
            credentials = (self._peer_tls or PeerTls()).credentials()
            channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        async with channel:
            call = pb_grpc.ReplicationStub(channel).Link()
            stream = _Stream(call)
            try:
                await stream.send(pb.LinkMessage(hello=pb.Hello(
                    node_id=self.node_id, name=self._name, token=spec.token,
                    policy_digest=self.policy_digest, send=spec.send, receive=spec.receive,
                    hlc=self._clock(), protocol=PROTOCOL,
                )))
                reply = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
                if reply is None or reply.WhichOneof("kind") != "hello":
                    raise LinkRefused("the peer did not answer the handshake")
                hello = reply.hello
                self._check_peer(hello)
                cursor = await self._store.register_peer(
                    PeerRegistration(hello.node_id, hello.name, spec.url, "parent")
                )
                await stream.send(pb.LinkMessage(start=pb.Start(cursor=cursor)))
                state = LinkState(hello.node_id, spec.url, hello.name, spec.url)
                log.info("linked to %s (node %s, %s)", spec.url, hello.node_id, hello.name)
                await self._run(
                    stream, state, send_from=hello.cursor if spec.send else None,
                    receive=spec.receive,
                )
            finally:
                call.cancel()

    def _clock(self) -> int:
        replica = self._store.replica
        return replica.clock.last if replica is not None else 0

    def _check_peer(self, hello: pb.Hello) -> None:
        if hello.protocol != PROTOCOL:
            raise LinkRefused(f"protocol {hello.protocol} is not {PROTOCOL}")
        if hello.node_id == self.node_id:
            raise LinkRefused("the peer is this node itself")
        if not hello.node_id:
            raise LinkRefused("the peer sent no node id")
        if hello.policy_digest != self.policy_digest:
            raise LinkRefused(
                f"merge policies differ (ours {self.policy_digest}, "
                f"theirs {hello.policy_digest}): every node must run the same policy"
            )

    # -- admitting -------------------------------------------------------------------------------

    async def admit(self, context: grpc.aio.ServicerContext) -> None:
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this node is shutting down")
            return
        task = asyncio.current_task()
        assert task is not None
        self._admitted.add(task)
        try:
            await self._admit(context)
        finally:
            self._admitted.discard(task)

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        stream = _Stream(context)
        first = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
        if first is None or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a link starts with Hello")
            return
        hello = first.hello
        if self._token is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this node admits no links (start it with --bootstrap-token)",
            )
            return
        # Constant time, so the token cannot be guessed byte by byte; never logged.
        if not hmac.compare_digest(hello.token.encode(), self._token.encode()):
            log.warning("link from %s refused: wrong bootstrap token", context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "bootstrap token rejected")
            return
        try:
            self._check_peer(hello)
        except LinkRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            return
        address = context.peer()
        cursor = await self._store.register_peer(
            PeerRegistration(hello.node_id, hello.name, address, "child")
        )
        await stream.send(pb.LinkMessage(hello=pb.Hello(
            node_id=self.node_id, name=self._name, policy_digest=self.policy_digest,
            send=hello.receive, receive=hello.send, cursor=cursor, hlc=self._clock(),
            protocol=PROTOCOL,
        )))
        start = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
        if start is None or start.WhichOneof("kind") != "start":
            return
        state = LinkState(hello.node_id, address, hello.name)
        log.info("admitted link from %s (node %s, %s)", address, hello.node_id, hello.name)
        await self._run(
            stream, state, send_from=start.start.cursor if hello.receive else None,
            receive=hello.send,
        )

    # -- a live link -----------------------------------------------------------------------------

    async def _run(
        self, stream: _Stream, state: LinkState, send_from: int | None, receive: bool
    ) -> None:
        key = id(state)
        self.live[key] = state
        tasks = [asyncio.ensure_future(self._receive(stream, state, receive))]
        if send_from is not None:
            tasks.append(asyncio.ensure_future(self._send(stream, state, send_from)))
        else:
            # Entries flow the other way only; heartbeats still tell the other side we live.
            tasks.append(asyncio.ensure_future(self._heartbeats(stream)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended the link
        finally:
            # Bounded: a send stuck on a dead connection must not keep the link (or a
            # shutdown) waiting. What ended the link was re-raised above.
            await cancel_and_wait(*tasks, timeout=1.0, log_errors=False)
            self.live.pop(key, None)
            log.info("link with node %s (%s) closed", state.peer, state.address)

    async def _send(self, stream: _Stream, state: LinkState, cursor: int) -> None:
        wake = asyncio.Event()
        self._wakers.add(wake)
        backend = self._store.backend
        try:
            high = await backend.read_async(lambda view: repl_tables(view).max_ingest())
            if cursor > high:
                # The peer knows a longer history of this node than it has (a restored
                # database): send everything again; duplicates are dropped over there.
                cursor = 0
            last_sent = time.monotonic()
            while True:
                wake.clear()
                start = cursor

                rows, covered, high = await backend.read_async(
                    functools.partial(_entries_after, after=start, peer=state.peer)
                )
                entries: list[pb.Entry] = []
                size = 0
                cut: int | None = None
                for ingest, entry in rows:
                    entries.append(to_wire(entry))
                    size += len(entry.value) + len(entry.key)
                    if size > BATCH_BYTES:
                        cut = ingest  # bounded message size: the rest goes in the next batch
                        break
                # Entries the peer has already (its own, or ones it sent) move the cursor
                # too; with nothing else to send, the next heartbeat carries it rather than
                # a batch of its own (each batch costs the peer a durable commit).
                cursor = cut if cut is not None else covered
                if entries:
                    batch = pb.Batch(entries=entries, cursor=cursor, high=high,
                                     hlc=self._clock())
                    await stream.send(pb.LinkMessage(batch=batch))
                    last_sent = time.monotonic()
                    if cut is not None or len(rows) == BATCH_ENTRIES:
                        continue  # more to catch up on
                idle = time.monotonic() - last_sent
                if idle < HEARTBEAT_SECONDS:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS - idle)
                # By time, not only when nothing woke us: a busy node (many links committing)
                # must still tell every peer it is alive.
                if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                    await stream.send(pb.LinkMessage(batch=pb.Batch(
                        cursor=cursor, high=high, hlc=self._clock()
                    )))
                    last_sent = time.monotonic()
        finally:
            self._wakers.discard(wake)

    async def _heartbeats(self, stream: _Stream) -> None:
        while True:
            await stream.send(pb.LinkMessage(batch=pb.Batch(hlc=self._clock())))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _receive(self, stream: _Stream, state: LinkState, receive: bool) -> None:
        cursor: int | None = None
        recorded = 0.0  # when the peer's row (cursor, last seen) was last written
        while True:
            msg = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
            if msg is None:
                return
            kind = msg.WhichOneof("kind")
            if kind == "refused":
                notice = msg.refused
                log.warning("node %s refused entry %s/%d: %s",
                            state.peer, notice.origin, notice.seq, notice.reason)
                continue
            if kind != "batch":
                continue
            batch = msg.batch
            if not receive:
                continue  # the link's other direction only: a heartbeat of a receive-only peer
            if (
                not batch.entries and batch.cursor == cursor
                and time.monotonic() - recorded < PEER_RECORD_SECONDS
            ):
                continue  # a heartbeat with nothing new: no write needed yet
            try:
                check_batch(batch)
            except BadBatch as exc:
                raise LinkRefused(f"node {state.peer} sent a bad batch: {exc}") from exc
            entries, refused = self._admit_entries(batch)
            await self._store.merge(
                MergeRequest(state.peer, entries, batch.cursor, batch.high, refused)
            )
            for refusal in refused:  # recorded and logged here; the sender logs it too
                await stream.send(pb.LinkMessage(refused=pb.Refused(
                    origin=refusal.origin, seq=refusal.seq, reason=refusal.reason
                )))
            cursor = batch.cursor
            recorded = time.monotonic()


    def _admit_entries(self, batch: pb.Batch) -> tuple[list[Entry], list[Refusal]]:
        policy = self._store.replica.policy  # type: ignore[union-attr]
        entries: list[Entry] = []
        refused: list[Refusal] = []
        for msg in batch.entries:
            admitted = admit(msg, policy, self._limits)
            if isinstance(admitted, Refusal):
                refused.append(admitted)
            else:
                entries.append(admitted)
        return entries, refused


class ReplicationService(pb_grpc.ReplicationServicer):
    def __init__(self, replicator: Callable[[], Replicator | None]) -> None:
        self._replicator = replicator

    async def Link(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        replicator = self._replicator()
        if replicator is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replication is not running")
            return
        try:
            await replicator.admit(context)
        except asyncio.CancelledError:
            return  # this node is stopping
        except TimeoutError:
            log.info("link from %s went silent; closing it", context.peer())
        except LinkRefused as exc:
            log.warning("link from %s closed: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            log.info("link from %s ended: %s", context.peer(), exc)


def _entries_after(
    view: object, after: int, peer: str
) -> tuple[list[tuple[int, Entry]], int, int]:
    """A batch of entries to send to ``peer`` after position ``after`` (see entries_after)."""
    return repl_tables(view).entries_after(after, peer, BATCH_ENTRIES)
