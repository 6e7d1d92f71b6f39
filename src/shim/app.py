"""The composition root: how a shim server is put together, started and stopped.

It chooses and opens the backend, builds the store with its lessor, janitor and replication
settings, and runs either one serving process (``ShimServer``: gRPC, the gateway, the watch hub
and the replication links) or the store process of ``--processes N`` with its serving processes.
It owns start-up, the signals (SIGTERM/SIGINT stop, SIGHUP reloads the topology) and shutdown.
``shim.api`` only registers the etcd services; nothing below this module imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
from collections.abc import Iterator

from shim import event_loop
from shim.api.server import ShimServer, check_listen_addresses
from shim.backend.base import Backend, BackendOpenError
from shim.backend.sqlite import SqliteBackend
from shim.config import (
    METRICS_URLS_FLAG,
    ConfigError,
    PostgresEndpoint,
    ServerConfig,
    check_addresses,
    grpc_listen_target,
    parse_datastore_endpoint,
    parse_http_urls,
)
from shim.mvcc.janitor import Janitor, JanitorSettings
from shim.mvcc.lease import Lessor
from shim.mvcc.owned import OwnedStore
from shim.mvcc.store import Store
from shim.procs.store_process import ServingProcessFailed, StoreProcess
from shim.replication import retention
from shim.replication.policy import Policy, PolicyError
from shim.replication.resolve import Replica
from shim.replication.signing import Signer
from shim.replication.tables import tables
from shim.tasks import cancel_and_wait
from shim.tls import verifying_as_etcd

log = logging.getLogger(__name__)

__all__ = ["ServingProcessFailed", "serve"]


def open_backend(config: ServerConfig) -> Backend:
    endpoint = parse_datastore_endpoint(config.datastore_endpoint)
    backend: Backend
    if isinstance(endpoint, PostgresEndpoint) and wants_replication(config):
        raise ConfigError(REPLICATION_NEEDS_SQLITE)  # before connecting or migrating anything
    if isinstance(endpoint, PostgresEndpoint):
        try:
            from shim.backend.postgres import PostgresBackend
        except ImportError as exc:
            raise ConfigError(
                f"postgres:// needs asyncpg ({exc.name} is missing): pip install asyncpg, "
                "or install shim with its postgres extra (pip install '.[postgres]')"
            ) from None
        backend = PostgresBackend(
            endpoint, ssl=datastore_ssl(config),
            loop_factory=event_loop.loop_factory(config.event_loop),
        )
    else:
        if config.datastore_cafile or config.datastore_certfile or config.datastore_keyfile:
            raise ConfigError("--datastore-cafile/-certfile/-keyfile apply to postgres:// only")
        backend = SqliteBackend(endpoint.path, synchronous=config.sqlite_synchronous)
    backend.open()
    return backend


REPLICATION_NEEDS_SQLITE = (
    "replication (--join, --bootstrap-token, --topology) needs the SQLite datastore; "
    "servers sharing one PostgreSQL database already share their data"
)


def wants_replication(config: ServerConfig) -> bool:
    return bool(config.joins or config.bootstrap_token or config.topology_file)


def datastore_ssl(config: ServerConfig) -> ssl.SSLContext | None:
    """TLS to PostgreSQL from --datastore-cafile/--datastore-certfile/--datastore-keyfile:
    the server is verified against the CA (and its host name); the client certificate, if
    given, is presented."""
    cafile, certfile, keyfile = (
        config.datastore_cafile, config.datastore_certfile, config.datastore_keyfile
    )
    if cafile is None and certfile is None and keyfile is None:
        return None
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--datastore-certfile and --datastore-keyfile go together")
    try:
        context = verifying_as_etcd(
            ssl.create_default_context(cafile=str(cafile) if cafile else None)
        )
        if certfile is not None and keyfile is not None:
            context.load_cert_chain(str(certfile), str(keyfile))
    except FileNotFoundError as exc:
        raise ConfigError(f"datastore TLS: {exc.filename}: {exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"datastore TLS: cannot load certificates: {exc}") from None
    return context


def make_replica(config: ServerConfig, backend: Backend) -> Replica | None:
    """This node's part in replication, or None when it has none to play: it links to no
    node, admits no links, and its database keeps no entries from earlier links. Such a node
    pays nothing for replication on its writes; when it is first linked, the live keys are
    recorded as entries at start (``Replica.start``)."""
    if not backend.replicates:
        if wants_replication(config):
            raise ConfigError(REPLICATION_NEEDS_SQLITE)
        return None
    try:
        policy = Policy.load(config.merge_policy_file)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    if not wants_replication(config) and not _has_replicated(backend):
        return None
    return Replica(backend.node_id, policy, config.max_clock_skew_ms, signer=Signer())


def _has_replicated(backend: Backend) -> bool:
    """Whether the database keeps replication entries or peers (it was linked before)."""
    with backend.read() as view:
        repl = tables(view)
        return not repl.is_empty() or bool(repl.peers())


def own_store(config: ServerConfig, backend: Backend, replica: Replica | None) -> OwnedStore:
    """The write path's store, lessor and janitor, as the settings say."""
    store = Store(backend, replica, quota_bytes=config.quota_backend_bytes)
    prune = (
        functools.partial(retention.prune, store, config.replication_retention)
        if replica is not None else None
    )
    return OwnedStore(store, Lessor(store), Janitor(store, JanitorSettings(
        config.auto_compaction_mode, config.auto_compaction_retention,
        config.maintenance_interval,
    ), prune))


def check_processes(config: ServerConfig) -> None:
    """What --processes N > 1 cannot be combined with (yet), refused before anything opens."""
    if config.processes == 1:
        return
    if isinstance(parse_datastore_endpoint(config.datastore_endpoint), PostgresEndpoint):
        raise ConfigError(
            "--processes needs the SQLite datastore; with PostgreSQL, run several shim "
            "servers on the same database instead"
        )
    if wants_replication(config):
        raise ConfigError(
            "--processes cannot be combined with replication (--join, --bootstrap-token, "
            "--topology) yet"
        )
    if config.metrics_address:
        raise ConfigError("--processes cannot be combined with --metrics-address yet")
    target = grpc_listen_target(config.listen_address, tls=config.tls is not None)
    if target.rsplit(":", 1)[-1] == "0":
        raise ConfigError("--processes needs a fixed port in --listen-address (not 0)")
    if any(listen.port == 0 for listen in parse_http_urls(config.client_http_urls, tls=True)):
        raise ConfigError("--processes needs fixed ports in --listen-client-http-urls (not 0)")
    if any(listen.port == 0
           for listen in parse_http_urls(config.metrics_urls, True, METRICS_URLS_FLAG)):
        raise ConfigError(f"--processes needs fixed ports in {METRICS_URLS_FLAG} (not 0)")


async def serve(config: ServerConfig) -> None:
    check_addresses(config)
    check_processes(config)
    backend = open_backend(config)
    try:
        if config.processes > 1:
            await serve_processes(config, backend)
        else:
            await _serve_alone(config, backend)
    finally:
        backend.close()
    log.info("stopped; database closed cleanly")


@contextlib.contextmanager
def database_errors_reported(backend: Backend) -> Iterator[None]:
    """Damage the open checks do not reach (a corrupted table) shows on the first read, while
    the server starts: one line for the operator, not a traceback."""
    try:
        yield
    except backend.errors as exc:
        raise BackendOpenError(
            f"cannot use database {backend.location}: {backend.describe_error(exc)}"
        ) from exc


async def _serve_alone(config: ServerConfig, backend: Backend) -> None:
    replica = make_replica(config, backend)
    server = ShimServer(
        config, backend, owned=own_store(config, backend, replica), replica=replica
    )
    check_listen_addresses(config)
    with database_errors_reported(backend):
        await server.start()
    stop = stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload_topology)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


async def serve_processes(config: ServerConfig, backend: Backend) -> None:
    """Run the store process until SIGTERM/SIGINT, or until a serving process dies."""
    owned = own_store(config, backend, make_replica(config, backend))
    server = StoreProcess(config, backend, owned)
    check_listen_addresses(config)  # before the serving processes start on them
    stop = stop_on_signals()
    with database_errors_reported(backend):
        await server.start()
    stopped = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait((stopped, server.failed), return_when=asyncio.FIRST_COMPLETED)
    failure = server.failed.result() if server.failed.done() else None
    if failure is not None:
        log.error("%s; stopping the server", failure)
    else:
        log.info("shutting down")
    await cancel_and_wait(stopped)
    await server.stop()
    if failure is not None:
        raise ServingProcessFailed(failure)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets: how every shim process is asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
