"""A throwaway PostgreSQL server for tests: a cluster of its own in a temp dir, on a loopback port.

It uses Debian's `postgresql` package (initdb, pg_ctl and postgres from
/usr/lib/postgresql/*/bin, or $SHIM_PG_BIN_DIR). PostgreSQL refuses to run as root, so when
the tests run as root the cluster belongs to the `postgres` system user (made by the package),
or to a `shimtest` system user created for the purpose. Password authentication is on for TCP,
so tests can check that passwords stay out of logs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from .net import free_port
from .process import tail

PG_BIN_DIR_ENV = "SHIM_PG_BIN_DIR"
SUPERUSER = "postgres"
TEST_USER = "shimtest"

# Fast and still honest about commits: no fsync (a test cluster need not survive power loss),
# but synchronous_commit stays on, so a commit is in the WAL before it is acknowledged.
DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "64MB",
}

_live: set[PostgresServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop(mode="immediate")


class PostgresStartError(RuntimeError):
    """The cluster could not be made or started; the message carries the log tail."""


def find_pg_bin() -> Path:
    """The directory of initdb and pg_ctl: $SHIM_PG_BIN_DIR, the newest Debian install, or
    the one on PATH."""
    if os.environ.get(PG_BIN_DIR_ENV):
        return Path(os.environ[PG_BIN_DIR_ENV])
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    found = shutil.which("initdb")
    if found is None:
        raise FileNotFoundError(
            "PostgreSQL's initdb not found: install Debian's postgresql package "
            f"(tests/run does), or set {PG_BIN_DIR_ENV}"
        )
    return Path(found).parent


def _owner() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, TEST_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", TEST_USER],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(TEST_USER)


class PostgresServer:
    """initdb + pg_ctl on a loopback port. `url()` gives endpoints for shim; `execute()` runs
    SQL as the superuser. Stopped (and its directory removed) on leaving `with`."""

    name = "postgres"

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.bin_dir = find_pg_bin()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.owner = _owner()
        self.workdir = Path(tempfile.mkdtemp(prefix="shim-pg-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.superuser_password = "su-" + secrets.token_hex(8)
        self.port = 0
        self._names = itertools.count(1)
        if self.owner is not None:
            os.chown(self.workdir, self.owner.pw_uid, self.owner.pw_gid)

    # -- processes ----------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
        if self.owner is not None:
            # runuser rather than subprocess's user=: that needs a plain fork() of this
            # process, which can crash in the child while gRPC threads are running.
            argv = ["runuser", "-u", self.owner.pw_name, "--", *argv]
            env["HOME"] = str(self.workdir)
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env,
            cwd=self.workdir, check=False,
        )

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        if self.owner is not None:
            os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        result = self._run([
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        ])
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _options(self) -> str:
        options = [
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.workdir}",
        ]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        return " ".join(options)

    def start(self, attempts: int = 3) -> Self:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(1, attempts + 1):
            if not self.port or attempt > 1:
                self.port = free_port()
            result = self._run([
                str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir),
                "-l", str(self.log_path), "-o", self._options(),
            ])
            if result.returncode == 0:
                _live.add(self)
                return self
            if "already in use" not in tail(self.log_path, 20) or attempt == attempts:
                raise PostgresStartError(
                    f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n"
                    f"--- {self.log_path} ---\n{tail(self.log_path)}"
                )
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop; mode "immediate" is a crash (no checkpoint, recovery on start)."""
        if not (self.data_dir / "postmaster.pid").exists():
            _live.discard(self)
            return
        result = self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode,
                            "-D", str(self.data_dir)])
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            raise PostgresStartError(
                f"pg_ctl stop failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"{tail(self.log_path)}"
            )
        _live.discard(self)

    def restart(self, downtime: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down for `downtime` seconds, and start again on the same port."""
        self.stop(mode)
        time.sleep(downtime)
        self.start(attempts=1)

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- databases and users ------------------------------------------------------------------

    def url(
        self, database: str, user: str = SUPERUSER, password: str | None = None,
        scheme: str = "postgres",
    ) -> str:
        """An endpoint for `--datastore-endpoint` (password URL-quoted)."""
        secret = self.superuser_password if password is None else password
        return (
            f"{scheme}://{quote(user, safe='')}:{quote(secret, safe='')}@127.0.0.1:{self.port}/"
            f"{quote(database, safe='')}?sslmode=disable"
        )

    def new_database_name(self, prefix: str = "shim") -> str:
        """A database name not used before in this cluster (the database is not created)."""
        return f"{prefix}_{os.getpid()}_{next(self._names)}"

    def execute(self, sql: str, *args: object, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser and return its rows."""

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg_connect(
                host="127.0.0.1", port=self.port, user=SUPERUSER,
                password=self.superuser_password, database=database, ssl=False,
            )
            try:
                return [tuple(row) for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def create_role(self, name: str, password: str, createdb: bool = True) -> None:
        quoted_password = password.replace("'", "''")
        self.execute(
            f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{quoted_password}'"
            + (" CREATEDB" if createdb else "")
        )

    def databases(self) -> set[str]:
        return {row[0] for row in self.execute("SELECT datname FROM pg_database")}


async def asyncpg_connect(**kwargs: Any) -> Any:
    import asyncpg  # the postgres extra; imported only by tests that use PostgreSQL

    return await asyncpg.connect(**kwargs)


# -- one cluster for the whole test session -------------------------------------------------

_shared: PostgresServer | None = None


def shared_postgres() -> PostgresServer:
    """The test session's PostgreSQL cluster, started on first use (the `postgres` fixture
    in tests/conftest.py hands out this one and stops it at the end of the session)."""
    global _shared
    if _shared is None or not (_shared.data_dir / "postmaster.pid").exists():
        _shared = PostgresServer().start()
    return _shared


def stop_shared_postgres() -> None:
    global _shared
    if _shared is not None:
        server, _shared = _shared, None
        server.__exit__(None, None, None)


def postgres_endpoint(prefix: str = "shim") -> str:
    """A `--datastore-endpoint` for a database of its own on the session's cluster. The
    database does not exist yet: shim creates it on start."""
    server = shared_postgres()
    return server.url(server.new_database_name(prefix))
