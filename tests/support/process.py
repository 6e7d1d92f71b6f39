"""A server subprocess with its output in a log file: the one process harness of the tests and
the benchmarks (etcd, shim, and bench's own targets are subclasses).

A server runs in its own session (a Ctrl-C reaches the test runner only, which then stops the
servers in order), is stopped by its PID (SIGTERM, then SIGKILL, then SIGKILL of whatever it
had started that is still alive), and is killed when the interpreter exits without having
stopped it. What bench measures of a server is here too: CPU time and RSS of its process tree,
and the disk its data takes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

from . import procfs

# Servers still running when the interpreter exits (a crashed or interrupted run) are killed,
# with their process groups, so no stray etcd/shim keeps ports and temp dirs busy.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # it leads its own group while alive
            proc.wait()


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries its log tail."""


def tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a text file, or a note if there is none."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One subprocess whose stdout and stderr go to `log_path` (appended across restarts).

    Subclasses say how to run it (`argv`, `env`, `cwd`) and when it serves (`is_ready`).
    Without a `workdir` it makes a temporary one, removed on leaving a `with` block; a given
    workdir (e.g. pytest's tmp_path) is left alone. `launcher` is put in front of the command
    (e.g. `ip netns exec NAME`, which execs the command itself: the PID stays the server's).
    """

    name = "server"
    startup_timeout = 20.0

    def __init__(
        self, workdir: Path | None, log_name: str, launcher: Sequence[str] = ()
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.workdir / log_name
        self.data_dir = self.workdir  # what disk_bytes() measures; subclasses narrow it
        self.launcher = list(launcher)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tree: list[int] = []  # the process tree seen at the last footprint or stop
        self.returncode: int | None = None
        self.spawned_at = 0.0  # time.time() just before the process was started

    # -- what subclasses define --------------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> Mapping[str, str] | None:
        return None

    def cwd(self) -> Path | None:
        return None

    def is_ready(self) -> bool:
        raise NotImplementedError

    # -- state -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port of its etcd API."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def describe_log(self, lines: int = 60) -> str:
        return f"--- last lines of {self.name} log {self.log_path} ---\n{self.log_tail(lines)}"

    def describe(self) -> str | None:
        """A line about how this server was set up, for a benchmark's report (None: nothing
        to add)."""
        return None

    def extra_logs(self) -> dict[str, Path]:
        """Other logs worth keeping with the server's own, by a short name."""
        return {}

    # -- life cycle --------------------------------------------------------------------------

    def spawn(self) -> Self:
        """Start the process without waiting for it to serve (e.g. the members of an etcd
        cluster, which serve only once a quorum is up); `wait_ready` waits."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [*self.launcher, *self.argv()]
        env = self.env()
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self.spawned_at = time.time()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=self.cwd(),
                start_new_session=True,
            )
        self.returncode = None
        self._tree = [self._proc.pid]
        _live.add(self._proc)
        return self

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Poll `is_ready` until true; raise with the log tail on early exit or timeout (the
        process is then killed)."""
        assert self._proc is not None, f"{self.name} was not spawned"
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise ServerStartError(
                    f"{self.name} exited with code {code} during startup\n{self.describe_log()}"
                )
            if self.is_ready():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} not ready after {timeout:.0f}s\n{self.describe_log()}"
                )
            time.sleep(0.05)

    def start(self) -> Self:
        return self.spawn().wait_ready()

    def terminate(self) -> None:
        """Send SIGTERM and return (`stop` waits); see `stop_all`."""
        if self._proc is not None and self._proc.poll() is None:
            self._tree = procfs.process_tree(self._proc.pid) or self._tree
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit within `timeout`. Returns exit code."""
        if self._proc is None:
            return self.returncode
        self.terminate()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash, with no chance to clean up."""
        if self._proc is None:
            return self.returncode
        if self._proc.poll() is None:
            self._tree = procfs.process_tree(self._proc.pid) or self._tree
            self._proc.kill()
            self._proc.wait()
        return self._reap()

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _reap(self) -> int | None:
        assert self._proc is not None
        self.returncode = self._proc.wait()
        _live.discard(self._proc)
        # Children it started and left behind (e.g. serving processes): each by its PID.
        for pid in self._tree[1:]:
            if procfs.process_tree(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._proc = None
        return self.returncode

    # -- footprint ---------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """CPU time used so far by the live process tree (0 when not running)."""
        return procfs.cpu_seconds(self._proc.pid) if self.running and self._proc else 0.0

    def rss_bytes(self) -> int:
        """VmRSS summed over the process tree."""
        return procfs.rss_bytes(self._proc.pid) if self.running and self._proc else 0

    def disk_bytes(self) -> int | None:
        """Allocated size of the data (None: it keeps none)."""
        return procfs.dir_bytes(self.data_dir) if self.data_dir.exists() else None

    def wal_bytes(self) -> int | None:
        """The write-ahead log's share of disk_bytes() (None: not known)."""
        return None

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def stop_all(servers: Iterable[ServerProcess], timeout: float = 20.0) -> None:
    """SIGTERM every server at once, then wait for them together (SIGKILL at the timeout):
    a fleet stops in the time of its slowest member, not the sum."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    deadline = time.monotonic() + timeout
    for server in servers:
        server.stop(max(0.1, deadline - time.monotonic()))


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment plus `extra`."""
    env = dict(os.environ)
    env.update(extra or {})
    return env
