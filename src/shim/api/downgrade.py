"""etcd's Downgrade checks, for a cluster that can never be downgraded.

etcd validates the target version (semantic version, or major.minor) and accepts only the
minor release just below the cluster's. shim answers VALIDATE exactly as a single etcd 3.5
member does; it has no older storage format to go back to, so ENABLE of a valid target is
refused with a reason, and CANCEL finds no downgrade in progress, as in etcd.
"""

from __future__ import annotations

import re

import grpc

from shim.api.errors import RequestError
from shim.pb.rpc_pb2 import DowngradeRequest

WRONG_FORMAT = "etcdserver: wrong downgrade target version format"
INVALID_TARGET = "etcdserver: invalid downgrade target version"
NO_INFLIGHT = "etcdserver: no inflight downgrade job"
UNKNOWN_METHOD = "etcdserver: unknown method"
CANNOT_ENABLE = (
    "shim: a downgrade cannot be enabled: shim serves etcd 3.5's API on its own storage "
    "format, which has no older version to go back to"
)

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


def _major_minor(text: str) -> tuple[int, int] | None:
    """etcd's reading of a target: a semantic version, or major.minor (".0" added)."""
    for candidate in (text, text + ".0"):
        match = _SEMVER.match(candidate)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def cluster_version(server_version: str) -> str:
    """The cluster version etcd reports: the server's major.minor, patch 0."""
    major, minor = server_version.split(".")[:2]
    return f"{major}.{minor}.0"


def check_downgrade(request: DowngradeRequest, server_version: str) -> str:
    """The version a Downgrade answers with, or the error etcd gives."""
    action = request.action
    if action == DowngradeRequest.CANCEL:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, NO_INFLIGHT)
    if action not in (DowngradeRequest.VALIDATE, DowngradeRequest.ENABLE):
        raise RequestError(grpc.StatusCode.UNKNOWN, UNKNOWN_METHOD)
    target = _major_minor(request.version)
    if target is None:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, WRONG_FORMAT)
    major, minor = (int(part) for part in server_version.split(".")[:2])
    if target != (major, minor - 1):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, INVALID_TARGET)
    if action == DowngradeRequest.ENABLE:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, CANNOT_ENABLE)
    return cluster_version(server_version)
