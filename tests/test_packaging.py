"""A built wheel works on its own: `pip install .` needs no code generator and ships the
migrations, so an installed server starts outside the source tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Self

from shim.pb import rpc_pb2
from tests.support import REPO_ROOT, Client, ShimServer
from tests.support.process import child_env


class InstalledShim(ShimServer):
    """`python -m shim serve` from an install target, run outside the checkout."""

    def __init__(self, workdir: Path, target: Path) -> None:
        super().__init__(workdir)
        self.target = target

    def start(self) -> Self:
        self._spawn(
            self.argv(),
            env=child_env({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(self.target)}),
            cwd=self.workdir,
        )
        self._wait_ready(self._serving, self.startup_timeout)
        return self


def test_wheel_installs_and_serves(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
         str(REPO_ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = wheels.glob("shim-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True,
    )
    assert sorted(p.name for p in (target / "shim" / "migrations" / "sqlite").iterdir()) == [
        p.name for p in sorted((REPO_ROOT / "migrations" / "sqlite").glob("*.sql"))
    ]

    imported = subprocess.run(
        [sys.executable, "-c", "import shim; print(shim.__file__)"],
        env=child_env({"PYTHONPATH": str(target)}), cwd=tmp_path,
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert Path(imported).is_relative_to(target), imported

    server = InstalledShim(tmp_path / "run", target).start()
    try:
        with Client(server.endpoint) as client:
            client.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"))
            got = client.kv.Range(rpc_pb2.RangeRequest(key=b"k"))
        assert [(kv.key, kv.value) for kv in got.kvs] == [(b"k", b"v")]
    finally:
        server.stop()
