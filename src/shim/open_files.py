"""The process's limit of open files: every client connection, watch socket, database file and
link is one. Many systems start a service with a soft limit of 1024 (or less) under a far
higher hard limit; programs built with Go 1.19 or later raise it to the hard one at start,
and so does shim, saying so when even that leaves room for few connections (etcd 3.5.1
refuses to start below 150; shim serves, with a warning, rather than fail an edge node that
worked yesterday)."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Below this, a few hundred clients (kube-apiserver alone opens dozens of streams) run out.
LOW_LIMIT = 256


def raise_limit() -> None:
    """Raise the soft limit of open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # some systems cap it below the hard limit
            pass
    if soft != resource.RLIM_INFINITY and soft < LOW_LIMIT:
        log.warning(
            "the open files limit is %d: connections beyond about %d wait until others close "
            "(raise it: ulimit -n, or LimitNOFILE= for a systemd service)", soft, soft - 30,
        )
