"""Links between nodes: a link's life (dialing again, admitting, settling) and the entries it
sends. What it receives is ``link_receiver``; what a live link knows of its peer,
``live_link``; the stream itself and how a link ends, ``link_stream``; the gRPC service that
admits links, ``link_service``.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from shim.config import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_REPLICATION_BATCH_DELAY
from shim.mvcc.errors import StoreError
from shim.mvcc.store import Store
from shim.pb import replication_pb2 as pb
from shim.replication.admission import IngestLimits
from shim.replication.entry import Entry
from shim.replication.framing import (
    GRPC_DEFAULT_MESSAGE_BYTES,
    OutOfRange,
    message_limit,
)
from shim.replication.heartbeat_records import HeartbeatRecorder
from shim.replication.held import release_held_forever
from shim.replication.ingest import fold_deferred
from shim.replication.link_receiver import LinkReceiver
from shim.replication.link_state import LinkStatus, LinkTracker
from shim.replication.link_stream import (
    EXPECTED_FAILURES,
    HEARTBEAT_SECONDS,
    LINK_METHOD,
    SILENCE_SECONDS,
    LinkRefused,
    LinkSpec,
    LinkStream,
    check_link_numbers,
    describe_failure,
    forget_attempt,
    handshake,
)
from shim.replication.live_link import LinkState
from shim.replication.pacing import Pacer
from shim.replication.redial import STABLE_SECONDS, Redial
from shim.replication.requests import PeerRegistration
from shim.replication.resolve import Replica
from shim.replication.runs import cut_runs, signed_runs
from shim.replication.tables import tables
from shim.replication.transport import COMPRESSION, channel_options
from shim.replication.vectors import (
    SETTLE_SECONDS,
    Heads,
    PeerHolds,
    diverging,
    from_wire,
)
from shim.replication.vectors import to_wire as vector_to_wire
from shim.replication.wire import PROTOCOL, to_wire
from shim.tasks import cancel_and_wait
from shim.tls import PeerTls

log = logging.getLogger(__name__)

BATCH_ENTRIES = 500
ADMITS_NO_LINKS = "this node admits no links (start it with --bootstrap-token)"
# A batch's encoded size, unless one entry alone is larger (up to what the peer accepts).
BATCH_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class _Attempt:
    """One dial attempt: whether the handshake completed."""

    linked: bool = False


class Replicator:
    """Runs this node's links: the ones it dials and the ones it admits."""

    def __init__(
        self,
        store: Store,
        replica: Replica,
        name: str,
        bootstrap_token: str | None,
        links: list[LinkSpec],
        peer_tls: PeerTls | None = None,
        max_message_bytes: int = GRPC_DEFAULT_MESSAGE_BYTES,
        limits: IngestLimits | None = None,
        batch_delay: float = DEFAULT_REPLICATION_BATCH_DELAY,
    ) -> None:
        self._store = store
        # The longest pace of a link's batches (``pacing``; 0: every commit at once).
        self._batch_delay = batch_delay
        self._replica = replica
        self.node_id = replica.node_id
        self.origin = replica.origin
        self.policy_digest = replica.policy.digest
        self._name = name
        # Where this node serves clients and links (set by the server once it has bound its
        # port): told to peers in the Hello, which list them in MemberList.
        self.client_urls: list[str] = []
        self._token = bootstrap_token
        self._peer_tls = peer_tls
        # The largest Link message this node receives (its gRPC receive limit), and so sends.
        self.max_message_bytes = max_message_bytes
        self._specs: dict[str, LinkSpec] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._wakers: set[asyncio.Event] = set()
        self.live: dict[int, LinkState] = {}
        # The origins of peers that send to this node over a live link (by link).
        self._direct: dict[int, str] = {}
        # The URLs this node dials that have a live link.
        self._linked_urls: set[str] = set()
        self._admitted: set[asyncio.Task[Any]] = set()
        self._admitted_trackers: dict[str, LinkTracker] = {}
        self._recording: set[asyncio.Future[None]] = set()
        # Peers' rows as heartbeats leave them, one transaction for all links.
        self._peer_rows = HeartbeatRecorder(store, HEARTBEAT_SECONDS)
        self._closed = False
        # Entries from peers respect the client API's limits (None: etcd's defaults).
        self._receiver = LinkReceiver(
            store, replica, limits or IngestLimits(DEFAULT_MAX_REQUEST_BYTES), self._peer_rows,
            self._heard, functools.partial(self._wake_senders, None),
        )
        store.add_commit_listener(self._wake_senders)
        loop = asyncio.get_running_loop()
        self._release = loop.create_task(
            release_held_forever(store, replica), name="release held entries"
        )
        self._refold = loop.create_task(
            fold_deferred(store), name="fold what a catch-up deferred"
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
                self._direct_changed()  # whether this node is linking may have changed
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
        await self._peer_rows.close()
        await cancel_and_wait(self._release, self._refold)

    def _wake_senders(self, _revisions: object) -> None:
        """After every committed batch: it may have stored entries to send."""
        for event in self._wakers:
            event.set()

    # -- dialing ---------------------------------------------------------------------------------

    async def _record(self, status: LinkStatus | None) -> None:
        if status is not None:
            with contextlib.suppress(StoreError):  # status only: the link goes on without it
                await self._store.write(status)

    def _record_soon(self, status: LinkStatus | None) -> None:
        """Record a link's state behind the link's start, not in its way (the writer may be
        busy with a large merge); the writer applies requests in order, so a later record of
        the same link lands after it."""
        record = asyncio.ensure_future(self._record(status))
        self._recording.add(record)
        record.add_done_callback(self._recording.discard)

    async def _register(self, registration: PeerRegistration) -> tuple[asyncio.Future[int], int]:
        """Record the peer (name, address, role, origin) without waiting for the commit, and
        read the cursor its row holds. After a heal a node's writer may be busy with one
        link's catch-up for a while: the handshakes of its other links must not wait for
        it. The link's first merge waits for the registration (``LinkState.registered``)."""
        registered = asyncio.ensure_future(self._store.write_expecting(int, registration))
        registered.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        row = await self._store.read(lambda view: tables(view).peer(registration.peer))
        return registered, row.cursor if row is not None else 0

    async def _dial_forever(self, spec: LinkSpec) -> None:
        failures = 0
        tracker = LinkTracker(spec.url, "dial")
        redial = Redial()
        while True:
            started = time.monotonic()
            attempt = _Attempt()
            try:
                await self._dial_once(spec, tracker, redial, attempt)
                exc: BaseException = LinkRefused("closed by the peer")
                reason = "closed by the peer"
            except asyncio.CancelledError:
                raise
            except Exception as failure:  # a bug in one link must not end the others
                exc, reason = failure, describe_failure(failure)
                if not isinstance(failure, EXPECTED_FAILURES):
                    log.exception("link to %s failed", spec.url)
            lasted = time.monotonic() - started
            if attempt.linked and lasted >= STABLE_SECONDS:
                failures = 0
            failures += 1
            delay = redial.failed(exc, attempt.linked, lasted)
            forget_attempt(exc)
            level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else logging.DEBUG
            log.log(level, "link to %s down (%s); retrying in %.1fs", spec.url, reason, delay)
            await self._record(tracker.down(reason))
            await asyncio.sleep(delay)

    async def _dial_once(
        self, spec: LinkSpec, tracker: LinkTracker, redial: Redial, attempt: _Attempt
    ) -> None:
        target = spec.target
        options = channel_options(self.max_message_bytes)
        if spec.url.startswith("https://"):
            credentials = (self._peer_tls or PeerTls()).credentials()
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        async with channel:
            # Replies arrive as bytes: LinkStream decodes them.
            call = channel.stream_stream(
                LINK_METHOD, request_serializer=pb.LinkMessage.SerializeToString
            )(compression=COMPRESSION)
            stream = LinkStream(call)
            try:
                hello_msg = pb.LinkMessage(hello=pb.Hello(
                    node_id=self.node_id, name=self._name, token=spec.token,
                    policy_digest=self.policy_digest, send=spec.send, receive=spec.receive,
                    hlc=self._clock(), protocol=PROTOCOL,
                    max_message_bytes=self.max_message_bytes, client_urls=self.client_urls,
                    **await self._holdings(dialing=spec.url),
                ))
                started = time.monotonic()
                # Bounded: a peer cut off by the network is tried again soon, not after
                # TCP's connect timeout, so the link is back within a second of the heal.
                reply = await handshake(channel, call, stream, hello_msg,
                                         redial.connect_timeout())
                redial.linked(time.monotonic() - started)
                if reply is None or reply.WhichOneof("kind") != "hello":
                    raise LinkRefused("the peer did not answer the handshake")
                hello = reply.hello
                self._check_peer(hello)
                registered, cursor = await self._register(PeerRegistration(
                    hello.node_id, hello.name, spec.url, "parent", hello.origin))
                await stream.send(pb.LinkMessage(start=pb.Start(cursor=cursor)))
                # The peer's advertised URLs, else the one that reached it.
                urls = list(hello.client_urls) or [spec.url]
                state = LinkState(hello.node_id, spec.url, hello.name, urls,
                                  hello.max_message_bytes or GRPC_DEFAULT_MESSAGE_BYTES, cursor,
                                  peer_origin=hello.origin, registered=registered,
                                  **_holds(hello))
                log.info("linked to %s (node %s, %s)", spec.url, hello.node_id, hello.name)
                attempt.linked = True
                self._record_soon(tracker.up(hello.node_id))
                self._linked_urls.add(spec.url)
                try:
                    await self._run(stream, state, send=spec.send, receive=spec.receive)
                finally:
                    self._linked_urls.discard(spec.url)
                    self._direct_changed()
            finally:
                call.cancel()

    def _clock(self) -> int:
        return self._replica.clock.last

    async def _holdings(self, dialing: str = "") -> dict[str, Any]:
        """The Hello fields that say what this node holds: its origin, vector, direct peers,
        and whether it is linking to others than the peer it is ``dialing``."""
        heads = await self._store.read(lambda view: tables(view).heads())
        return {"origin": self.origin, "vector": vector_to_wire(heads),
                "direct": sorted(self._direct_origins()), "linking": self._linking(dialing)}

    def _direct_origins(self) -> frozenset[str]:
        return frozenset(self._direct.values())

    def _linking(self, dialing: str = "") -> bool:
        """Whether a link this node dials to receive (other than ``dialing``) is not up: its
        peer's entries may soon come directly."""
        return any(spec.receive and url not in self._linked_urls and url != dialing
                   for url, spec in self._specs.items())

    def _waiting_origins(self) -> frozenset[str]:
        """Origins whose entries this node holds back from relaying: peers that send to it
        over a settling link (they are linking to the others too)."""
        return frozenset(origin for key, origin in self._direct.items()
                         if (state := self.live.get(key)) is not None and state.holds.settling)

    def _settle(self, state: LinkState) -> None:
        """The link settled (the peer's links are up, or the wait ended): relays to the peer,
        and of the peer's entries to the others, go."""
        if state.settle_timer is not None:
            state.settle_timer.cancel()
            state.settle_timer = None
        if not state.holds.settling:
            return
        state.holds.settle()
        for other in self.live.values():
            other.holds.rewind = True
            other.wake.set()

    def _check_peer(self, hello: pb.Hello) -> None:
        refused = grpc.StatusCode.FAILED_PRECONDITION
        if hello.protocol != PROTOCOL:
            raise LinkRefused(f"protocol {hello.protocol} is not {PROTOCOL}", refused)
        if hello.node_id == self.node_id:
            raise LinkRefused("the peer is this node itself", refused)
        if not hello.node_id:
            raise LinkRefused("the peer sent no node id", refused)
        if hello.policy_digest != self.policy_digest:
            raise LinkRefused(
                f"merge policies differ (ours {self.policy_digest}, "
                f"theirs {hello.policy_digest}): every node must run the same policy", refused,
            )
        check_link_numbers("Hello", cursor=hello.cursor, hlc=hello.hlc)
        if not hello.origin or hello.origin == self.origin:
            raise LinkRefused("the peer sent no origin, or this node's own", refused)

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
        """Refusals raise LinkRefused: ReplicationService logs one line and answers it."""
        stream = LinkStream(context)
        context.set_compression(COMPRESSION)
        first = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
        if first is None or first.WhichOneof("kind") != "hello":
            raise LinkRefused("a link starts with Hello")
        hello = first.hello
        if self._token is None:
            raise LinkRefused(ADMITS_NO_LINKS, grpc.StatusCode.PERMISSION_DENIED)
        # Constant time, so the token cannot be guessed byte by byte; never logged.
        if not hmac.compare_digest(hello.token.encode(), self._token.encode()):
            raise LinkRefused("bootstrap token rejected", grpc.StatusCode.PERMISSION_DENIED)
        self._check_peer(hello)
        address = context.peer()
        registered, cursor = await self._register(
            PeerRegistration(hello.node_id, hello.name, address, "child", hello.origin))
        await stream.send(pb.LinkMessage(hello=pb.Hello(
            node_id=self.node_id, name=self._name, policy_digest=self.policy_digest,
            send=hello.receive, receive=hello.send, cursor=cursor, hlc=self._clock(),
            protocol=PROTOCOL, max_message_bytes=self.max_message_bytes,
            client_urls=self.client_urls, **await self._holdings(),
        )))
        start = await asyncio.wait_for(stream.recv(), SILENCE_SECONDS)
        if start is None or start.WhichOneof("kind") != "start":
            return
        check_link_numbers("Start", cursor=start.start.cursor)
        state = LinkState(hello.node_id, address, hello.name, list(hello.client_urls),
                          hello.max_message_bytes or GRPC_DEFAULT_MESSAGE_BYTES, cursor,
                          peer_origin=hello.origin, registered=registered, **_holds(hello))
        log.info("admitted link from %s (node %s, %s)", address, hello.node_id, hello.name)
        tracker = self._admitted_trackers.setdefault(
            hello.node_id, LinkTracker(hello.node_id, "admit"))
        self._record_soon(tracker.up(hello.node_id))
        reason = "the connection ended"  # gRPC cancels the call when the peer goes away
        try:
            await self._run(stream, state, send=hello.receive, receive=hello.send)
            reason = "closed by the peer"
        except Exception as exc:
            reason = describe_failure(exc)
            raise
        finally:
            if not self._closed:
                self._record_soon(tracker.down(reason))  # this task may be cancelled already

    # -- a live link -----------------------------------------------------------------------------

    async def _run(self, stream: LinkStream, state: LinkState, send: bool, receive: bool) -> None:
        key = id(state)
        self.live[key] = state
        if state.holds.settling:
            state.settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_SECONDS, self._settle, state)
        await self._compare_heads(state, state.peer_heads)
        if receive:
            # The peer's own entries reach this node over this link: no one else need relay
            # them here. Every link tells its peer.
            self._direct[key] = state.peer_origin
            self._direct_changed()
        tasks = [asyncio.ensure_future(self._receiver.run(stream, state, receive))]
        if send:
            tasks.append(asyncio.ensure_future(self._send(stream, state)))
        else:
            # Entries flow the other way only; heartbeats still tell the other side we live
            # (and what we hold, so it sends nothing twice).
            tasks.append(asyncio.ensure_future(self._heartbeats(stream, state)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended the link
        finally:
            # Bounded: a send stuck on a dead connection must not keep the link (or a
            # shutdown) waiting. What ended the link was re-raised above.
            await cancel_and_wait(*tasks, timeout=1.0, log_errors=False)
            self._settle(state)  # what the others held back of the peer's entries goes
            self.live.pop(key, None)
            if self._direct.pop(key, None) is not None:
                self._direct_changed()
            log.info("link with node %s (%s) closed", state.peer, state.address)

    async def _heard(self, state: LinkState, have: pb.Have) -> None:
        """The peer told what it holds (its Have): send it nothing it has, settle the link
        if the peer is no longer linking, and compare our chains with its heads."""
        heads = _heads(have.vector)
        state.holds.learn({o: h[0] for o, h in heads.items()}, frozenset(have.direct))
        if not have.linking:
            self._settle(state)
        await self._compare_heads(state, heads)
        state.wake.set()

    async def _compare_heads(self, state: LinkState, heads: Heads) -> None:
        """Origins on which the peer's chain differs from ours: we send it ours again."""
        if any(head for _, head in heads.values()):
            found = await self._store.read(lambda view: diverging(tables(view), heads))
            if found:
                log.warning("node %s holds other entries than this node under origins %s: "
                            "sending ours to compare", state.peer, ", ".join(found))
                state.holds.diverged(found)

    def _direct_changed(self) -> None:
        for state in self.live.values():
            state.wake.set()

    async def _tell(self, stream: LinkStream, state: LinkState, last_told: float) -> float:
        """Send the peer a Have when our direct origins changed, or (at most once a
        heartbeat) our vector advanced; when it was last told."""
        direct, linking = self._direct_origins(), self._linking()
        now = time.monotonic()
        if (direct, linking) == (state.teller.direct, state.teller.linking) and (
            now - last_told < HEARTBEAT_SECONDS
        ):
            return last_told
        heads = await self._store.read(lambda view: tables(view).heads())
        have = state.teller.have(heads, direct, linking)
        if have is not None:
            await stream.send(pb.LinkMessage(have=have))
        return now

    async def _send(self, stream: LinkStream, state: LinkState) -> None:
        """Send the peer the entries it lacks (by its vector), then follow the log."""
        wake = state.wake
        self._wakers.add(wake)
        try:
            origin, holds = self.origin, state.holds
            holds.waiting = self._waiting_origins()
            # One read: an entry committed between two would be past a cursor set to the
            # newest position, and never sent.
            first, high = await self._store.read(
                lambda view: (holds.first_lacking(tables(view), origin), tables(view).max_ingest())
            )
            cursor = high if first is None else first - 1
            last_sent = last_told = time.monotonic()
            pacer = Pacer(self._batch_delay)
            forks_sent = -1
            limit = message_limit(self.max_message_bytes, state.peer_max_message)
            while True:
                wake.clear()
                last_told = await self._tell(stream, state, last_told)
                holds.waiting = self._waiting_origins()
                if self._replica.forks_found != forks_sent:
                    # The proof of every equivocation known here goes to every peer.
                    forks_sent = self._replica.forks_found
                    await self._send_forks(stream, state, cursor)
                if holds.rewind:
                    # The peer no longer gets an origin directly: send what it lacks of it.
                    holds.rewind = False
                    first = await self._store.read(
                        lambda view: holds.first_lacking(tables(view), origin))
                    if first is not None:
                        cursor = min(cursor, first - 1)
                rows, read_on, covered, high = await self._store.read(
                    functools.partial(_entries_after, after=cursor, holds=holds, sender=origin,
                                      sent=state.sent_runs)
                )
                # Cut by encoded size to what both sides accept, after signed entries
                # (``runs``): the rest goes next.
                taken = cut_runs([(ingest, to_wire(entry)) for ingest, entry in rows],
                                 BATCH_BYTES, limit)
                sent = {ingest for ingest, _ in taken}
                left = [ingest for ingest, _ in rows if ingest not in sent | read_on]
                entries = [msg for _, msg in taken]
                for msg in entries:
                    state.sent_runs[msg.origin] = msg.seq
                # Entries the peer has already move the cursor too; with nothing else to
                # send, the next heartbeat carries it rather than a batch of its own (each
                # batch costs the peer a durable commit).
                cursor = min(left) - 1 if left else covered
                if entries:
                    for sent in entries:
                        holds.has(sent.origin, sent.seq)
                    batch = pb.Batch(entries=entries, cursor=cursor, high=high,
                                     hlc=self._clock(), acked=state.applied)
                    await stream.send(pb.LinkMessage(batch=batch))
                    last_sent = time.monotonic()
                    pacer.sent()
                    if left or cursor < high:
                        continue  # more to catch up on
                elif cursor < high:
                    continue  # a page of entries the peer has: read on
                idle = time.monotonic() - last_sent
                if idle < HEARTBEAT_SECONDS:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS - idle)
                    if wake.is_set() and (delay := pacer.delay()) > 0:
                        # What commits meanwhile goes with it, in one batch (``pacing``).
                        await asyncio.sleep(delay)
                # By time, not only when nothing woke us: a busy node (many links committing)
                # must still tell every peer it is alive.
                if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                    await stream.send(pb.LinkMessage(batch=pb.Batch(
                        cursor=cursor, high=high, hlc=self._clock(), acked=state.applied,
                    )))
                    last_sent = time.monotonic()
        finally:
            self._wakers.discard(wake)

    async def _send_forks(self, stream: LinkStream, state: LinkState, cursor: int) -> None:
        forks, high = await self._store.read(
            lambda view: (tables(view).forks(), tables(view).max_ingest()))
        if forks:
            await stream.send(pb.LinkMessage(batch=pb.Batch(
                entries=[to_wire(fork) for fork in forks], cursor=cursor, high=high,
                hlc=self._clock(), acked=state.applied,
            )))

    async def _heartbeats(self, stream: LinkStream, state: LinkState) -> None:
        last_told = 0.0
        while True:
            last_told = await self._tell(stream, state, last_told)
            await stream.send(pb.LinkMessage(batch=pb.Batch(
                hlc=self._clock(), acked=state.applied)))
            state.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), HEARTBEAT_SECONDS)


def _entries_after(
    view: object, after: int, holds: PeerHolds, sender: str, sent: dict[str, int]
) -> tuple[list[tuple[int, Entry]], set[int], int, int]:
    """Up to a page of entries after position ``after`` that the peer lacks (``holds``), with
    each run of an origin that signs its chain read on to a signed entry (``runs``); the
    positions read on beyond the page, the position the page covers up to, and the newest
    position."""
    repl = tables(view)
    high = repl.max_ingest()
    page = repl.positions_after(after, BATCH_ENTRIES)
    wanted = [ingest for ingest, origin, seq in page if holds.lacks(origin, seq, sender)]
    covered = page[-1][0] if len(page) == BATCH_ENTRIES else high
    rows, read_on = signed_runs(repl, repl.entries_at(wanted), sent)
    return rows, read_on, covered, high


def _holds(hello: pb.Hello) -> dict[str, Any]:
    """What the peer says it holds in its Hello (LinkState's fields)."""
    heads = _heads(hello.vector)
    holds = PeerHolds({origin: seq for origin, (seq, _) in heads.items()},
                      frozenset(hello.direct), settling=hello.linking)
    return {"holds": holds, "peer_heads": heads}


def _heads(vector: Iterable[pb.OriginSeq]) -> Heads:
    """A peer's vector as sent (in its Hello or a Have); a bad one ends the link."""
    try:
        return from_wire(vector)
    except OutOfRange as exc:
        raise LinkRefused(str(exc)) from None
