"""The ``shim`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from shim import __version__, allocator, event_loop, open_files
from shim.auth.passwords import BCRYPT_COST, BCRYPT_MAX_COST, BCRYPT_MIN_COST
from shim.backend.sqlite import SYNCHRONOUS_MODES, BackendOpenError
from shim.config import (
    DEFAULT_DATASTORE_ENDPOINT,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REPLICATION_BATCH_DELAY,
    MAX_REPLICATION_BATCH_DELAY,
    ConfigError,
    ServerConfig,
)
from shim.logs import configure_logging
from shim.mvcc.alarms import DEFAULT_QUOTA_BYTES, MAX_SUGGESTED_QUOTA_BYTES

EXIT_USAGE = 2
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shim", description="An etcd v3 compatible datastore on a SQL log."
    )
    parser.add_argument("--version", action="version", version=f"shim {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the server (the default command)")
    add_serve_arguments(serve)
    status = commands.add_parser(
        "status", help="this node's id, revision, peers, cursors, lag and conflicts"
    )
    _add_datastore_argument(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    sql = commands.add_parser(
        "sql", help="run a read-only SQL query on the node's database and print a table"
    )
    _add_datastore_argument(sql)
    sql.add_argument("query", help='e.g. "SELECT * FROM kv LIMIT 10"')
    sql.add_argument("--json", action="store_true", help="print rows as JSON objects")
    snapshot = commands.add_parser(
        "snapshot", help="inspect or restore a file made by `etcdctl snapshot save`"
    )
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", required=True)
    snapshot_status = snapshot_commands.add_parser(
        "status", help="revision, keys and size of a snapshot (checks its SHA-256)"
    )
    snapshot_status.add_argument("file", type=Path)
    snapshot_status.add_argument("--json", action="store_true", help="print JSON")
    restore = snapshot_commands.add_parser(
        "restore", help="make a new database from a snapshot (a new node identity by default)"
    )
    restore.add_argument("file", type=Path)
    _add_datastore_argument(restore)
    restore.add_argument(
        "--keep-identity", action="store_true",
        help="keep the snapshot's node id (its etcd member id); it still writes under a new "
        "origin: see docs/REPLICATION.md",
    )
    for command in (snapshot_status, restore):
        command.add_argument(
            "--skip-hash-check", action="store_true",
            help="the file is a plain copy of a database (no SHA-256 trailer)",
        )
    return parser


def _add_datastore_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datastore-endpoint", default=DEFAULT_DATASTORE_ENDPOINT,
        help=f"the node's database (default {DEFAULT_DATASTORE_ENDPOINT})",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen-address", default=DEFAULT_LISTEN_ADDRESS,
        help=f"host:port to serve the etcd gRPC API on (default {DEFAULT_LISTEN_ADDRESS})",
    )
    parser.add_argument(
        "--datastore-endpoint", default=DEFAULT_DATASTORE_ENDPOINT,
        help=f"where the data lives (default {DEFAULT_DATASTORE_ENDPOINT}; "
        "sqlite:///absolute/path.db for an absolute path)",
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument(
        "--log-format", default="plain", choices=("plain", "json"),
        help="plain text lines (default) or one JSON object per line",
    )
    parser.add_argument(
        "--advertise-client-urls", default="", metavar="URLS",
        help="as etcd: comma-separated URLs clients and linked peers reach this node at, "
        "listed by MemberList (default: the --listen-address it binds)",
    )
    parser.add_argument(
        "--listen-client-http-urls", default="", metavar="URLS",
        help="as etcd: comma-separated http:// or https:// URLs to serve the HTTP/JSON "
        "gateway on (POST /v3/kv/range, /v3/watch, ...; /health, /version, /metrics). "
        "https:// uses --cert-file/--key-file (default: not served)",
    )
    parser.add_argument(
        "--listen-metrics-urls", default="", metavar="URLS",
        help="as etcd: comma-separated http:// or https:// URLs serving /metrics, /health, "
        "/livez and /readyz only (default: not served)",
    )
    parser.add_argument(
        "--metrics-address", default=None, metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--sqlite-synchronous", default="FULL", choices=SYNCHRONOUS_MODES, type=str.upper,
        help="FULL (default): every acknowledged write survives power loss; NORMAL: faster, "
        "the last writes may be lost on power loss (never on a process crash)",
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest write request accepted (default {DEFAULT_MAX_REQUEST_BYTES}, as etcd)",
    )
    parser.add_argument(
        "--quota-backend-bytes", type=int, default=0,
        help="as etcd: raise the NOSPACE alarm (and refuse writes that add data) when the "
        "database would grow past this size; 0 (default) = etcd's 2 GiB, negative = no quota",
    )
    parser.add_argument("--name", default="default", help="member name reported by MemberList")
    parser.add_argument(
        "--processes", type=_positive_int, default=1, metavar="N",
        help="serving processes sharing the port (default 1). With N > 1 one more process "
        "owns the write path and N serving processes answer gRPC and read the database "
        "themselves: more throughput on several cores, a little more latency per write "
        "(SQLite datastore, without replication or metrics)",
    )
    parser.add_argument(
        "--event-loop", choices=event_loop.KINDS, default=event_loop.DEFAULT,
        help=f"the event loop every serving process runs on (default {event_loop.DEFAULT}; "
        "asyncio: the standard library's)",
    )
    parser.add_argument(
        "--watch-progress-notify-interval", type=_duration, default=600.0,
        help="how often watchers that asked for progress_notify get one when idle "
        "(seconds, or with a unit: 500ms, 5s, 10m; default 10m as etcd)",
    )
    auth = parser.add_argument_group("authentication (etcd's flags; see README)")
    auth.add_argument(
        "--auth-token", default="simple", metavar="TYPE",
        help="simple (default): signed tokens any serving process accepts; jwt is not "
        "implemented",
    )
    auth.add_argument(
        "--auth-token-ttl", type=_positive_int, default=300, metavar="SECONDS",
        help="how long a token stays valid after its last use (default 300, as etcd)",
    )
    auth.add_argument(
        "--bcrypt-cost", type=int, default=BCRYPT_COST, metavar="COST",
        help="as etcd: the bcrypt cost of password hashes, 4-31 (default 10; another "
        "value is replaced by 10 with a warning, as etcd does)",
    )
    upkeep = parser.add_argument_group("history and retention")
    upkeep.add_argument(
        "--auto-compaction-mode", default="periodic", choices=("periodic", "revision"),
        help="as etcd: periodic keeps --auto-compaction-retention of time, revision keeps "
        "that many revisions",
    )
    upkeep.add_argument(
        "--auto-compaction-retention", default="0",
        help="as etcd: 0 (default) = off; periodic: a duration (1h, 30m; a bare number is "
        "hours, as in etcd); revision: a number of revisions",
    )
    upkeep.add_argument(
        "--maintenance-interval", type=_duration, default=300.0,
        help="how often revision-mode compaction and replication retention run (default 5m)",
    )
    upkeep.add_argument(
        "--replication-retention", type=_duration, default=600.0,
        help="keep every replication entry at least this long (default 10m); older entries "
        "superseded by a later whole write of their key are pruned",
    )
    tls = parser.add_argument_group("TLS (etcd's flag names)")
    tls.add_argument("--cert-file", type=Path, default=None,
                     help="server certificate (PEM): serve TLS on the listen address")
    tls.add_argument("--key-file", type=Path, default=None, help="its private key (PEM)")
    tls.add_argument("--trusted-ca-file", type=Path, default=None,
                     help="CA that signs client certificates (with --client-cert-auth)")
    tls.add_argument("--client-cert-auth", action="store_true",
                     help="refuse clients (and peers) without a certificate signed by "
                     "--trusted-ca-file")
    tls.add_argument("--datastore-cafile", type=Path, default=None,
                     help="PostgreSQL: CA to verify the database server with (TLS)")
    tls.add_argument("--datastore-certfile", type=Path, default=None,
                     help="PostgreSQL: client certificate to present")
    tls.add_argument("--datastore-keyfile", type=Path, default=None,
                     help="PostgreSQL: its private key")
    tls.add_argument("--peer-trusted-ca-file", type=Path, default=None,
                     help="CA to verify https:// nodes this node --join's (default: system CAs)")
    tls.add_argument("--peer-cert-file", type=Path, default=None,
                     help="certificate this node presents on https:// links it dials")
    tls.add_argument("--peer-key-file", type=Path, default=None, help="its private key")
    repl = parser.add_argument_group(
        "replication (SQLite datastore; see docs/REPLICATION.md)"
    )
    repl.add_argument(
        "--join", action="append", default=[], metavar="URL",
        help="dial this node (http://host:port) and exchange entries with it; repeatable. "
        "The link carries both directions, so this node needs no inbound port",
    )
    repl.add_argument(
        "--token", default=None,
        help="bootstrap token the nodes named by --join admit (or env SHIM_TOKEN)",
    )
    repl.add_argument(
        "--join-mode", default="both", choices=("both", "receive", "send"),
        help="which way entries flow on --join links: both (default), receive (a backup "
        "that only pulls), send",
    )
    repl.add_argument(
        "--bootstrap-token", default=None,
        help="admit links from nodes presenting this token (or env SHIM_BOOTSTRAP_TOKEN); "
        "without it this node admits no links",
    )
    repl.add_argument(
        "--topology", type=Path, default=None, metavar="FILE",
        help='JSON {"links": [{"url": ..., "token": ..., "mode": ...}]}, re-read on SIGHUP',
    )
    repl.add_argument(
        "--merge-policy", type=Path, default=None, metavar="FILE",
        help="merge policy file (default: the built-in shim/replication/policy.json)",
    )
    repl.add_argument(
        "--max-clock-skew", type=_duration, default=0.5,
        help="how far ahead of this node's clock a peer's clock may pull it (default 500ms); "
        "entries from further ahead are kept and flagged as skewed",
    )
    repl.add_argument(
        "--replication-batch-delay", type=_duration, default=DEFAULT_REPLICATION_BATCH_DELAY,
        metavar="DURATION",
        help="the longest a link holds a steady stream of writes to send them together "
        "(default 50ms; a write after a quiet spell goes at once; 0: every commit at once, "
        "at more CPU per write on both ends)",
    )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _compaction_retention(mode: str, text: str) -> float:
    """Seconds (periodic; a bare number is hours, as in etcd) or revisions (revision)."""
    if mode == "revision":
        if not text.isdigit():
            raise ValueError(f"--auto-compaction-retention {text!r}: revision mode needs a count")
        return float(text)
    try:
        return float(text) * 3600.0
    except ValueError:
        pass
    try:
        return _duration(text)
    except argparse.ArgumentTypeError:
        raise ValueError(f"--auto-compaction-retention {text!r}: not a duration") from None


def quota_bytes(flag: int) -> int:
    """--quota-backend-bytes as etcd reads it: 0 is the default (2 GiB), negative is none."""
    if flag == 0:
        return DEFAULT_QUOTA_BYTES
    if flag > MAX_SUGGESTED_QUOTA_BYTES:
        logging.getLogger("shim").warning(
            "--quota-backend-bytes %d is above the suggested maximum %d", flag,
            MAX_SUGGESTED_QUOTA_BYTES,
        )
    return max(flag, 0)


def bcrypt_cost(flag: int) -> int:
    """--bcrypt-cost as etcd reads it: outside bcrypt's 4-31, the default, with a warning."""
    if BCRYPT_MIN_COST <= flag <= BCRYPT_MAX_COST:
        return flag
    logging.getLogger("shim").warning(
        "--bcrypt-cost %d is outside %d-%d: using the default %d", flag, BCRYPT_MIN_COST,
        BCRYPT_MAX_COST, BCRYPT_COST,
    )
    return BCRYPT_COST


def _check_auth_token(text: str) -> None:
    """etcd's --auth-token: "simple" (the default) or "jwt,<options>"."""
    kind = text.split(",", 1)[0]
    if kind == "jwt":
        raise ValueError(
            "--auth-token jwt is not implemented (UNIMPLEMENTED); shim issues simple tokens, "
            "signed so that every serving process accepts them"
        )
    if kind != "simple" or "," in text:
        raise ValueError(f"--auth-token {text!r}: use simple (jwt is not implemented)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _duration(text: str) -> float:
    """Seconds from "1.5", "500ms", "5s", "10m" or "1h"."""
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return value


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in (
        "-h", "--help", "--version"
    )):
        args_list = ["serve", *args_list]  # `shim` alone runs the server
    args = parser.parse_args(args_list)
    if args.command in (None, "serve"):
        if args.command is None:
            args = parser.parse_args(["serve"])
        return run_serve(args)
    if args.command in ("status", "sql"):
        return run_inspect(args)
    if args.command == "snapshot":
        return run_snapshot(args)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


def run_inspect(args: argparse.Namespace) -> int:
    from shim.backend import sqlite_inspect as inspect

    try:
        conn = inspect.open_read_only(args.datastore_endpoint)
        try:
            if args.command == "status":
                report = inspect.status(conn)
                if args.json:
                    inspect.dump_json(report)
                else:
                    inspect.print_status(report)
                return 0
            columns, rows = inspect.run_sql(conn, args.query)
        finally:
            conn.close()
    except ConfigError as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return 1
    if args.json:
        inspect.dump_json([dict(zip(columns, row, strict=True)) for row in rows])
    else:
        inspect.print_table(columns, rows, sys.stdout)
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    from shim.auth.etcd_layout import write_shim_auth
    from shim.backend import sqlite_inspect as inspect
    from shim.backend import sqlite_snapshot as snapshot

    try:
        if args.snapshot_command == "status":
            info = snapshot.status(args.file, args.skip_hash_check, write_shim_auth)
        else:
            info = snapshot.restore(
                args.file, args.datastore_endpoint, args.keep_identity, args.skip_hash_check,
                write_shim_auth,
            )
    except (snapshot.SnapshotError, ConfigError) as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fields = {
        "revision": info.revision, "compact_revision": info.compact_revision,
        "total_keys": info.total_keys, "total_size": info.total_size,
        "node_id": info.node_id, "checksum": info.checksum,
    }
    if args.snapshot_command == "status" and args.json:
        inspect.dump_json(fields)
        return 0
    if args.snapshot_command == "restore":
        print(f"restored {args.file} into {args.datastore_endpoint}")
    for name, value in fields.items():
        print(f"{name}: {value}")
    return 0


def _url_list(text: str) -> tuple[str, ...]:
    """etcd's comma-separated URL flags: each URL trimmed, without a trailing "/"."""
    return tuple(url.strip().rstrip("/") for url in text.split(",") if url.strip())


def run_serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    if args.max_request_bytes <= 0:
        print("shim: --max-request-bytes must be positive", file=sys.stderr)
        return EXIT_USAGE
    if args.replication_batch_delay > MAX_REPLICATION_BATCH_DELAY:
        print(f"shim: --replication-batch-delay must be at most "
              f"{MAX_REPLICATION_BATCH_DELAY:g}s", file=sys.stderr)
        return EXIT_USAGE
    from shim.tls import peer_tls, server_tls

    try:
        tls = server_tls(args.cert_file, args.key_file, args.trusted_ca_file, args.client_cert_auth)
        peer = peer_tls(args.peer_trusted_ca_file, args.peer_cert_file, args.peer_key_file)
    except ConfigError as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        retention = _compaction_retention(args.auto_compaction_mode, args.auto_compaction_retention)
        _check_auth_token(args.auth_token)
    except ValueError as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = ServerConfig(
        listen_address=args.listen_address,
        datastore_endpoint=args.datastore_endpoint,
        log_level=args.log_level,
        log_format=args.log_format,
        processes=args.processes,
        event_loop=args.event_loop,
        sqlite_synchronous=args.sqlite_synchronous,
        max_request_bytes=args.max_request_bytes,
        name=args.name,
        watch_progress_notify_interval=args.watch_progress_notify_interval,
        joins=tuple(args.join),
        join_token=args.token or os.environ.get("SHIM_TOKEN"),
        join_mode=args.join_mode,
        bootstrap_token=args.bootstrap_token or os.environ.get("SHIM_BOOTSTRAP_TOKEN"),
        topology_file=args.topology,
        merge_policy_file=args.merge_policy,
        max_clock_skew_ms=int(args.max_clock_skew * 1000),
        replication_batch_delay=args.replication_batch_delay,
        tls=tls,
        peer_tls=peer,
        metrics_address=args.metrics_address,
        client_http_urls=_url_list(args.listen_client_http_urls),
        metrics_urls=_url_list(args.listen_metrics_urls),
        advertise_client_urls=_url_list(args.advertise_client_urls),
        datastore_cafile=args.datastore_cafile,
        datastore_certfile=args.datastore_certfile,
        datastore_keyfile=args.datastore_keyfile,
        auto_compaction_mode=args.auto_compaction_mode if retention > 0 else "",
        auto_compaction_retention=retention,
        maintenance_interval=args.maintenance_interval,
        replication_retention=args.replication_retention,
        quota_backend_bytes=quota_bytes(args.quota_backend_bytes),
        auth_token_ttl=float(args.auth_token_ttl),
        bcrypt_cost=bcrypt_cost(args.bcrypt_cost),
    )
    # Imported late: grpc start-up cost only when serving.
    from shim.app import ServingProcessFailed, serve

    allocator.keep_large_buffers()
    open_files.raise_limit()
    try:
        event_loop.run(serve(config), config.event_loop)
    except (ConfigError, BackendOpenError) as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServingProcessFailed as exc:
        print(f"shim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
