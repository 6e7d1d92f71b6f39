"""Server settings and datastore endpoint parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from shim.event_loop import DEFAULT as DEFAULT_EVENT_LOOP

if TYPE_CHECKING:
    from shim.tls import PeerTls, ServerTls

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:2379"
DEFAULT_DATASTORE_ENDPOINT = "sqlite://./shim-data/state.db"
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default (1.5 MiB)
# --replication-batch-delay (seconds, shim.replication.pacing): the longest a link holds a
# steady stream of writes to send them together. At most a second: longer, and a link's
# heartbeats (one a second) would wait behind its batches.
DEFAULT_REPLICATION_BATCH_DELAY = 0.05
MAX_REPLICATION_BATCH_DELAY = 1.0


class ConfigError(Exception):
    """A setting that cannot work; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class SqliteEndpoint:
    path: Path


@dataclass(frozen=True, slots=True)
class PostgresEndpoint:
    """A PostgreSQL URL (asyncpg reads it as it is) and what may be shown of it."""

    url: str
    database: str
    # The URL with its password replaced by ***: the only form that goes into messages.
    redacted: str
    # Password text to mask wherever it might appear (raw and URL-decoded forms).
    secrets: tuple[str, ...]

    def mask(self, text: str) -> str:
        """``text`` with every form of the password replaced by ***."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


DEFAULT_POSTGRES_DATABASE = "shim"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    datastore_endpoint: str = DEFAULT_DATASTORE_ENDPOINT
    log_level: str = "info"
    log_format: str = "plain"
    # Serving processes sharing the port (1: this process serves and owns the store alone).
    processes: int = 1
    event_loop: str = DEFAULT_EVENT_LOOP  # one of shim.event_loop.KINDS
    sqlite_synchronous: str = "FULL"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    name: str = "default"
    watch_progress_notify_interval: float = 600.0  # etcd's default: 10 minutes
    # Replication (SQLite datastore): links this node dials, the token it admits links with,
    # a topology file re-read on SIGHUP, the merge policy file (None: the built-in one).
    joins: tuple[str, ...] = ()
    join_token: str | None = None
    join_mode: str = "both"
    bootstrap_token: str | None = None
    topology_file: Path | None = None
    merge_policy_file: Path | None = None
    max_clock_skew_ms: int = 500
    replication_batch_delay: float = DEFAULT_REPLICATION_BATCH_DELAY  # 0: every commit at once
    # TLS on the gRPC port (None: plaintext), and for the https:// links this node dials.
    tls: ServerTls | None = None
    peer_tls: PeerTls | None = None
    metrics_address: str | None = None  # host:port for Prometheus text (None: not served)
    # etcd's --advertise-client-urls: what MemberList lists for this node and linked peers are
    # told (empty: the gRPC address as bound).
    advertise_client_urls: tuple[str, ...] = ()
    # etcd's --listen-client-http-urls: where the HTTP/JSON gateway, /health, /version and
    # /metrics are served (none: not served).
    client_http_urls: tuple[str, ...] = ()
    # etcd's --listen-metrics-urls: /metrics, /health, /livez and /readyz alone, on other ports
    # (what kubeadm's probes and Prometheus scrape).
    metrics_urls: tuple[str, ...] = ()
    # TLS to PostgreSQL, k3s's flag names: CA to verify the server, client certificate + key.
    datastore_cafile: Path | None = None
    datastore_certfile: Path | None = None
    datastore_keyfile: Path | None = None
    # Automatic compaction (etcd's flags): "", "periodic" (seconds) or "revision" (revisions).
    auto_compaction_mode: str = ""
    auto_compaction_retention: float = 0.0
    maintenance_interval: float = 300.0
    replication_retention: float = 600.0
    # etcd's --quota-backend-bytes: NOSPACE past this many bytes (<= 0 here: no quota).
    quota_backend_bytes: int = 2 * 1024**3
    # Auth (etcd's flags): how long a token lives after its last use (seconds).
    auth_token_ttl: float = 300.0
    bcrypt_cost: int = 10  # etcd's --bcrypt-cost


def parse_datastore_endpoint(endpoint: str) -> SqliteEndpoint | PostgresEndpoint:
    """``sqlite://relative/path.db``, ``sqlite:///absolute/path.db`` or
    ``postgres://user:password@host:port/database?sslmode=...`` (also ``postgresql://``)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ConfigError(
            f"datastore endpoint {_redact_any(endpoint)!r} has no scheme; use sqlite://PATH "
            "or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        path_text = rest.split("?", 1)[0]
        if not path_text:
            raise ConfigError("datastore endpoint sqlite:// needs a file path")
        path = Path(path_text)
        try:
            is_dir = path.is_dir()
        except OSError as exc:  # a directory on the way that this user cannot enter
            raise ConfigError(f"cannot reach datastore path {path_text}: {exc.strerror}") from None
        if path_text.endswith("/") or is_dir:
            raise ConfigError(f"datastore path {path_text} is a directory, not a database file")
        return SqliteEndpoint(path=path)
    if scheme in ("postgres", "postgresql"):
        return parse_postgres_endpoint(endpoint)
    raise ConfigError(
        f"unknown datastore scheme {scheme!r}; supported: sqlite://PATH, postgres://..."
    )


def parse_postgres_endpoint(endpoint: str) -> PostgresEndpoint:
    """Check a PostgreSQL URL far enough to name its database and to hide its password.

    The URL is handed to asyncpg unchanged (it understands sslmode and libpq's other query
    parameters). Without a database name in the path, the database is called "shim".
    """
    secrets = _password_forms(endpoint)
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        masked = str(exc)
        for secret in secrets:
            masked = masked.replace(secret, "***")
        raise ConfigError(f"bad PostgreSQL endpoint: {masked}") from None
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostinfo}" if has_password else netloc
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    redacted = parts._replace(netloc=netloc, query=query).geturl()
    database = unquote(parts.path.lstrip("/"))
    if "/" in database:
        raise ConfigError(f"bad PostgreSQL endpoint {redacted}: the path must be a database name")
    url = endpoint
    if not database:
        database = DEFAULT_POSTGRES_DATABASE
        url = parts._replace(path=f"/{database}").geturl()
    return PostgresEndpoint(url=url, database=database, redacted=redacted, secrets=secrets)


def _password_forms(endpoint: str) -> tuple[str, ...]:
    """Every spelling of the password in ``endpoint``: in user:password@, or ?password=."""
    found: set[str] = set()
    match = re.match(r"^[^:/?#]+://([^/?#]*)@", endpoint)
    if match and ":" in match.group(1):
        raw = match.group(1).split(":", 1)[1]
        found.update({raw, unquote(raw)})
    for raw in re.findall(r"[?&]password=([^&#]*)", endpoint, flags=re.IGNORECASE):
        found.update({raw, unquote(raw), unquote(raw.replace("+", " "))})
    # Longest first, so a password that contains another form is masked whole.
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def _redact_any(endpoint: str) -> str:
    for secret in _password_forms(endpoint):
        endpoint = endpoint.replace(secret, "***")
    return endpoint


def grpc_listen_target(address: str, tls: bool = False) -> str:
    """Accept etcd-style URLs (http://host:port, https://host:port with TLS) as well as plain
    host:port."""
    if address.startswith("https://"):
        if not tls:
            raise ConfigError("an https:// listen address needs --cert-file and --key-file")
        address = address[len("https://"):]
    elif address.startswith("http://") and tls:
        raise ConfigError("with --cert-file the listen address is https://host:port (or host:port)")
    for prefix in ("http://", "grpc://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
    split_host_port(address, "listen address")
    return address


MAX_PORT = 65535


def split_host_port(address: str, what: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) with a port from 0 to 65535; 0 binds a free port.
    Anything else is refused here, before gRPC or a socket wraps it into another port."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{what} {address!r} must be host:port")
    port = int(port_text)
    if port > MAX_PORT:
        raise ConfigError(f"{what} {address!r}: port {port} is out of range (0-{MAX_PORT})")
    return host.strip("[]"), port


def check_addresses(config: ServerConfig) -> None:
    """Every address the server is to listen on or dial is host:port with a real port."""
    grpc_listen_target(config.listen_address, tls=config.tls is not None)
    parse_http_urls(config.client_http_urls, tls=config.tls is not None)
    parse_http_urls(config.metrics_urls, config.tls is not None, METRICS_URLS_FLAG)
    check_advertised_urls(config.advertise_client_urls)
    if config.metrics_address is not None:
        split_host_port(config.metrics_address, "--metrics-address")
    for url in config.joins:
        split_host_port(url.split("://", 1)[-1].rstrip("/"), "--join")


def check_advertised_urls(urls: tuple[str, ...]) -> None:
    """--advertise-client-urls: http:// or https:// URLs with a host and a port, as etcd's."""
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme not in ("http", "https") or not parts.hostname or port is None
            or parts.path not in ("", "/") or parts.query or parts.fragment
        ):
            raise ConfigError(
                f"--advertise-client-urls {url!r}: use http://HOST:PORT or https://HOST:PORT"
            )


METRICS_URLS_FLAG = "--listen-metrics-urls"


@dataclass(frozen=True, slots=True)
class HttpListen:
    """One --listen-client-http-urls URL: http:// (plaintext) or https:// (TLS)."""

    host: str
    port: int
    secure: bool

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_http_urls(
    urls: tuple[str, ...], tls: bool, flag: str = "--listen-client-http-urls"
) -> list[HttpListen]:
    """HTTP listeners (the gateway's, or ``flag``'s); https:// needs the server's certificate
    (--cert-file)."""
    found: list[HttpListen] = []
    for url in urls:
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ConfigError(f"{flag} {url!r}: use http://HOST:PORT or https://HOST:PORT")
        if scheme == "https" and not tls:
            raise ConfigError(f"{flag} {url}: https:// needs --cert-file and --key-file")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(
                f"{flag} {url!r}: the port is out of range (0-{MAX_PORT})"
            ) from None
        if port is None or parts.hostname is None or parts.path not in ("", "/"):
            raise ConfigError(f"{flag} {url!r} must be {scheme}://HOST:PORT")
        found.append(HttpListen(parts.hostname, port, scheme == "https"))
    return found
