"""Server settings and datastore endpoint parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:2379"
DEFAULT_DATASTORE_ENDPOINT = "sqlite://./shim-data/state.db"
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default (1.5 MiB)


class ConfigError(Exception):
    """A setting that cannot work; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class SqliteEndpoint:
    path: Path


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    datastore_endpoint: str = DEFAULT_DATASTORE_ENDPOINT
    log_level: str = "info"
    sqlite_synchronous: str = "FULL"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    name: str = "default"
    watch_progress_notify_interval: float = 600.0  # etcd's default: 10 minutes


def parse_datastore_endpoint(endpoint: str) -> SqliteEndpoint:
    """``sqlite://relative/path.db`` or ``sqlite:///absolute/path.db``."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ConfigError(
            f"datastore endpoint {endpoint!r} has no scheme; use sqlite://PATH"
        )
    scheme = scheme.lower()
    if scheme == "sqlite":
        path_text = rest.split("?", 1)[0]
        if not path_text:
            raise ConfigError("datastore endpoint sqlite:// needs a file path")
        path = Path(path_text)
        if path_text.endswith("/") or (path.exists() and path.is_dir()):
            raise ConfigError(f"datastore path {path_text} is a directory, not a database file")
        return SqliteEndpoint(path=path)
    if scheme in ("postgres", "postgresql"):
        raise ConfigError("the PostgreSQL datastore is not implemented yet; use sqlite://PATH")
    raise ConfigError(f"unknown datastore scheme {scheme!r}; supported: sqlite://PATH")


def grpc_listen_target(address: str) -> str:
    """Accept etcd-style URLs (http://host:port) as well as plain host:port."""
    for prefix in ("http://", "grpc://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
    if address.startswith("https://"):
        raise ConfigError("https listen addresses need TLS, which is not implemented yet")
    if ":" not in address:
        raise ConfigError(f"listen address {address!r} must be host:port")
    return address
