"""Background tasks end the same way everywhere (shim/tasks.py): cancelled and awaited, and
whatever they end with is taken care of, even when they end after the caller stopped waiting."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from shim.tasks import cancel_and_wait


async def _slow_to_die(error: BaseException) -> None:
    """Ignores the first cancellation for a moment (like a call stuck on a dead connection),
    then fails."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)
        raise error from None


def _run_collecting_loop_errors(main: Any) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []

    async def wrapper() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reports.append(ctx))
        await main()
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(wrapper())
    return reports


def test_an_error_after_the_timeout_is_not_reported_as_never_retrieved() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(_slow_to_die(RuntimeError("late")))
        await asyncio.sleep(0)
        await cancel_and_wait(task, timeout=0.05, log_errors=False)
        assert not task.done()
        await asyncio.sleep(0.4)
        assert task.done()
        del task

    assert _run_collecting_loop_errors(main) == []


def test_an_error_after_the_timeout_is_logged_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(_slow_to_die(RuntimeError("late failure")))
        await asyncio.sleep(0)
        await cancel_and_wait(task, timeout=0.05)
        await asyncio.sleep(0.4)

    with caplog.at_level(logging.ERROR, logger="shim.tasks"):
        assert _run_collecting_loop_errors(main) == []
    assert any("ended with an error" in r.message and r.exc_info and
               str(r.exc_info[1]) == "late failure" for r in caplog.records)


def test_a_caller_cancelled_while_waiting_stays_cancelled() -> None:
    async def main() -> None:
        inner = asyncio.ensure_future(_slow_to_die(RuntimeError("while nobody waits")))
        await asyncio.sleep(0)
        outer = asyncio.ensure_future(cancel_and_wait(inner, log_errors=False))
        await asyncio.sleep(0.05)
        assert not outer.done()
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await asyncio.sleep(0.4)
        assert inner.done()
        del inner

    assert _run_collecting_loop_errors(main) == []
