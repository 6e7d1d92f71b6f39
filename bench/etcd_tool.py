"""etcd's official benchmark tool (tools/benchmark): build it on demand, run it, parse it."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.shim_server import REPO_ROOT

TOOL_DIR = REPO_ROOT / "bench" / ".tools"
# The project's shared tools sit beside the checkout (or beside the folder of worktrees).
BUILD_SCRIPT = next(
    (path for path in (root / "shared" / "tools" / "build-etcd-benchmark.sh"
                       for root in (REPO_ROOT.parent, REPO_ROOT.parent.parent)) if path.is_file()),
    REPO_ROOT.parent / "shared" / "tools" / "build-etcd-benchmark.sh",
)
TOOL_ENV = "BENCH_ETCD_TOOL"

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_TITLE = re.compile(r"^\s*(.+?)\s+summary:\s*$", re.IGNORECASE)
_FIELD = re.compile(r"^\s*(Total|Slowest|Fastest|Average|Stddev|Requests/sec):\s*" + _NUMBER)
_PCTL = re.compile(r"^\s*" + _NUMBER + r"%\s+in\s+" + _NUMBER + r"\s*secs?\.?")
_HIST = re.compile(r"^\s*" + _NUMBER + r"\s+\[(\d+)\]")
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.*\S)\s*$")


def _works(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        result = subprocess.run(
            [str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "txn-put" in result.stdout + result.stderr


def ensure_tool(explicit: str | None = None) -> Path:
    """The benchmark binary: --etcd-tool, $BENCH_ETCD_TOOL, bench/.tools/, or build it there."""
    for candidate in (explicit, os.environ.get(TOOL_ENV)):
        if candidate:
            path = Path(candidate)
            if not _works(path):
                raise SystemExit(f"{path} is not a working etcd benchmark tool")
            return path
    built = TOOL_DIR / "benchmark"
    if _works(built):
        return built
    if not BUILD_SCRIPT.is_file():
        raise SystemExit(f"cannot build the etcd benchmark tool: {BUILD_SCRIPT} is missing")
    TOOL_DIR.mkdir(parents=True, exist_ok=True)
    log = TOOL_DIR / "build.log"
    print(f"building etcd's benchmark tool into {TOOL_DIR} (log: {log}, about a minute)")
    with log.open("w") as out:
        code = subprocess.call(
            ["bash", str(BUILD_SCRIPT), str(TOOL_DIR)], stdout=out, stderr=subprocess.STDOUT
        )
    if code != 0 or not _works(built):
        raise SystemExit(f"building the benchmark tool failed (exit {code}); see {log}")
    return built


@dataclass
class Section:
    """One "Summary:" block of the tool's report. Times are in seconds."""

    title: str = ""
    total: float | None = None
    rps: float | None = None
    average: float | None = None
    slowest: float | None = None
    fastest: float | None = None
    count: int = 0  # successful requests (sum of the histogram buckets)
    percentiles: dict[float, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def pct_ms(self, pct: float) -> float | None:
        value = self.percentiles.get(pct)
        return None if value is None else value * 1000


def parse_report(text: str) -> list[Section]:
    """Every summary block in the tool's stdout, in order.

    Progress bars are drawn with carriage returns, so both \\r and \\n end a line. A titled
    block ("Watch creation summary:") names the "Summary:" block that follows it; an
    "Error distribution:" block belongs to the block before it, or stands alone when every
    request failed.
    """
    sections: list[Section] = []
    current: Section | None = None
    title = ""
    in_errors = False
    for line in re.split(r"[\r\n]+", text):
        stripped = line.strip()
        if not stripped:
            continue
        titled = _TITLE.match(stripped)
        if titled and stripped.lower() != "summary:":
            title, current, in_errors = titled.group(1), None, False
            continue
        if stripped == "Summary:":
            current = Section(title=title)
            sections.append(current)
            title, in_errors = "", False
            continue
        if stripped == "Error distribution:":
            if current is None:
                current = Section(title=title)
                sections.append(current)
            in_errors = True
            continue
        if current is None:
            continue
        if in_errors:
            error = _ERROR.match(stripped)
            if error:
                current.errors[error.group(2)] = current.errors.get(error.group(2), 0) + int(
                    error.group(1)
                )
            continue
        _parse_line(current, stripped)
    return sections


def _parse_line(section: Section, line: str) -> None:
    matched = _FIELD.match(line)
    if matched:
        name, value = matched.group(1), float(matched.group(2))
        if name == "Total":
            section.total = value
        elif name == "Requests/sec":
            section.rps = value
        elif name == "Average":
            section.average = value
        elif name == "Slowest":
            section.slowest = value
        elif name == "Fastest":
            section.fastest = value
        return
    pctl = _PCTL.match(line)
    if pctl:
        section.percentiles[float(pctl.group(1))] = float(pctl.group(2))
        return
    hist = _HIST.match(line)
    if hist:
        section.count += int(hist.group(2))


@dataclass
class ToolRun:
    argv: list[str]
    returncode: int | None  # None: killed at the timeout
    seconds: float
    client_cpu_s: float
    sections: list[Section]
    stdout_path: Path
    stderr_path: Path


def run_tool(
    tool: Path, endpoint: str, args: list[str], out_prefix: Path, timeout: float
) -> ToolRun:
    """Run ``benchmark --precise --endpoints=ENDPOINT ARGS``, keeping stdout/stderr/command."""
    argv = [str(tool), "--precise", f"--endpoints={endpoint}", *args]
    stdout_path = out_prefix.parent / f"{out_prefix.name}.out"
    stderr_path = out_prefix.parent / f"{out_prefix.name}.err"
    (out_prefix.parent / f"{out_prefix.name}.cmd").write_text(" ".join(argv) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            returncode: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sections = parse_report(stdout_path.read_text(errors="replace"))
    return ToolRun(argv, returncode, seconds, cpu, sections, stdout_path, stderr_path)
