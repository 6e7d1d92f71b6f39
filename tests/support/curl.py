"""HTTP requests the way a user makes them: the real `curl` command (Debian's package)."""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

CURL = shutil.which("curl") or "curl"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def curl(
    url: str,
    body: bytes | str | None = None,
    method: str = "POST",
    headers: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> HttpAnswer:
    """One request; the last response (after any 100 Continue)."""
    argv = [CURL, "-sS", "-i", "-X", method, url, *extra]
    for header in headers:
        argv += ["-H", header]
    data = body.encode() if isinstance(body, str) else body
    if data is not None:
        argv += ["--data-binary", "@-"]
    result = subprocess.run(argv, input=data or b"", capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"curl {url} failed ({result.returncode}): {result.stderr!r}")
    return parse_response(result.stdout)


def parse_response(raw: bytes) -> HttpAnswer:
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
        raw = rest
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpAnswer(status, headers, rest)


_IDS = re.compile(rb'"(cluster_id|member_id|leader)":"\d+"')
_TERM = re.compile(rb'"raft_term":"\d+"')


def normalized(body: bytes) -> bytes:
    """A JSON answer without what two servers legitimately differ in: cluster and member IDs
    (random per cluster) and the raft term (etcd's grows with elections; shim has none)."""
    return _TERM.sub(b'"raft_term":"T"', _IDS.sub(rb'"\1":"ID"', body))


class CurlStream:
    """A streaming request (``curl -N``): its response read line by line as it arrives."""

    def __init__(self, url: str, body: bytes | str, extra: tuple[str, ...] = ()) -> None:
        data = body.encode() if isinstance(body, str) else body
        self._process = subprocess.Popen(
            [CURL, "-sS", "-N", "-X", "POST", url, "--data-binary", "@-", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(data)
        self._process.stdin.close()
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next_line(self, timeout: float = 10.0) -> bytes | None:
        """The next line, or None once the response has ended."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the stream in {timeout} s") from None

    def lines(self, count: int, timeout: float = 10.0) -> list[bytes]:
        found: list[bytes] = []
        for _ in range(count):
            line = self.next_line(timeout)
            assert line is not None, f"the stream ended after {found}"
            found.append(line)
        return found

    def rest(self, timeout: float = 10.0) -> list[bytes]:
        """Every line until the response ends."""
        found: list[bytes] = []
        while (line := self.next_line(timeout)) is not None:
            found.append(line)
        return found

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait(timeout=10)
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> CurlStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
