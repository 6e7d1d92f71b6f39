"""The ``shim`` command line and the server process's life cycle, as an operator meets them.

Every test runs the real program (``python -m shim`` or the ``shim`` console script) as a
subprocess on real SQLite files. Start-up problems must end with exit code 2 and exactly one
line ``shim: ...`` on stderr (no traceback); a stop by SIGTERM or SIGINT must exit 0 and
leave the database closed cleanly (WAL folded back). Stopping under load: test_shutdown.py.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import (
    Client,
    ShimServer,
    free_port,
    health_status,
    sqlite_endpoint,
)
from tests.support.cli import run_shim
from tests.support.client import SERVING
from tests.support.files import immutable

# --- helpers ----------------------------------------------------------------------------------


def serve_expecting_failure(
    datastore_endpoint: str, listen_address: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_shim(
        "serve",
        "--listen-address",
        listen_address or f"127.0.0.1:{free_port()}",
        "--datastore-endpoint",
        datastore_endpoint,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 2 and one line ``shim: ...`` on stderr containing every fragment."""
    report = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.returncode == 2, report
    assert "Traceback" not in result.stderr, report
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr\n{report}"
    line = lines[0]
    assert line.startswith("shim: "), report
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in the message\n{report}"
    return line


def console_script() -> str:
    """The installed ``shim`` console script (./tests/run installs it next to python)."""
    beside = Path(sys.executable).with_name("shim")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("shim")
    assert found, "the `shim` console script is not installed (./tests/run installs it)"
    return found


def put(client: Client, key: bytes, value: bytes) -> pb.PutResponse:
    return client.kv.Put(pb.PutRequest(key=key, value=value), timeout=10)


def get(client: Client, key: bytes) -> pb.RangeResponse:
    return client.kv.Range(pb.RangeRequest(key=key), timeout=10)


def assert_serves(endpoint: str, key: bytes = b"still-serving") -> None:
    with Client(endpoint) as client:
        rev = put(client, key, b"yes").header.revision
        resp = get(client, key)
        assert [(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs] == [(key, b"yes", rev)]


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


# --- help and entry points ------------------------------------------------------------------


def test_help() -> None:
    top = run_shim("--help")
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout
    serve = run_shim("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    for option in (
        "--listen-address",
        "--datastore-endpoint",
        "--log-level",
        "--sqlite-synchronous",
        "--max-request-bytes",
        "--name",
    ):
        assert option in serve.stdout, f"{option} missing from `shim serve --help`"
    assert serve.stderr == ""


def test_console_script_help() -> None:
    result = run_shim("serve", "--help", program=[console_script()])
    assert result.returncode == 0, result.stderr
    assert "--datastore-endpoint" in result.stdout


def test_bad_option_value_is_a_usage_error() -> None:
    result = run_shim("serve", "--sqlite-synchronous", "SOMETIMES")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--sqlite-synchronous" in result.stderr


def test_non_positive_max_request_bytes(tmp_path: Path) -> None:
    result = run_shim(
        "serve",
        "--max-request-bytes",
        "0",
        "--datastore-endpoint",
        sqlite_endpoint(tmp_path / "state.db"),
    )
    assert_clean_failure(result, "--max-request-bytes")
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("how", ["python -m shim", "console script"])
def test_serve_entry_points(tmp_path: Path, how: str) -> None:
    """Both ways of starting the server serve the API and stop cleanly on SIGTERM."""
    server = ShimServer(tmp_path / "shim")
    if how == "console script":
        program = console_script()
        server.argv = lambda: [  # type: ignore[method-assign]
            program,
            "serve",
            "--listen-address",
            server.endpoint,
            "--datastore-endpoint",
            server.datastore_endpoint,
        ]
    with server:
        assert health_status(server.endpoint) == SERVING
        assert_serves(server.endpoint)
    assert server.returncode == 0


@pytest.mark.parametrize(
    ("args", "uvloop"),
    [([], True), (["--event-loop", "uvloop"], True), (["--event-loop", "asyncio"], False)],
)
def test_event_loop(tmp_path: Path, args: list[str], uvloop: bool) -> None:
    """uvloop by default, the standard library's loop on request: each serves and stops
    cleanly, and the process has loaded uvloop's extension only when it runs on it."""
    with ShimServer(tmp_path / "shim", extra_args=args) as server:
        assert_serves(server.endpoint)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert ("/uvloop/loop." in maps) is uvloop
    assert server.returncode == 0


# --- start-up configuration errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("mysql://x", "mysql"),
        ("etcd://127.0.0.1:2379", "etcd"),
        ("state.db", "scheme"),
    ],
)
def test_unknown_datastore_scheme(endpoint: str, fragment: str) -> None:
    assert_clean_failure(serve_expecting_failure(endpoint), fragment)


def test_path_under_a_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a directory\n")
    result = serve_expecting_failure(sqlite_endpoint(regular / "x" / "state.db"))
    assert_clean_failure(result, str(regular))
    assert regular.read_text() == "not a directory\n"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    assert_clean_failure(serve_expecting_failure(f"sqlite://{tmp_path / 'db'}"), "directory")
    assert_clean_failure(serve_expecting_failure(f"sqlite://{tmp_path / 'db'}/"), "directory")
    assert list((tmp_path / "db").iterdir()) == []


@pytest.mark.parametrize(
    "path",
    [
        "/proc/state.db",  # /proc refuses new files, even root's
        "/proc/shim-test-dir/state.db",  # ... and new directories
        "/proc/self/state.db",
    ],
)
def test_path_nobody_can_write(path: str) -> None:
    assert_clean_failure(serve_expecting_failure(f"sqlite://{path}"), path.rsplit("/", 1)[0])


def test_directory_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    with immutable(locked):
        result = serve_expecting_failure(sqlite_endpoint(locked / "state.db"))
    assert_clean_failure(result, str(locked))
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a database\n" * 3,
        random.Random(7).randbytes(64 * 1024),
        b"SQLite format 3\x00" + random.Random(8).randbytes(4080),  # right magic, garbage after
    ],
    ids=["text", "random", "bad-header"],
)
def test_not_a_sqlite_database(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(content)
    result = serve_expecting_failure(sqlite_endpoint(db))
    assert_clean_failure(result, str(db))
    assert db.read_bytes() == content, "a file shim refused must be left untouched"


def test_second_server_on_the_same_database(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        rev = put(client, b"before", b"1").header.revision
    result = serve_expecting_failure(shim.datastore_endpoint)
    assert_clean_failure(result, "in use")
    assert shim.running
    assert health_status(shim.endpoint) == SERVING
    assert_serves(shim.endpoint)
    with Client(shim.endpoint) as client:
        assert [kv.mod_revision for kv in get(client, b"before").kvs] == [rev]


def test_second_server_through_a_symlink(shim: ShimServer, tmp_path: Path) -> None:
    """Another path to the same file (a symlink to it, or to its directory) meets the same
    lock: two servers on one database would hand out the same revisions."""
    assert shim.database is not None
    (tmp_path / "link.db").symlink_to(shim.database)
    (tmp_path / "dir").symlink_to(shim.database.parent, target_is_directory=True)
    for other in (tmp_path / "link.db", tmp_path / "dir" / shim.database.name):
        result = serve_expecting_failure(f"sqlite://{other}")  # as given, not resolved
        assert_clean_failure(result, "in use")
    assert_serves(shim.endpoint)


def test_listen_address_used_by_another_shim(shim: ShimServer, tmp_path: Path) -> None:
    result = serve_expecting_failure(sqlite_endpoint(tmp_path / "other.db"), shim.endpoint)
    assert_clean_failure(result, shim.endpoint, "in use")
    assert_serves(shim.endpoint)


def test_listen_address_used_by_another_program(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        result = serve_expecting_failure(sqlite_endpoint(tmp_path / "state.db"), address)
    assert_clean_failure(result, address, "in use")


def test_listen_address_without_port(tmp_path: Path) -> None:
    result = serve_expecting_failure(sqlite_endpoint(tmp_path / "state.db"), "localhost")
    assert_clean_failure(result, "localhost")


# --- a running server ------------------------------------------------------------------------


def test_health_serving(shim: ShimServer) -> None:
    assert health_status(shim.endpoint) == SERVING


def test_fresh_store_is_at_revision_1(shim: ShimServer) -> None:
    with Client(shim.endpoint) as client:
        resp = client.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=10)
        assert resp.header.revision == 1
        assert resp.count == 0
        assert list(resp.kvs) == []
        assert put(client, b"first", b"v").header.revision == 2


@pytest.mark.parametrize(
    "method",
    [
        "/etcdserverpb.Auth/AuthEnableNow",
        "/etcdserverpb.KV/RangeStream",
        "/etcdserverpb.NoSuchService/Anything",
    ],
)
def test_unknown_rpc_is_unimplemented(shim: ShimServer, method: str) -> None:
    with grpc.insecure_channel(shim.endpoint) as channel:
        call = channel.unary_unary(method)  # no serializers: raw bytes in and out
        with pytest.raises(grpc.RpcError) as excinfo:
            call(b"", timeout=10)
        assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_serves(shim.endpoint)


# --- stopping ------------------------------------------------------------------------------


def test_stop_of_an_idle_server_leaves_no_wal(shim: ShimServer) -> None:
    db = Path(shim.datastore_endpoint.removeprefix("sqlite://"))
    with Client(shim.endpoint) as client:
        for i in range(50):
            put(client, b"idle/%d" % i, b"x" * 100)
    assert wal_size(db) > 0  # the writes went to the WAL first
    assert shim.stop() == 0
    assert wal_size(db) == 0
