"""shim's own server (`python -m shim serve`) as a subprocess."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from .client import SERVING, health_status
from .net import free_port
from .process import ServerProcess, child_env

REPO_ROOT = Path(__file__).resolve().parents[2]
# Servers and commands run from here, as a user's would: never from the checkout, whose src/
# is not what a user has (they have the installed package).
OUTSIDE_CHECKOUT = Path(tempfile.gettempdir())


def sqlite_endpoint(path: Path) -> str:
    """sqlite:///abs/path/state.db for a database file."""
    return f"sqlite://{path.resolve()}"


class ShimServer(ServerProcess):
    """`python -m shim serve` on a free loopback port, ready once gRPC health says SERVING.

    The datastore defaults to a fresh SQLite file in `workdir`; pass any
    `datastore_endpoint` to test another backend. Data survives stop/kill, so
    `restart()` comes back on the same state and the same port.
    """

    name = "shim"

    def __init__(
        self,
        workdir: Path | None = None,
        datastore_endpoint: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        super().__init__(workdir, "shim.log")
        self.datastore_endpoint = datastore_endpoint or sqlite_endpoint(self.workdir / "state.db")
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.port = free_port()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shim",
            "serve",
            "--listen-address",
            self.endpoint,
            "--datastore-endpoint",
            self.datastore_endpoint,
            *self.extra_args,
        ]

    def start(self) -> Self:
        self._spawn(
            self.argv(),
            env=child_env({"PYTHONUNBUFFERED": "1", **self.env}),
            cwd=self.workdir,
        )
        self._wait_ready(self._serving, self.startup_timeout)
        return self

    def _serving(self) -> bool:
        return health_status(self.endpoint, timeout=0.5) == SERVING

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (SIGTERM, or SIGKILL with `kill`) and start again on the same data and port."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()
