"""Prometheus metrics (prometheus-client), served on ``--metrics-address`` as text.

Counters and histograms on hot paths cost about a microsecond and are always kept; the
per-RPC latency interceptor is installed only when metrics are served, so a server without
``--metrics-address`` pays nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)

REQUEST_SECONDS = Histogram(
    "shim_grpc_request_duration_seconds",
    "Time to answer a unary gRPC request, by method.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
COMMIT_BATCH_SIZE = Histogram(
    "shim_commit_batch_requests",
    "Requests committed together in one write transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
COMMIT_SECONDS = Histogram(
    "shim_commit_duration_seconds",
    "Time to apply and durably commit one write batch.",
    buckets=_LATENCY_BUCKETS,
)
WATCH_EVENTS_SENT = Counter("shim_watch_events_sent_total", "Watch events queued to clients.")
REPLICATION_ENTRIES = Counter(
    "shim_replication_entries_total",
    "Entries received from a peer, by outcome (applied, unchanged, duplicate, held, "
    "quarantined).",
    ["peer", "outcome"],
)
REPLICATION_CONFLICTS = Counter(
    "shim_replication_conflicts_total",
    "Entries that needed a merge rule, by rule (replayed: arrived out of order and the key's "
    "entries were folded again; lost: the merge rules kept another write).",
    ["rule"],
)
REPLICATION_LAG_SECONDS = Histogram(
    "shim_replication_lag_seconds",
    "Origin write (its hybrid clock) to applied here, newest entry of each batch, by peer.",
    ["peer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REPLICATION_FORKS = Counter(
    "shim_replication_equivocations_total",
    "Entries found signed by their origin twice with different content (the origin is "
    "flagged in shim status and its entries from there on are left out).",
)
REPLICATION_QUARANTINED = Counter(
    "shim_replication_quarantined_total",
    "Entries set apart: refused on arrival (malformed, against the merge policy, over the "
    "size limits) or impossible to fold (shim status lists the latest reasons).",
)
WATCHERS = Gauge("shim_watchers", "Open watchers.")
LEASES = Gauge("shim_leases", "Leases granted by this node and not yet expired or revoked.")
DB_SIZE = Gauge("shim_db_size_bytes", "Database size on disk, WAL included.")
REVISION = Gauge("shim_revision", "The newest committed revision.")
LINKS = Gauge("shim_replication_links", "Replication links currently up.")


def record_merge(
    peer: str, applied: int, unchanged: int, duplicates: int, conflict_rules: list[str],
    lag_ms: int | None, held: int = 0, quarantined: int = 0,
) -> None:
    """Count a committed batch of a peer's entries."""
    if quarantined:
        REPLICATION_QUARANTINED.inc(quarantined)
    for outcome, count in (("applied", applied), ("unchanged", unchanged),
                           ("duplicate", duplicates), ("held", held),
                           ("quarantined", quarantined)):
        if count:
            REPLICATION_ENTRIES.labels(peer, outcome).inc(count)
    for rule in conflict_rules:
        REPLICATION_CONFLICTS.labels(rule).inc()
    if lag_ms is not None:
        REPLICATION_LAG_SECONDS.labels(peer).observe(max(lag_ms, 0) / 1000)


def serve(address: str) -> str:
    """Start the HTTP exporter thread on ``host:port``; returns the address bound (the real
    port for port 0)."""
    host, _, port = address.rpartition(":")
    httpd, _ = start_http_server(int(port), addr=host or "0.0.0.0")
    return f"{host}:{httpd.server_port}"


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus's text format, and its content type (for the
    gateway's /metrics)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def bind_gauges(
    watchers: Callable[[], int], leases: Callable[[], int], db_size: Callable[[], int],
    revision: Callable[[], int], links: Callable[[], int],
) -> None:
    """Gauges read on scrape from the running server."""
    WATCHERS.set_function(watchers)
    LEASES.set_function(leases)
    DB_SIZE.set_function(db_size)
    REVISION.set_function(revision)
    LINKS.set_function(links)


class RequestTimer(grpc.aio.ServerInterceptor):
    """Times every unary RPC (streams such as Watch and Link are long-lived: not timed)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        histogram = REQUEST_SECONDS.labels(details.method.rsplit("/", 1)[-1])
        inner = handler.unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                histogram.observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            timed, handler.request_deserializer, handler.response_serializer
        )
