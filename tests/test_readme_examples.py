"""Every shell block of the README is run by a test, so an edit of the README cannot drift from
what works.

Blocks that other test modules already run as a user types them are listed in ELSEWHERE with
the tests that run them (checked to exist); the replication and PostgreSQL examples run here.
A new block, or a changed first command, fails ``test_every_block_is_run_by_a_named_test``
until a test runs it. Fixed ports of the README become free ones; nothing else changes.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support import REPO_ROOT, ServerProcess, free_port, health_status
from tests.support.client import SERVING
from tests.support.postgres import PostgresServer, find_pg_bin
from tests.support.process import child_env
from tests.support.waits import wait_until


def shell_blocks() -> list[list[str]]:
    """The README's ```sh blocks, each as its commands: continuation lines joined, comments
    and blank lines dropped."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", "", body)
        commands = [re.split(r"\s+#\s", line)[0].strip() for line in joined.splitlines()]
        blocks.append([c for c in commands if c and not c.startswith("#")])
    return blocks


# By a block's first command: the tests (file::function, or a script CI runs) that run it.
ELSEWHERE: dict[str, tuple[str, ...]] = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && shim serve": (
        "tests/test_packaging.py::test_the_readme_command_installs_and_serves",
        "tests/test_packaging.py::test_readme_opens_with_the_two_commands",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 put /demo/greeting hello": (
        "tests/test_etcdctl.py::test_put_prints_ok", "tests/test_etcdctl.py::test_get_variants",
        "tests/test_etcdctl_watch_lease.py::test_etcdctl_watch_history_with_prev_kv_as_json",
        "tests/test_etcdctl.py::test_del", "tests/test_etcdctl.py::test_txn_success_branch",
        "tests/test_etcdctl.py::test_compaction", "tests/test_etcdctl.py::test_endpoint_status",
        "tests/test_etcdctl.py::test_endpoint_health", "tests/test_etcdctl.py::test_member_list",
    ),
    # No kube-apiserver or k3s here: the requests they send are compared with etcd's answers.
    "k3s server --datastore-endpoint http://127.0.0.1:2379": (
        "tests/test_kube_apiserver_contract.py",
    ),
    "docker compose -f compose/docker-compose.yml up -d --build": ("compose/smoke.sh",),
    "shim serve --listen-client-http-urls http://127.0.0.1:2378": (
        "tests/test_gateway.py::test_readme_gateway_commands",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 user add root --new-user-password=s3cret": (
        "tests/test_auth_deployments.py::test_readme_authentication_commands",
    ),
    "shim --listen-address 127.0.0.1:2379 --cert-file server.crt --key-file server.key "
    "--trusted-ca-file ca.crt --client-cert-auth": (
        "tests/test_tls.py::test_clients_need_a_certificate_signed_by_the_trusted_ca",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 snapshot save etcd-backup.db": (
        "tests/test_maintenance.py::test_an_etcd_snapshot_restores_into_shim",
    ),
    "etcdutl snapshot restore backup.db --data-dir /var/lib/etcd/restored": (
        "tests/test_maintenance.py::test_a_shim_snapshot_restores_into_etcd",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 snapshot save backup.db": (
        "tests/test_maintenance.py::test_snapshot_save_status_and_restore",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 alarm list": (
        "tests/test_maintenance.py::test_quota_raises_nospace_until_disarmed",
        "tests/test_maintenance.py::test_alarms_as_etcd",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 endpoint hashkv -w json": (
        "tests/test_maintenance.py::test_hashkv_is_etcds_checksum",
    ),
    "etcdctl --endpoints 127.0.0.1:2379 lock job -- echo \"only one at a time\"": (
        "tests/test_lock_election.py::test_etcdctl_lock_and_elect_as_etcd",
    ),
    "sqlite3 -readonly -box shim-data/state.db "
    "\"SELECT * FROM kv WHERE key = '/demo/greeting';\"": (
        "tests/test_storage.py::test_readme_debugging_queries_run_and_answer",
    ),
    "sqlite3 -readonly -box shim-data/state.db \"SELECT l.revision, length(l.value) AS bytes, "
    "hex(l.value) AS value_hex FROM current c JOIN log l ON l.id = c.id WHERE c.key = "
    "CAST('/demo/greeting' AS BLOB);\"": (
        "tests/test_storage.py::test_readme_debugging_queries_run_and_answer",
    ),
}
REPLICATION = "shim --name a --listen-address 127.0.0.1:12379"
INSPECT = "shim status --datastore-endpoint sqlite://./b.db"
OPS = 'shim sql --datastore-endpoint sqlite://./b.db "SELECT kind, ops'
POSTGRES = "pip install '.[postgres]'"
PSQL = 'psql "$URL" -c "SELECT * FROM kv WHERE key LIKE \'/demo/%\' ORDER BY key"'
HERE = (REPLICATION, INSPECT, OPS, POSTGRES, PSQL)  # first commands of the blocks run below


def block(first: str) -> list[str]:
    (found,) = [b for b in shell_blocks() if b[0].startswith(first)]
    return found


def test_every_block_is_run_by_a_named_test() -> None:
    uncovered = [
        b[0] for b in shell_blocks()
        if b[0] not in ELSEWHERE and not any(b[0].startswith(h) for h in HERE)
    ]
    assert not uncovered, f"README blocks no test runs (add a test, then list it): {uncovered}"
    firsts = [b[0] for b in shell_blocks()]
    stale = [first for first in ELSEWHERE if first not in firsts]
    assert not stale, f"listed blocks the README no longer has: {stale}"
    for tests in ELSEWHERE.values():
        for test in tests:
            path, _, function = test.partition("::")
            assert (REPO_ROOT / path).is_file(), test
            if function:
                tree = ast.parse((REPO_ROOT / path).read_text())
                names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
                assert function in names, f"{test} does not exist"


class Node(ServerProcess):
    """A README command that runs a server, as typed (ports aside), in a working directory."""

    name = "readme-node"

    def __init__(self, workdir: Path, command: str, address: str) -> None:
        super().__init__(workdir, f"node-{address.rsplit(':', 1)[1]}.log")
        self.command, self.address = command, address

    def argv(self) -> list[str]:
        words = shlex.split(self.command)
        assert words[0] == "shim", self.command
        return [sys.executable, "-m", "shim", *words[1:]]

    def env(self) -> dict[str, str]:
        return child_env({"PYTHONUNBUFFERED": "1"})

    def cwd(self) -> Path:
        return self.workdir

    def is_ready(self) -> bool:
        return health_status(self.address, timeout=0.5) == SERVING


def run(command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """A README command line in bash, with the test environment's shim and etcdctl."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60,
        env=child_env({"PATH": path, **(env or {})}),
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done)
    return done.stdout


def test_the_replication_example_and_the_inspection_commands(tmp_path: Path) -> None:
    serve_a, serve_b, put_and_get = block(REPLICATION)
    ports = {"127.0.0.1:12379": f"127.0.0.1:{free_port()}",
             "127.0.0.1:12380": f"127.0.0.1:{free_port()}"}

    def local(command: str) -> str:
        for readme_address, free_address in ports.items():
            command = command.replace(readme_address, free_address)
        return command

    with Node(tmp_path, local(serve_a), ports["127.0.0.1:12379"]), \
            Node(tmp_path, local(serve_b), ports["127.0.0.1:12380"]):
        run(local(put_and_get), tmp_path)
        get = local(put_and_get).split(" && ", 1)[1]
        wait_until(lambda: run(get, tmp_path).splitlines() == ["/demo/x", "1"], 10,
                   "the write on b to reach a")
        status, *queries = block(INSPECT)
        report = run(status, tmp_path)
        assert "a" in report and "peer" in report.lower(), report
        for query in queries:
            assert run(query, tmp_path).strip(), query  # a table, with a row at least
        origins = run(queries[-1], tmp_path)
        assert origins.count("\n") >= 3, origins  # header, rule, and a's and b's rows
        (ops,) = block(OPS)
        assert "whole" in run(ops, tmp_path)  # b's own write: a whole value, no field ops


def test_the_postgresql_example_on_a_default_local_postgresql(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """The README's endpoint (sslmode=prefer) on a PostgreSQL without TLS, as initdb makes it,
    with this cluster's address and credentials; then the README's psql lines."""
    install, serve = block(POSTGRES)
    assert install.startswith("pip install '.[postgres]'")
    readme_url = re.search(r"'(postgres://[^']+)'", serve)
    assert readme_url, serve
    ours = urlsplit(postgres.url(postgres.new_database_name()))
    theirs = urlsplit(readme_url.group(1))
    url = urlunsplit((theirs.scheme, ours.netloc, ours.path, theirs.query, ""))
    address = f"127.0.0.1:{free_port()}"
    command = serve.replace(readme_url.group(1), url) + f" --listen-address {address}"
    with Node(tmp_path, command, address):
        run(f"etcdctl --endpoints {address} put /demo/greeting hello", tmp_path)
        psql = str(find_pg_bin() / "psql")
        for line in block(PSQL):
            out = run(line.replace("psql ", f"{shlex.quote(psql)} ", 1), tmp_path,
                      {"URL": url})
            assert "row" in out, (line, out)  # psql's "(N rows)"
