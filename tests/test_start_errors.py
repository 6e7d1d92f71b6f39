"""What a new user meets at start-up: ports that do not exist, port 0, a data directory they
cannot enter, and a SQLite file that belongs to another program.

Each refusal is one line ``shim: ...`` on stderr naming what is wrong (exit code 2 for
``serve``, as every usage error), touches no file, and shows no traceback.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import apsw
import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import Client, ShimServer, free_port, health_status, sqlite_endpoint
from tests.support.cli import run_shim
from tests.support.client import SERVING


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    report = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == code, report
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shim: "), report
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in the message\n{report}"


# --- ports ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--listen-address", "localhost:99999"], "'localhost:99999': port 99999 is out of range"),
        (["--listen-address", "http://127.0.0.1:65536"], "port 65536 is out of range"),
        (["--listen-address", "127.0.0.1:http"], "must be host:port"),
        (["--metrics-address", "127.0.0.1:99999"], "--metrics-address '127.0.0.1:99999'"),
        (["--listen-client-http-urls", "http://127.0.0.1:99999"], "port is out of range"),
        (["--listen-metrics-urls", "ftp://127.0.0.1:2381"],
         "--listen-metrics-urls 'ftp://127.0.0.1:2381': use http://HOST:PORT or https://HOST:PORT"),
        (["--join", "http://127.0.0.1:99999", "--token", "t"], "--join '127.0.0.1:99999'"),
        (["--advertise-client-urls", "http://node:99999"], "--advertise-client-urls"),
        (["--advertise-client-urls", "node.example:2379"], "use http://HOST:PORT"),
    ],
    ids=["listen", "listen-url", "listen-name", "metrics", "gateway", "metrics-urls", "join",
         "advertise", "advertise-no-scheme"],
)
def test_a_port_out_of_range_is_refused(tmp_path: Path, args: list[str], fragment: str) -> None:
    db = tmp_path / "state.db"
    listen = ["--listen-address", f"127.0.0.1:{free_port()}"]
    result = run_shim("serve", "--datastore-endpoint", sqlite_endpoint(db), *listen, *args)
    assert_one_line(result, 2, fragment)
    assert not db.exists()  # refused before anything was opened


def test_a_topology_link_with_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    topology = tmp_path / "links.json"
    topology.write_text('{"links": [{"url": "http://127.0.0.1:70000", "token": "t"}]}')
    result = run_shim(
        "serve", "--datastore-endpoint", sqlite_endpoint(tmp_path / "state.db"),
        "--listen-address", f"127.0.0.1:{free_port()}", "--topology", str(topology),
    )
    assert_one_line(result, 2, "port 70000 is out of range")


class PortZeroShim(ShimServer):
    """shim told to bind free ports itself: ready once its log says where it serves."""

    def is_ready(self) -> bool:
        return "serving etcd v3 API on" in self.log_tail(20)


def test_port_0_binds_a_free_port_and_the_log_says_which(tmp_path: Path) -> None:
    args = ["--listen-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
            "--listen-client-http-urls", "http://127.0.0.1:0"]
    with PortZeroShim(tmp_path / "shim", extra_args=args) as server:
        log = server.log_tail(20)
        grpc_address = re.search(r"serving etcd v3 API on (\S+) ", log)
        metrics_url = re.search(r"serving Prometheus metrics on (\S+)", log)
        gateway_url = re.search(r"serving the HTTP/JSON gateway on (\S+)", log)
        assert grpc_address and metrics_url and gateway_url, log
        for found in (grpc_address, metrics_url, gateway_url):
            assert not re.search(r":0(/|$)", found.group(1)), log  # the bound port, not 0
        assert health_status(grpc_address.group(1)) == SERVING
        with Client(grpc_address.group(1)) as client:
            assert client.kv.Range(pb.RangeRequest(key=b"k"), timeout=10).header.revision == 1
        with urllib.request.urlopen(metrics_url.group(1), timeout=10) as resp:
            assert b"shim" in resp.read()
        with urllib.request.urlopen(gateway_url.group(1) + "/health", timeout=10) as resp:
            assert b'"health":"true"' in resp.read()


# --- a data directory this user cannot enter ---------------------------------------------------


def as_nobody() -> list[str]:
    """A prefix that runs a command as the unprivileged user 65534 (tests run as root)."""
    if shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    elif shutil.which("runuser"):
        prefix = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser is installed: cannot run shim as another user")
    # An interpreter under a directory only root may enter (pyenv's in /root) cannot start as
    # another user at all: nothing about shim could be seen then.
    probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user 65534 cannot run {sys.executable}: {probe.stderr.strip()}")
    return prefix


@pytest.mark.parametrize(
    "command", [["serve", "--listen-address", "127.0.0.1:0"], ["status"], ["sql", "SELECT 1"]],
    ids=["serve", "status", "sql"],
)
def test_a_directory_the_user_cannot_enter(tmp_path: Path, command: list[str]) -> None:
    locked = tmp_path / "locked"
    (locked / "data").mkdir(parents=True)
    locked.chmod(0o700)  # root's: user 65534 may not enter it
    tmp_path.chmod(0o755)  # ... though it may reach it
    db = locked / "data" / "state.db"
    result = run_shim(
        *command[:1], "--datastore-endpoint", sqlite_endpoint(db), *command[1:],
        program=[*as_nobody(), sys.executable, "-m", "shim"],
    )
    assert_one_line(result, 2 if command[0] == "serve" else 1, str(db), "Permission denied")
    assert list((locked / "data").iterdir()) == []


# --- a SQLite file of another program --------------------------------------------------------


def test_a_sqlite_file_of_another_program_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = db.read_bytes()
    result = run_shim(
        "serve", "--datastore-endpoint", sqlite_endpoint(db),
        "--listen-address", f"127.0.0.1:{free_port()}",
    )
    assert_one_line(result, 2, str(db), "not a shim database", "notes")
    assert db.read_bytes() == before, "a file shim refused must be left untouched"
    assert not db.with_name("notes.db-wal").exists()


def test_an_empty_file_is_used(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch()
    with ShimServer(tmp_path, sqlite_endpoint(db)) as server, Client(server.endpoint) as client:
        client.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
    assert db.stat().st_size > 0
    with ShimServer(tmp_path, sqlite_endpoint(db)) as server, Client(server.endpoint) as client:
        assert client.kv.Range(pb.RangeRequest(key=b"k"), timeout=10).kvs[0].value == b"v"


# --- open files ----------------------------------------------------------------------------


def _open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit in /proc")


def test_the_open_files_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """A service started with a small soft limit under a higher hard one (common) gets the
    hard one, as etcd (Go) does; one left small even so is warned about, and served."""
    launcher = [shutil.which("prlimit") or "prlimit", "--nofile=64:4096", "--"]
    with ShimServer(tmp_path / "raised", launcher=launcher) as server:
        assert server.pid is not None and _open_files_limit(server.pid) == 4096
        assert "open files limit" not in server.log_tail()
    capped = [shutil.which("prlimit") or "prlimit", "--nofile=200:200", "--"]
    with ShimServer(tmp_path / "capped", launcher=capped) as server:
        with Client(server.endpoint) as client:
            client.kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=10)
        assert "the open files limit is 200" in server.log_tail()
