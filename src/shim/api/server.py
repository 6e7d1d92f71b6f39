"""Assembles the gRPC server: services, health, limits, and graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shim import metrics
from shim.api import rpc
from shim.api.cluster import ClusterService, Replica
from shim.api.concurrency import Recipes
from shim.api.election import ElectionService
from shim.api.errors import from_store_error
from shim.api.gate import Gate
from shim.api.header import Identity
from shim.api.kv import KVService
from shim.api.lease import LeaseKeeper, LeaseService
from shim.api.lock import LockService
from shim.api.maintenance import MaintenanceService
from shim.api.watch import WatchService
from shim.auth.guard import Guard
from shim.auth.passwords import Hasher
from shim.auth.service import AuthService
from shim.auth.tokens import TokenIssuer
from shim.backend.base import Backend
from shim.config import (
    METRICS_URLS_FLAG,
    ConfigError,
    HttpListen,
    ServerConfig,
    grpc_listen_target,
    parse_http_urls,
)
from shim.etcd_version import ETCD_VERSION
from shim.gateway.gateway import Gateway
from shim.gateway.health import HealthProbe
from shim.gateway.serve import GatewayServer
from shim.mvcc.errors import StoreError
from shim.mvcc.owned import OwnedStore
from shim.mvcc.store import Store
from shim.mvcc.watch import WatchHub
from shim.pb import rpc_pb2
from shim.procs.remote import RemoteLessor, RemoteWritePath, StoreLink
from shim.replication import link_service, links, resolve, transport
from shim.replication.admission import IngestLimits
from shim.replication.topology import link_specs, load_topology

log = logging.getLogger(__name__)

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC frames exceed the request limit by this much
SHUTDOWN_GRACE_SECONDS = 10.0
# How long after gRPC's shutdown starts the watch streams end: time for its GOAWAY to reach
# the clients first.
STREAMS_END_AFTER_SECONDS = 0.2
GRPC_RECEIVE_FACTOR = 4
PENDING_CALLS_LIMIT = 2**31 - 1  # calls gRPC holds for the handlers: as many as arrive, as etcd


def check_can_listen(target: str) -> None:
    """Fail with a one-line reason when ``target`` cannot be bound.

    gRPC itself reports a failed bind with a C-level log line on stderr and a vague message,
    so try the bind first, the way gRPC will do it (SO_REUSEADDR, no SO_REUSEPORT); like gRPC,
    one address of the host that binds is enough.
    """
    host, _, port_text = target.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen address {target!r} needs a numeric port") from None
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {target}: {exc.strerror}") from None
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                failures.append(exc)
            else:
                return
    if any(exc.errno == errno.EADDRINUSE for exc in failures):
        raise ConfigError(f"cannot listen on {target}: address already in use")
    if failures:
        raise ConfigError(f"cannot listen on {target}: {failures[0].strerror}")


def check_listen_addresses(config: ServerConfig) -> None:
    """Every port the server is to serve (gRPC, and the gateway's) can be bound."""
    tls = config.tls is not None
    check_can_listen(grpc_listen_target(config.listen_address, tls=tls))
    for listen in parse_http_urls(config.client_http_urls, tls=tls):
        check_can_listen(listen.target)
    for listen in parse_http_urls(config.metrics_urls, tls, METRICS_URLS_FLAG):
        check_can_listen(listen.target)


class HealthService(health.aio.HealthServicer):
    """grpc.health.v1 as grpc-go's server answers it: a service nobody set is NOT_FOUND
    "unknown service" (Python's own answers without the words)."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service != "":  # the server as a whole is the one service shim reports
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return await super().Check(request, context)


class ShimServer:
    """One serving process: a store on a backend, behind a gRPC server.

    Alone, it owns the store: the Writer, the lessor, the janitor and replication. As one of
    the serving processes of ``--processes N`` (``store_link`` given), the store process owns
    them, and this process reads the database itself and sends every write and lease call
    there; the port is shared with its siblings (SO_REUSEPORT).
    """

    def __init__(
        self,
        config: ServerConfig,
        backend: Backend,
        owned: OwnedStore | None = None,
        store_link: StoreLink | None = None,
        replica: resolve.Replica | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self._store_link = store_link
        self._owned = owned
        self.lessor: LeaseKeeper
        if owned is not None:
            self.store, self.lessor = owned.store, owned.lessor
        else:
            assert store_link is not None, "a serving process needs the store or a link to it"
            self.store = Store(
                backend,
                write_path=lambda on_commit: RemoteWritePath(store_link, on_commit, backend),
            )
            self.lessor = RemoteLessor(store_link)
        # This node's part in replication (None: it neither links nor admits links).
        self._replica = replica
        # The link service answers on every SQLite node that owns its store (refusing links
        # where there is no replication).
        self._link_service = backend.replicates and store_link is None
        self._links = link_specs(config) if replica is not None else []
        self.replicator: links.Replicator | None = None
        self.identity = Identity.from_node_id(backend.node_id)
        self.guard = Guard(
            self.store, TokenIssuer(config.auth_token_ttl),
            client_cert_auth=config.tls is not None and config.tls.client_cert_auth,
        )
        self.health = HealthService()
        self.gate = Gate()
        self.hub: WatchHub | None = None
        self._server: grpc.aio.Server | None = None
        self.client_urls: list[str] = []  # MemberList's URLs of this node (set once bound)
        self.methods: dict[str, rpc.Method] = {}
        self._http_servers: list[GatewayServer] = []
        self.http_urls: list[str] = []  # the gateway's, as bound
        self.metrics_urls: list[str] = []  # --listen-metrics-urls, as bound
        self._stopping = False

    async def start(self) -> None:
        tls = self.config.tls
        target = grpc_listen_target(self.config.listen_address, tls=tls is not None)
        shares_port = self._store_link is not None
        http_listens = parse_http_urls(self.config.client_http_urls, tls=tls is not None)
        metrics_listens = parse_http_urls(self.config.metrics_urls, tls is not None,
                                          METRICS_URLS_FLAG)
        await (self._owned.start() if self._owned is not None else self.store.start())
        hub = WatchHub(
            revision=self.store.revision,
            read_entries=self.store.read_watch_entries,
            fill_header=lambda resp, revision: self._fill_watch_header(resp, revision),
            # etcd fragments watch responses at the gRPC message limit.
            max_response_bytes=self.config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            current_revision=self._database_revision if shares_port else None,
        )
        self.store.add_commit_listener(hub.on_commit)
        # Commits of other servers on a shared database (PostgreSQL) reach the hub as
        # revisions to read from the log, in order with this server's own.
        loop = asyncio.get_running_loop()

        def on_external_commit(revision: int) -> None:
            loop.call_soon_threadsafe(hub.on_external_commit, revision)

        self.backend.set_commit_listener(on_external_commit)
        hub.start(self.config.watch_progress_notify_interval)
        self.hub = hub
        if self._replica is not None:
            self.replicator = links.Replicator(
                self.store, self._replica, self.config.name, self.config.bootstrap_token,
                self._links, self.config.peer_tls, max_message_bytes=self._grpc_receive_limit,
                limits=IngestLimits(self.config.max_request_bytes),
                batch_delay=self.config.replication_batch_delay,
            )
        interceptors = []
        if self.config.metrics_address or http_listens or metrics_listens:
            # Wherever /metrics is served, every RPC is counted (as etcd always counts).
            interceptors.append(metrics.RequestTimer())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # shim.api.rpc refuses messages over the limit with etcd's words; gRPC
                # itself refuses those far over it, before they take any more memory.
                ("grpc.max_receive_message_length", self._grpc_receive_limit),
                ("grpc.max_send_message_length", 2**31 - 1),
                # grpc-core cancels calls that wait for the handler past 1000 (some of them)
                # and 3000 (all): a client's burst of concurrent requests on one connection
                # (3000 puts from Node's etcd3) got CANCELLED. etcd's grpc-go queues every
                # stream (its stream limit is 2^32-1), so shim queues them too.
                ("grpc.server.max_pending_requests", PENDING_CALLS_LIMIT),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_LIMIT),
                # One server per port: a second one must fail to bind, not share the port
                # (the serving processes of one server share it on purpose).
                ("grpc.so_reuseport", 1 if shares_port else 0),
                # Keepalive and flow control for etcd clients and replication links alike.
                *transport.server_options(),
            ]
        )
        scheme = "https" if tls is not None else "http"
        self.methods = rpc.service_methods(
            self._client_services(hub), self.config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            self.gate,
        )
        rpc.add_to_server(server, self.methods)
        if self._link_service:
            link_service.add_to_server(server, lambda: self.replicator)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            if tls is not None:
                port = server.add_secure_port(target, tls.credentials())
            else:
                port = server.add_insecure_port(target)
        except RuntimeError as exc:
            await self._close_store()
            raise ConfigError(f"cannot listen on {target}: {exc}") from exc
        if port == 0:
            await self._close_store()
            raise ConfigError(f"cannot listen on {target}")
        host = target.rsplit(":", 1)[0]
        bound = f"{host}:{port}"  # the real port when the address asked for port 0
        self.client_urls = list(self.config.advertise_client_urls) or [f"{scheme}://{bound}"]
        if self.replicator is not None:
            self.replicator.client_urls = self.client_urls  # before any dial runs: no await yet
        await server.start()
        self._server = server
        if self._owned is not None and (
            self.config.metrics_address or http_listens or metrics_listens
        ):
            self._bind_metrics(hub)
        if self.config.metrics_address:
            self._serve_metrics(self.config.metrics_address)
        if http_listens:
            self.http_urls = await self._start_http(http_listens, shares_port, api=True)
        if metrics_listens:
            self.metrics_urls = await self._start_http(metrics_listens, shares_port, api=False)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving etcd v3 API on %s (%s, datastore %s)", bound,
            "TLS" + (", client certificates required" if tls and tls.client_cert_auth else "")
            if tls else "plaintext", self.backend.location,
        )

    @property
    def _grpc_receive_limit(self) -> int:
        """gRPC's own limit on a received message: also what a replication link accepts, which
        holds the largest entry a client can cause (a value of --max-request-bytes and its
        field operations) with room to spare."""
        return GRPC_RECEIVE_FACTOR * (self.config.max_request_bytes + GRPC_OVERHEAD_BYTES)

    def _linked_replicas(self) -> list[Replica]:
        if self.replicator is None:
            return []
        return [
            Replica(link.peer, link.name, tuple(link.client_urls))
            for link in self.replicator.live.values()
        ]

    def _client_services(self, hub: WatchHub) -> dict[str, object]:
        """The etcd v3 services clients call, by full service name: gRPC and the HTTP/JSON
        gateway serve the same ones."""
        recipes = Recipes(self.store, self.lessor, hub, self.config.max_request_bytes)
        guard = self.guard
        return {
            "etcdserverpb.KV": KVService(
                self.store, self.identity, self.config.max_request_bytes, guard
            ),
            "etcdserverpb.Watch": WatchService(hub, guard),
            "etcdserverpb.Lease": LeaseService(self.lessor, self.store, self.identity, guard),
            "etcdserverpb.Maintenance": MaintenanceService(self.store, self.identity, guard),
            "etcdserverpb.Cluster": ClusterService(
                self.store, self.identity, self.config.name, lambda: self.client_urls, guard,
                self._linked_replicas,
            ),
            "etcdserverpb.Auth": AuthService(
                self.store, self.identity, guard, Hasher(cost=self.config.bcrypt_cost),
                self.config.max_request_bytes
            ),
            "v3lockpb.Lock": LockService(recipes, self.identity, guard),
            "v3electionpb.Election": ElectionService(recipes, self.identity, guard),
        }

    def _database_revision(self) -> int:
        with self.backend.read() as view:
            return view.revision()

    def _bind_metrics(self, hub: WatchHub) -> None:
        replicator = self.replicator
        assert self._owned is not None  # metrics are refused with --processes
        metrics.bind_gauges(
            watchers=hub.watcher_count,
            leases=self._owned.lessor.count,
            db_size=self.backend.size_bytes,
            revision=lambda: self.store.revision,
            links=lambda: len(replicator.live) if replicator is not None else 0,
            db_in_use=self.backend.size_in_use_bytes,
            quota_bytes=self.config.quota_backend_bytes,
            version=ETCD_VERSION,
        )

    def _serve_metrics(self, address: str) -> None:
        try:
            bound = metrics.serve(address)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc}") from exc
        log.info("serving Prometheus metrics on http://%s/metrics", bound)

    async def _start_http(
        self, listens: list[HttpListen], reuse_port: bool, api: bool
    ) -> list[str]:
        """The gateway (``api``), or only its /metrics and health paths, on ``listens``."""
        gateway = GatewayServer(Gateway(
            self.methods,
            max_message_bytes=self.config.max_request_bytes + GRPC_OVERHEAD_BYTES,
            health=HealthProbe(alarms=self._alarm_types, read=self._read_problem),
            version=ETCD_VERSION,
            # One process's numbers would pass for the server's with --processes N.
            metrics=metrics.exposition if self._owned is not None else lambda: None,
            api=api,
        ), "the HTTP/JSON gateway" if api else "metrics and health")
        self._http_servers.append(gateway)
        try:
            return await gateway.start(listens, self.config.tls, reuse_port)
        except ConfigError:
            await self.stop()
            raise

    async def _alarm_types(self) -> list[int]:
        try:
            return [alarm for _, alarm in await self.store.alarms()]
        except StoreError:
            return []  # the read check that follows reports the store's failure

    async def _read_problem(self) -> str | None:
        """Why a read fails (None: it went through): /health and /readyz check one, as etcd."""
        if self._stopping:
            return "shim: stopping"
        try:
            await self.store.range(rpc_pb2.RangeRequest(key=b"\0", keys_only=True, limit=1))
        except StoreError as exc:
            return from_store_error(exc).message
        return None

    async def _close_store(self) -> None:
        if self.replicator is not None:
            await self.replicator.close()
        if self._owned is not None:
            await self._owned.stop()
        else:
            await self.store.close()
            assert self._store_link is not None
            self._store_link.close()

    def reload_topology(self) -> None:
        """SIGHUP: dial exactly the links the flags and the topology file name now."""
        if self.replicator is None or self.config.topology_file is None:
            return
        try:
            load_topology(self.config.topology_file)  # report a broken file, keep the links
            self.replicator.set_links(link_specs(self.config))
        except ConfigError as exc:
            log.error("topology not reloaded: %s", exc)
            return
        log.info("topology reloaded from %s", self.config.topology_file)

    def _fill_watch_header(self, resp: rpc_pb2.WatchResponse, revision: int) -> None:
        resp.header.revision = revision
        self.identity.fill(resp.header)

    async def stop(self) -> None:
        """Refuse new calls, let the ones received finish, then drain the write path."""
        self._stopping = True
        if self._server is not None:
            deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
            self.gate.close()
            await self.health.enter_graceful_shutdown()
            # Links, and the watches of calls waiting on the store (a Lock's turn, an
            # Observe), never finish by themselves: end them now that no new ones can start.
            if self.hub is not None:
                self.hub.end_streams(client=False)
            if self.replicator is not None:
                await self.replicator.close()
            await self.gate.drain(deadline)
            if self.hub is not None:
                self.hub.end_streams(client=False)  # one that was starting as the gate closed
            grace = max(deadline - time.monotonic(), 0.0)
            stopping = asyncio.gather(
                self._server.stop(grace),
                *(http.close(grace) for http in self._http_servers),
            )
            # Watch streams never finish by themselves either. They end (UNAVAILABLE) only
            # once gRPC has closed the port and told its clients to go away: a client that
            # retries at once (etcd's Go client does, for a watch) then waits for the server
            # to be back, as after etcd's stop, instead of opening new streams on this
            # connection until one meets gRPC's shutdown and ends CANCELLED, which it does
            # not retry. Until then they deliver what the drained calls wrote.
            await asyncio.sleep(STREAMS_END_AFTER_SECONDS)
            if self.hub is not None:
                self.hub.end_streams(client=True)
            await stopping
            self._server = None
            self._http_servers = []
        self.backend.set_commit_listener(None)
        if self.hub is not None:
            await self.hub.close()
        await self._close_store()
