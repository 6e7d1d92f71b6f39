"""Making files unwritable for tests of read-only databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make paths unwritable, even for root, for the duration of the block.

    chmod 0444/0555 does not stop root, and the tests run as root in CI, so as root the paths
    get the immutable attribute (``chattr +i``), which root's writes do respect.
    """
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        raise RuntimeError("running as root without chattr: cannot make a path unwritable")
    done: list[Path] = []
    try:
        for p in paths:
            subprocess.run([chattr, "+i", str(p)], check=True, capture_output=True, text=True)
            done.append(p)
        yield
    finally:
        for p in reversed(done):
            subprocess.run([chattr, "-i", str(p)], check=True)
