"""Differential test of the KV service: shim must answer exactly as etcd 3.5 does.

Each seed drives a reproducible sequence of Range/Put/DeleteRange/Txn/Compact
requests (tests/support/differential.py) against a fresh etcd and a fresh shim.
Every response, or gRPC error code and message, must match field by field; only
cluster_id, member_id and raft_term in response headers are ignored.

More: SHIM_DIFF_SEEDS="1-200" or "7,9" replaces the seeds, SHIM_DIFF_OPS=N the length.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.support import Client, EtcdServer, ShimServer
from tests.support.differential import parse_seeds, run_sequence

DEFAULT_SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_OPS = 1000
HARNESS_SEED = 1000
HARNESS_OPS = 1000


SEEDS = parse_seeds(os.environ.get("SHIM_DIFF_SEEDS", "")) or list(DEFAULT_SEEDS)
OPS = int(os.environ.get("SHIM_DIFF_OPS", DEFAULT_OPS))


@pytest.mark.parametrize("seed", SEEDS)
def test_kv_matches_etcd(
    seed: int, etcd_factory: Callable[..., EtcdServer], shim: ShimServer
) -> None:
    etcd = etcd_factory()
    with Client(etcd.endpoint) as reference, Client(shim.endpoint) as candidate:
        run_sequence(seed, OPS, reference, candidate, names=("etcd", "shim"))


@pytest.mark.harness
def test_harness_etcd_agrees_with_etcd(etcd_factory: Callable[..., EtcdServer]) -> None:
    """Guards the harness, not shim: two real etcds must agree on a whole sequence.

    A failure means the comparator looks at something servers may differ in, or the
    generator is not deterministic. It also checks the sequence reaches the error
    paths it is meant to exercise.
    """
    first, second = etcd_factory(), etcd_factory()
    with Client(first.endpoint) as reference, Client(second.endpoint) as candidate:
        stats = run_sequence(
            HARNESS_SEED, HARNESS_OPS, reference, candidate, names=("etcd-1", "etcd-2")
        )
    errors = " | ".join(stats.errors)
    for expected in (
        "key is not provided",
        "required revision has been compacted",
        "required revision is a future revision",
        "requested lease not found",
        "duplicate key given in txn request",
        "too many operations in txn request",
        "value is provided",
        "key not found",
    ):
        assert expected in errors, f"sequence never produced {expected!r}; errors: {errors}"
    assert stats.txn_succeeded[True] and stats.txn_succeeded[False], stats.txn_succeeded
