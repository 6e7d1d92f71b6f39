"""Process and client helpers shared by the test modules: real etcd, shim, etcdctl, gRPC."""

from .client import Client, health_status
from .etcd import EtcdServer, etcdctl, find_etcd_binary
from .net import free_port, free_ports
from .process import ServerProcess, ServerStartError
from .shim_server import OUTSIDE_CHECKOUT, REPO_ROOT, ShimServer, sqlite_endpoint

__all__ = [
    "OUTSIDE_CHECKOUT",
    "REPO_ROOT",
    "Client",
    "EtcdServer",
    "ServerProcess",
    "ServerStartError",
    "ShimServer",
    "etcdctl",
    "find_etcd_binary",
    "free_port",
    "free_ports",
    "health_status",
    "sqlite_endpoint",
]
