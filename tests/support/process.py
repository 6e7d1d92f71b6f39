"""A server subprocess with its output in a log file, shared by etcd and shim."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

# Servers still running when the interpreter exits (a crashed or interrupted test
# run) are killed so no stray etcd/shim keeps ports and temp dirs busy.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
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

    Without a `workdir` it makes a temporary one, removed on leaving a `with` block;
    a given workdir (e.g. pytest's tmp_path) is left alone.
    """

    name = "server"

    def __init__(self, workdir: Path | None, log_name: str) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.workdir / log_name
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

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

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # Own process group: a Ctrl-C in the terminal reaches pytest, which
                # then stops the server in order instead of both dying at once.
                start_new_session=True,
            )
        self.returncode = None
        _live.add(self._proc)

    def _wait_ready(self, is_ready: Callable[[], bool], timeout: float) -> None:
        """Poll `is_ready` until true; raise with the log tail on early exit or timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise ServerStartError(
                    f"{self.name} exited with code {code} during startup\n{self.describe_log()}"
                )
            if is_ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.name} not ready after {timeout:.0f}s\n{self.describe_log()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit within `timeout`. Returns exit code."""
        if self._proc is None:
            return self.returncode
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
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
            self._proc.kill()
            self._proc.wait()
        return self._reap()

    def start(self) -> Self:
        raise NotImplementedError

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
        self._proc = None
        return self.returncode


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment plus `extra`."""
    env = dict(os.environ)
    env.update(extra or {})
    return env
