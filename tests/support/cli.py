"""Running the ``shim`` command to completion, as an operator types it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from .process import child_env
from .shim_server import OUTSIDE_CHECKOUT

# A command that should fail at start-up gets this long; a server that starts instead of
# failing runs into it.
START_FAILURE_TIMEOUT = 20.0


def run_shim(
    *args: str, program: Sequence[str] | None = None, timeout: float = START_FAILURE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run shim to completion; a server that starts instead of failing hits the timeout."""
    argv = [*(program or (sys.executable, "-m", "shim")), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=OUTSIDE_CHECKOUT,
        env=child_env({"PYTHONUNBUFFERED": "1"}),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
