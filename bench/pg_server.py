"""The shim-pg target: shim on a throwaway PostgreSQL cluster of its own, with durable settings.

The cluster comes from tests/support/postgres.py (initdb + pg_ctl, run as the `postgres` user
when we are root), but with PostgreSQL's own durability defaults: the test helper turns fsync
and full_page_writes off for speed, which would make the comparison with etcd and with shim on
SQLite (both fsync every acknowledged write) unfair.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from bench.targets import START_SECONDS
from tests.support import procfs
from tests.support.postgres import PostgresServer
from tests.support.shim_server import ShimServer

# PostgreSQL 15's defaults, written out because the test helper overrides them.
DURABLE_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_connections": "100",
}
# What results.md records, read back from the running server.
REPORTED_SETTINGS = (
    "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "wal_level",
    "shared_buffers", "max_connections", "checkpoint_timeout", "max_wal_size",
)
DATABASE = "shim"


class BenchPostgres(PostgresServer):
    """A PostgresServer with durable settings whose cluster lives under ``parent``.

    The base class makes its directory in the system temp dir; bench wants it next to etcd's
    and shim's data (same disk, checked not to be tmpfs), so it is moved before initdb.
    """

    def __init__(self, parent: Path) -> None:
        super().__init__(DURABLE_SETTINGS)
        shutil.rmtree(self.workdir, ignore_errors=True)  # still empty: nothing initialised
        self.workdir = parent / "postgres"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.workdir.mkdir(parents=True)
        _let_owner_in(parent, self.workdir, self.owner)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def version(self) -> str:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"],
                             capture_output=True, text=True, check=False)
        return out.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ") or "?"

    def reported_settings(self) -> dict[str, str]:
        rows = self.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1::text[])",
            list(REPORTED_SETTINGS),
        )
        found = dict(rows)
        return {name: str(found.get(name, "?")) for name in REPORTED_SETTINGS}


def _let_owner_in(parent: Path, workdir: Path, owner: pwd.struct_passwd | None) -> None:
    """When PostgreSQL runs as another user, it must own ``workdir`` and reach it.

    ``parent`` (``<bench work dir>/shim-pg-<tag>``) and the bench work dir above it were made
    by bench (the latter mode 0700, from mkdtemp) and get o+x; directories further up are
    only checked.
    """
    if owner is None:
        return
    for directory in (parent, parent.parent):
        directory.chmod(directory.stat().st_mode | 0o001)
    for directory in parent.parent.parents:
        if not directory.stat().st_mode & 0o001:
            raise SystemExit(f"PostgreSQL runs as {owner.pw_name} and cannot enter {directory}: "
                             "give --work-dir somewhere it can")
    os.chown(workdir, owner.pw_uid, owner.pw_gid)


class ShimPostgresServer(ShimServer):
    """shim with ``--datastore-endpoint postgres://...`` on a fresh PostgreSQL cluster.

    Server CPU, memory and disk count PostgreSQL too (its whole process tree and data dir):
    etcd's and SQLite-shim's numbers include their storage engines, so this one does as well.
    """

    name = "shim-pg"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, datastore_endpoint="postgres://unset",
                         extra_args=["--log-level", "warning"], startup_timeout=START_SECONDS)
        if importlib.util.find_spec("asyncpg") is None:
            raise SystemExit("shim-pg needs asyncpg: pip install -e '.[postgres]'")
        self.postgres: BenchPostgres | None = None

    def start(self) -> ShimPostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres = BenchPostgres(self.workdir).start()
        self.datastore_endpoint = self.postgres.url(DATABASE)
        super().start()
        return self

    def _pg(self) -> BenchPostgres:
        assert self.postgres is not None, "shim-pg's PostgreSQL is not started"
        return self.postgres

    def describe(self) -> str:
        pg = self._pg()
        settings = ", ".join(f"{k}={v}" for k, v in pg.reported_settings().items())
        return (f"shim on {pg.version()}, a throwaway cluster in the servers' data dir, "
                f"database `{DATABASE}` on 127.0.0.1; settings: {settings}")

    def _postmaster(self) -> int | None:
        return None if self.postgres is None else self.postgres.postmaster_pid()

    def rss_bytes(self) -> int:
        """shim's VmRSS plus PostgreSQL's Pss: its processes share shared_buffers and code, which
        summed VmRSS would count once per process."""
        postmaster = self._postmaster()
        return super().rss_bytes() + (procfs.pss_bytes(postmaster) if postmaster else 0)

    def cpu_seconds(self) -> float:
        """shim's tree, PostgreSQL's live processes, and the backends that have exited."""
        postmaster = self._postmaster()
        own = super().cpu_seconds()
        if postmaster is None:
            return own
        return own + procfs.cpu_seconds(postmaster) + procfs.reaped_cpu_seconds(postmaster)

    def disk_bytes(self) -> int | None:
        if self.postgres is None or not self.postgres.data_dir.exists():
            return None
        return procfs.dir_bytes(self.postgres.data_dir)

    def wal_bytes(self) -> int | None:
        return None if self.postgres is None else procfs.dir_bytes(
            self.postgres.data_dir / "pg_wal"
        )

    def extra_logs(self) -> dict[str, Path]:
        return {} if self.postgres is None else {"postgres": self.postgres.log_path}

    def stop(self, timeout: float = 15.0) -> int | None:
        code = super().stop(timeout)
        if self.postgres is not None:
            self.postgres.stop()
        return code

    def remove_data(self) -> None:
        super().remove_data()
        if self.postgres is not None:
            shutil.rmtree(self.postgres.workdir, ignore_errors=True)
