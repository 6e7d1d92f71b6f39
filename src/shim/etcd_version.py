"""The etcd release shim answers as, in one place for every API that names it (Status,
/version, Downgrade's checks, response headers, snapshot files)."""

from __future__ import annotations

# The newest etcd 3.5 whose behaviour shim follows where 3.5 patch releases differ.
# kube-apiserver enables RequestWatchProgress (needed by consistent reads from its cache) only
# for etcd >= 3.5.13.
ETCD_VERSION = "3.5.21"
RAFT_TERM = 1  # one node, one term: shim has no raft


def cluster_version(version: str = ETCD_VERSION) -> str:
    """etcd's cluster version of a server version: its major.minor, patch 0."""
    major, minor = version.split(".")[:2]
    return f"{major}.{minor}.0"
