"""A link's pace (shim.replication.pacing): while writes keep coming, at most one batch of new
entries per interval, the interval growing up to a bound; the first after a quiet spell at
once, and the interval short again. A clock the test moves."""

from __future__ import annotations

import itertools

from shim.replication.pacing import Pacer


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


def steady_batches(pacer: Pacer, clock: Clock, count: int) -> list[float]:
    """Send ``count`` batches while a write commits every millisecond: the waits."""
    waits = []
    for _ in range(count):
        clock.now += 0.001  # the next write commits and wakes the sender
        wait = pacer.delay()
        waits.append(wait)
        clock.now += wait
        pacer.sent()
    return waits


def test_while_writes_keep_coming_the_interval_grows_to_its_bound() -> None:
    clock = Clock()
    pacer = Pacer(0.05, clock)
    pacer.sent()
    waits = steady_batches(pacer, clock, 12)
    gaps = [wait + 0.001 for wait in waits]  # from one batch to the next
    assert abs(gaps[0] - 0.01) < 1e-9
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(gaps))
    assert gaps[1] > gaps[0]
    assert abs(gaps[-1] - 0.05) < 1e-9  # never longer than the bound
    assert abs(pacer.interval - 0.05) < 1e-9


def test_a_quiet_spell_makes_the_interval_short_again() -> None:
    clock = Clock()
    pacer = Pacer(0.05, clock)
    pacer.sent()
    steady_batches(pacer, clock, 12)
    assert pacer.interval > 0.04
    clock.now += 0.06  # no write for longer than the current interval
    assert pacer.delay() == 0.0
    pacer.sent()
    assert abs(pacer.interval - 0.01) < 1e-9
    clock.now += 0.002
    assert abs(pacer.delay() - 0.008) < 1e-9


def test_a_write_within_the_grown_interval_still_waits_for_it() -> None:
    clock = Clock()
    pacer = Pacer(0.05, clock)
    pacer.sent()
    steady_batches(pacer, clock, 12)
    clock.now += 0.03  # a gap shorter than the current interval: not a quiet spell
    assert abs(pacer.delay() - 0.02) < 1e-9


def test_no_interval_sends_every_batch_at_once() -> None:
    clock = Clock()
    pacer = Pacer(0.0, clock)
    for _ in range(5):
        assert pacer.delay() == 0.0
        pacer.sent()
    assert pacer.interval == 0.0


def test_a_bound_under_ten_milliseconds_is_a_fixed_pace() -> None:
    clock = Clock()
    pacer = Pacer(0.004, clock)
    pacer.sent()
    waits = steady_batches(pacer, clock, 5)
    assert all(abs(wait - 0.003) < 1e-9 for wait in waits)  # 4 ms from batch to batch
