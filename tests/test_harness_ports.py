"""The harness's loopback ports (tests/support/net.py) under ./tests/run's parallel workers."""

from __future__ import annotations

import pytest

from tests.support import net


@pytest.mark.harness
def test_each_xdist_worker_gets_its_own_slice_of_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = range(22768, 32768)
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(set(net._worker_slice(ports)))
    assert all(len(s) >= len(ports) // 3 for s in slices)
    assert all(s <= set(ports) for s in slices)
    assert not (slices[0] & slices[1] or slices[0] & slices[2] or slices[1] & slices[2])


@pytest.mark.harness
def test_outside_xdist_every_port_of_the_range_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert net._worker_slice(range(100, 200)) == range(100, 200)


@pytest.mark.harness
def test_ports_handed_out_are_in_this_workers_slice() -> None:
    assert set(net.free_ports(20)) <= set(net._worker_slice(net.below_ephemeral()))
