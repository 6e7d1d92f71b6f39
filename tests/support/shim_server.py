"""shim's own server (`python -m shim serve`) as a subprocess."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from . import procfs
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
    """`python -m shim serve` on a free loopback port (or `host`:`port`), ready once gRPC
    health says SERVING.

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
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        launcher: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        super().__init__(workdir, "shim.log", launcher)
        self.python = python  # another install's interpreter runs that install's shim
        self.datastore_endpoint = datastore_endpoint or sqlite_endpoint(self.workdir / "state.db")
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.host = host
        self.port = port or free_port()
        if self.database is not None:
            self.data_dir = self.database.parent

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL other nodes --join to reach this one."""
        return f"http://{self.endpoint}"

    @property
    def database(self) -> Path | None:
        """The SQLite file (None on another datastore)."""
        prefix = "sqlite://"
        if not self.datastore_endpoint.startswith(prefix):
            return None
        return Path(self.datastore_endpoint[len(prefix):].split("?", 1)[0])

    def argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "shim",
            "serve",
            "--listen-address",
            self.endpoint,
            "--datastore-endpoint",
            self.datastore_endpoint,
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        return child_env({"PYTHONUNBUFFERED": "1", **self.extra_env})

    def cwd(self) -> Path:
        return self.workdir

    def is_ready(self) -> bool:
        return health_status(self.endpoint, timeout=0.5) == SERVING

    def disk_bytes(self) -> int | None:
        """The SQLite file with its WAL and shared-memory files (None on another datastore)."""
        db = self.database
        return None if db is None else procfs.dir_bytes_of(db.parent.glob(db.name + "*"))

    def wal_bytes(self) -> int | None:
        db = self.database
        return None if db is None else procfs.dir_bytes_of([db.with_name(db.name + "-wal")])

    def remove_data(self) -> None:
        db = self.database
        if db is not None:
            for path in db.parent.glob(db.name + "*"):
                path.unlink(missing_ok=True)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (SIGTERM, or SIGKILL with `kill`) and start again on the same data and port."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()
