"""Prometheus metrics (prometheus-client), served on ``--metrics-address`` as text.

Counters and histograms on hot paths cost about a microsecond (0.5-1.1 us an increment or
observation, 2-2.8 us with a label lookup, timeit on the test machine) and are always kept;
the per-RPC interceptor (about four of those per call) is installed only where /metrics is
served (``--metrics-address``, ``--listen-client-http-urls``, ``--listen-metrics-urls``), so
a server without them pays nothing for it.

Beside shim's own (``shim_*``), the series etcd's alerts and dashboards read, under etcd's
names, labels and meaning where shim has the same thing: a node is its own leader
(``etcd_server_has_leader`` 1, no leader changes), the database's size, in use and quota,
the backend's commit time, and go-grpc-prometheus's per-method request counts by status
(``grpc_server_started_total``, ``grpc_server_handled_total``). What only raft has (WAL
fsyncs, proposals, peer traffic) is not made up.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

# No "_created" series beside each counter and histogram: etcd's Go client exports none.
disable_created_metrics()

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

# -- etcd's names -------------------------------------------------------------------------------

HAS_LEADER = Gauge("etcd_server_has_leader",
                   "Whether or not a leader exists. 1 is existence, 0 is not.")
IS_LEADER = Gauge("etcd_server_is_leader",
                  "Whether or not this member is a leader. 1 if is, 0 otherwise.")
# A shim node takes writes itself: it is its own leader, and that never changes.
HAS_LEADER.set(1)
IS_LEADER.set(1)
LEADER_CHANGES = Counter("etcd_server_leader_changes_seen",
                         "The number of leader changes seen.")
ETCD_DB_SIZE = Gauge("etcd_mvcc_db_total_size_in_bytes",
                     "Total size of the underlying database physically allocated in bytes.")
ETCD_DB_IN_USE = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                       "Total size of the underlying database logically in use in bytes.")
QUOTA_BYTES = Gauge("etcd_server_quota_backend_bytes",
                    "Current backend storage quota size in bytes.")
CURRENT_REVISION = Gauge("etcd_debugging_mvcc_current_revision",
                         "The current revision of store.")
SERVER_VERSION = Gauge("etcd_server_version", "Which version is running. 1 for 'server_version' "
                       "label with current version.", ["server_version"])
BACKEND_COMMIT_SECONDS = Histogram(
    "etcd_disk_backend_commit_duration_seconds",
    "The latency distributions of commit called by backend (a write batch's transaction, "
    "its fsync included).",
    buckets=tuple(0.001 * 2**i for i in range(14)),
)
GRPC_STARTED = Counter("grpc_server_started",
                       "Total number of RPCs started on the server.",
                       ["grpc_type", "grpc_service", "grpc_method"])
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
# grpc-go's names of the status codes, which go-grpc-prometheus puts in grpc_code: the enum
# names in CamelCase, but for two.
_GO_CODES = {
    code: "".join(word.capitalize() for word in code.name.split("_"))
    for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


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
    revision: Callable[[], int], links: Callable[[], int], db_in_use: Callable[[], int],
    quota_bytes: int, version: str,
) -> None:
    """Gauges read on scrape from the running server (``quota_bytes`` <= 0: no quota)."""
    WATCHERS.set_function(watchers)
    LEASES.set_function(leases)
    DB_SIZE.set_function(db_size)
    REVISION.set_function(revision)
    LINKS.set_function(links)
    ETCD_DB_SIZE.set_function(db_size)
    ETCD_DB_IN_USE.set_function(db_in_use)
    CURRENT_REVISION.set_function(revision)
    QUOTA_BYTES.set(max(quota_bytes, 0))  # etcd leaves it at 0 when the quota is off
    SERVER_VERSION.labels(version).set(1)


def observe_commit(seconds: float, requests: int) -> None:
    """A write batch committed: ``requests`` of them in ``seconds``."""
    COMMIT_SECONDS.observe(seconds)
    BACKEND_COMMIT_SECONDS.observe(seconds)
    COMMIT_BATCH_SIZE.observe(requests)


class RequestTimer(grpc.aio.ServerInterceptor):
    """Counts every RPC as go-grpc-prometheus does (started; handled, by status code) and
    times every unary one (streams such as Watch and Link are long-lived: not timed)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            return _unary(handler, service, method)
        return _stream(handler, service, method)


def _code(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    """The call's status in grpc-go's words (``default`` where none was set)."""
    code = context.code()
    return _GO_CODES[code if isinstance(code, grpc.StatusCode) else default]


@contextlib.contextmanager
def _handled(context: grpc.aio.ServicerContext, done: Callable[[str], None]) -> Iterator[None]:
    """Around a call: ``done`` gets the status it ended with, in grpc-go's words."""
    code = "Unknown"
    try:
        yield
        code = _code(context, grpc.StatusCode.OK)
    except grpc.aio.AbortError:
        code = _code(context, grpc.StatusCode.UNKNOWN)
        raise
    except (asyncio.CancelledError, GeneratorExit):  # the client went away
        code = "Canceled"
        raise
    finally:
        done(code)


def _handled_counter(kind: str, service: str, method: str) -> Callable[[str], None]:
    """Counts a method's calls by the status they end with; each status's labelled child
    is looked up once (a lookup costs twice the increment)."""
    children: dict[str, Any] = {}

    def handled(code: str) -> None:
        child = children.get(code)
        if child is None:
            child = children[code] = GRPC_HANDLED.labels(kind, service, method, code)
        child.inc()

    return handled


def _unary(handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
    histogram = REQUEST_SECONDS.labels(method)
    started = GRPC_STARTED.labels("unary", service, method)
    handled = _handled_counter("unary", service, method)
    inner = handler.unary_unary

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started.inc()
        start = time.perf_counter()
        try:
            with _handled(context, handled):
                return await inner(request, context)
        finally:
            histogram.observe(time.perf_counter() - start)

    return grpc.unary_unary_rpc_method_handler(
        timed, handler.request_deserializer, handler.response_serializer
    )


def _stream(handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
    kind = ("bidi_stream" if handler.request_streaming and handler.response_streaming
            else "client_stream" if handler.request_streaming else "server_stream")
    started = GRPC_STARTED.labels(kind, service, method)
    handled = _handled_counter(kind, service, method)

    make = (grpc.stream_unary_rpc_method_handler if not handler.response_streaming
            else grpc.stream_stream_rpc_method_handler if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler)
    inner_stream = handler.stream_stream or handler.unary_stream
    if handler.response_streaming and inspect.isasyncgenfunction(inner_stream):
        async def counted_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started.inc()
            with _handled(context, handled):
                async for reply in inner_stream(request, context):
                    yield reply

        return make(counted_stream, handler.request_deserializer, handler.response_serializer)

    # A coroutine: a client stream's answer, or a stream that writes through its context.
    inner_call = handler.stream_unary or inner_stream

    async def counted_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started.inc()
        with _handled(context, handled):
            return await inner_call(request, context)

    return make(counted_call, handler.request_deserializer, handler.response_serializer)
