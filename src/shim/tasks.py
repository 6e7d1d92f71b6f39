"""Ending background tasks, the same way everywhere."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(
    *tasks: asyncio.Task[Any] | None, timeout: float | None = None, log_errors: bool = True
) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait until they have ended, at most
    ``timeout`` seconds. Unlike awaiting each one under ``suppress(CancelledError)``, this
    never swallows a cancellation of the caller itself. An error a task ended with is logged
    (``log_errors``: False when the caller has dealt with it already)."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if not live:
        return

    def retrieve(task: asyncio.Task[Any]) -> None:
        # Retrieved in any case, so asyncio does not report it as never retrieved.
        error = None if task.cancelled() else task.exception()
        if error is not None and log_errors:
            log.error("task %s ended with an error", task.get_name(), exc_info=error)

    try:
        await asyncio.wait(live, timeout=timeout)
    finally:
        for task in live:
            if task.done():
                retrieve(task)
            else:
                # Still running (stuck in a call that ignores cancellation for a while, or
                # the caller was cancelled while waiting): its outcome is taken care of
                # whenever it ends.
                task.add_done_callback(retrieve)
