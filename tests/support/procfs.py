"""Small /proc readers: process trees, RSS, CPU time, file-system type, directory size."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(root: int) -> int:
    """VmRSS summed over the process tree of ``root``."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def pss_bytes(root: int) -> int:
    """Pss (proportional set size: shared pages split among their users) summed over the
    process tree of ``root``; unlike summed VmRSS, it counts shared memory once."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by the live process tree of ``root``."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def minor_faults(root: int) -> int:
    """Minor page faults so far of the live process tree of ``root`` (a page the process
    touched for the first time, e.g. fresh memory from the kernel)."""
    faults = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            faults += int(fields[7])  # minflt
    return faults


def reaped_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s children that have exited and been waited for (cutime +
    cstime): e.g. PostgreSQL backends that the postmaster has reaped."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


@dataclass(frozen=True)
class MachineCpu:
    busy: float  # CPU seconds spent busy by all cores
    total: float  # CPU seconds elapsed over all cores

    @staticmethod
    def read() -> MachineCpu:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        return MachineCpu(busy=(total - idle) / CLOCK_TICKS, total=total / CLOCK_TICKS)


def dir_bytes(path: Path) -> int:
    """Allocated size (st_blocks) of every file under ``path``, like ``du -s``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


def dir_bytes_of(paths: Iterable[Path]) -> int:
    """Allocated size of the given files (missing ones count 0)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.lstat().st_blocks * 512
    return total


def filesystem_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, fs type) of the mount holding ``path``."""
    real = os.path.realpath(path)
    best = ("?", "/", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (device, mount, fstype)
    return best


def wait_quiet(max_seconds: float, idle_pct: float = 85.0, window: float = 2.0) -> float:
    """Wait (at most ``max_seconds``) for a ``window`` with at least ``idle_pct`` % idle CPU.

    Returns the seconds waited. With max_seconds <= 0 it returns at once.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        before = MachineCpu.read()
        time.sleep(window)
        after = MachineCpu.read()
        total = after.total - before.total
        if total > 0 and (1 - (after.busy - before.busy) / total) * 100 >= idle_pct:
            break
    return time.monotonic() - started


def children(pid: int) -> list[int]:
    """The serving processes of the server ``pid`` (they start no processes of their own)."""
    return process_tree(pid)[1:]


def client_connections(pid: int, port: int) -> int:
    """Established TCP connections on local ``port`` whose socket ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC listens dual-stack
        with open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count
