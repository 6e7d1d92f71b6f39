"""Assembles the gRPC server: services, health, limits, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shim.api.cluster import ClusterService
from shim.api.header import Identity
from shim.api.kv import KVService
from shim.api.maintenance import MaintenanceService
from shim.backend.sqlite import SqliteBackend
from shim.config import ConfigError, ServerConfig, grpc_listen_target, parse_datastore_endpoint
from shim.mvcc.store import Store
from shim.pb import rpc_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets gRPC frames exceed the request limit by this much
SHUTDOWN_GRACE_SECONDS = 10.0


def open_backend(config: ServerConfig) -> SqliteBackend:
    endpoint = parse_datastore_endpoint(config.datastore_endpoint)
    backend = SqliteBackend(endpoint.path, synchronous=config.sqlite_synchronous)
    backend.open()
    return backend


class ShimServer:
    """One serving process: a store on a backend, behind a gRPC server."""

    def __init__(self, config: ServerConfig, backend: SqliteBackend) -> None:
        self.config = config
        self.backend = backend
        self.store = Store(backend)
        self.identity = Identity.from_node_id(backend.node_id)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.client_url = ""

    async def start(self) -> None:
        target = grpc_listen_target(self.config.listen_address)
        await self.store.start()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length",
                 self.config.max_request_bytes + GRPC_OVERHEAD_BYTES),
                ("grpc.max_send_message_length", 2**31 - 1),
                # One server per port: a second one must fail to bind, not share the port.
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        rpc_pb2_grpc.add_KVServicer_to_server(
            KVService(self.store, self.identity, self.config.max_request_bytes), server
        )
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(
            MaintenanceService(self.store, self.identity), server
        )
        self.client_url = f"http://{target}"
        rpc_pb2_grpc.add_ClusterServicer_to_server(
            ClusterService(self.store, self.identity, self.config.name, lambda: [self.client_url]),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:
            await self.store.close()
            raise ConfigError(f"cannot listen on {target}: {exc}") from exc
        if port == 0:
            await self.store.close()
            raise ConfigError(f"cannot listen on {target}")
        host = target.rsplit(":", 1)[0]
        self.client_url = f"http://{host}:{port}"
        await server.start()
        self._server = server
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("serving etcd v3 API on %s (datastore %s)", target, self.backend.path)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, then drain the write path."""
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None
        await self.store.close()


async def serve(config: ServerConfig) -> None:
    backend = open_backend(config)
    try:
        server = ShimServer(config, backend)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await server.stop()
    finally:
        backend.close()
    log.info("stopped; database closed cleanly")
