"""A link's pace (shim.replication.pacing): while writes keep coming, at most one batch of new
entries per interval; the first after a quiet spell at once. A clock the test moves."""

from __future__ import annotations

from shim.replication.pacing import BATCH_INTERVAL_SECONDS, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_batch_goes_at_once() -> None:
    assert Pacer(0.01, Clock()).delay() == 0.0


def test_a_batch_right_after_another_waits_for_the_rest_of_the_interval() -> None:
    clock = Clock()
    pacer = Pacer(0.01, clock)
    pacer.sent()
    assert abs(pacer.delay() - 0.01) < 1e-9
    clock.now += 0.004
    assert abs(pacer.delay() - 0.006) < 1e-9
    clock.now += 0.006
    assert pacer.delay() == 0.0


def test_after_a_quiet_spell_a_batch_goes_at_once() -> None:
    clock = Clock()
    pacer = Pacer(0.01, clock)
    pacer.sent()
    clock.now += 5.0
    assert pacer.delay() == 0.0
    pacer.sent()  # and the interval counts from the batch that went last
    clock.now += 0.002
    assert abs(pacer.delay() - 0.008) < 1e-9


def test_the_default_interval_adds_at_most_ten_milliseconds() -> None:
    assert 0 < BATCH_INTERVAL_SECONDS <= 0.01
