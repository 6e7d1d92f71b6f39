"""What a user gets: the wheel holds the whole package, and the README's first command, run
as written in a fresh virtual environment from a copy of the checkout, serves etcdctl.

Nothing here uses the test environment's own install: the wheel is built from the checkout,
and the README's command makes its own venv, so an editable install cannot hide a miss.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, etcdctl, find_etcd_binary, health_status
from tests.support.client import SERVING
from tests.support.installed import SOURCE, package_files
from tests.support.process import child_env

README_ADDRESS = "127.0.0.1:2379"  # where the README's `shim serve` listens (the default)


def readme_commands() -> list[str]:
    """The commands of the README's first shell block, comments stripped."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no ```sh block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_two_commands() -> None:
    """Rule one: the first block holds exactly the server command and the test command, and the
    test command is what CI runs."""
    serve, test = readme_commands()
    assert serve.endswith("pip install . && shim serve"), serve
    assert test == "./tests/run", test
    assert "./tests/run" in (REPO_ROOT / ".ci" / "run").read_text()


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
         str(REPO_ROOT)],
        check=True, capture_output=True, cwd=out,
    )
    (wheel,) = out.glob("shim_etcd-*.whl")
    return wheel


def test_the_wheel_holds_every_file_of_the_package(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    shipped = sorted(n.removeprefix("shim/") for n in names if n.startswith("shim/"))
    # Every module, stub, migration and data file under src/shim, and nothing else.
    assert shipped == sorted(package_files(SOURCE)), "the wheel and src/shim differ"
    assert any(n.startswith("shim/migrations/sqlite/0001_") for n in names)
    assert any(n.startswith("shim/migrations/postgres/0001_") for n in names)
    assert {"shim/replication/policy.json", "shim/py.typed"} <= set(names)
    # Our distribution's name, never PyPI's unrelated `shim`, and nothing that would pull it.
    fields = [line.split(": ", 1) for line in metadata.decode().splitlines() if ": " in line]
    assert ["Name", "shim-etcd"] in fields
    requires = [value for key, value in fields if key == "Requires-Dist"]
    assert not [r for r in requires if re.match(r"shim\b(?!-)", r)], requires


@pytest.fixture
def readme_port() -> Iterator[None]:
    """The README's server listens on the default port: take it for this test alone (two test
    runs on one machine take turns), and fail clearly if something else holds it."""
    with open("/tmp/shim-readme-port.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if health_status(README_ADDRESS, timeout=0.5) is not None:
            pytest.fail(f"something already serves {README_ADDRESS}; the README's server needs it")
        yield


def copy_of_checkout(dest: Path) -> Path:
    """The checkout's files as a fresh clone would have them (no venv, caches or data)."""
    shutil.copytree(
        REPO_ROOT, dest,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "shim-data",
            ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "results", ".tools",
        ),
    )
    return dest


@pytest.mark.slow
def test_the_readme_command_installs_and_serves(tmp_path: Path, readme_port: None) -> None:
    serve_command = readme_commands()[0]
    checkout = copy_of_checkout(tmp_path / "shim")
    log_path = tmp_path / "readme-command.log"
    # The README's line, as a user pastes it, in a shell whose python3 is the one the tests
    # run on (no venv active) and without the test environment's commands on the PATH.
    base_bin = Path(getattr(sys, "_base_executable", sys.executable)).parent
    path = os.pathsep.join([str(base_bin), "/usr/local/bin", "/usr/bin", "/bin"])
    env = child_env({"PATH": path, "PYTHONUNBUFFERED": "1"})
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    with log_path.open("wb") as log:
        shell = subprocess.Popen(
            ["bash", "-c", serve_command], cwd=checkout, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300  # a venv and pip install with the dependencies
        while health_status(README_ADDRESS, timeout=0.5) != SERVING:
            assert shell.poll() is None, f"the command ended:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)

        # What the venv holds: our distribution, not PyPI's `shim`, and our `shim` command.
        venv_bin = checkout / ".venv" / "bin"
        listed = subprocess.run(
            [str(venv_bin / "python"), "-m", "pip", "list", "--format=freeze"],
            capture_output=True, text=True, check=True,
        ).stdout.lower().split()
        assert any(line.startswith("shim-etcd==") for line in listed), listed
        assert not any(line.startswith("shim==") for line in listed), listed
        version = subprocess.run(
            [str(venv_bin / "shim"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert version.startswith("shim "), version

        # The data lands where the README says: ./shim-data/state.db of the working directory.
        assert (checkout / "shim-data" / "state.db").is_file()

        # Driven by etcdctl as the README shows: put, get, watch (from the put's revision, so
        # the watch sees it whenever it starts; then a second put arrives live).
        put = etcdctl(README_ADDRESS, "put", "/demo/greeting", "hello", "-w", "json").stdout
        revision = re.search(r'"revision":(\d+)', put)
        assert revision, put
        got = etcdctl(README_ADDRESS, "get", "/demo/greeting").stdout
        assert got.split() == ["/demo/greeting", "hello"], got
        watch = subprocess.Popen(
            [find_etcd_binary("etcdctl"), f"--endpoints={README_ADDRESS}", "watch", "/demo/",
             "--prefix", f"--rev={revision.group(1)}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=child_env({"ETCDCTL_API": "3"}),
        )
        try:
            assert watch.stdout is not None
            seen = [watch.stdout.readline().strip() for _ in range(3)]
            assert seen == ["PUT", "/demo/greeting", "hello"], seen
            etcdctl(README_ADDRESS, "put", "/demo/name", "shim")
            seen = [watch.stdout.readline().strip() for _ in range(3)]
            assert seen == ["PUT", "/demo/name", "shim"], seen
        finally:
            watch.kill()
            watch.wait()
    finally:
        if shell.poll() is None:  # Ctrl-C, as a user stops it
            os.killpg(shell.pid, signal.SIGINT)
            try:
                shell.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait()
    assert shell.returncode == 0, log_path.read_text()[-3000:]
