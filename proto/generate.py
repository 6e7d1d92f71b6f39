"""Regenerate shim's Python protobuf/gRPC modules from the .proto files in this directory.

Usage (from the repository root)::

    python proto/generate.py             # writes into src/shim/pb/
    python proto/generate.py --out DIR   # writes into DIR instead

protoc lays the output out like the sources (mvccpb/kv_pb2.py, etcdserverpb/rpc_pb2.py, ...).
We flatten that into a single package and rewrite the cross-file imports so that, e.g.,
``from mvccpb import kv_pb2`` becomes ``from shim.pb import kv_pb2``.  The result depends only
on the .proto files and the grpcio-tools version, so running this twice gives identical files.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
DEFAULT_OUT = REPO_ROOT / "src" / "shim" / "pb"
TARGET_PACKAGE = "shim.pb"
REGEN_COMMAND = "python proto/generate.py"

# Files under PROTO_DIR to compile, relative to it (the path is also the import path).
MESSAGE_ONLY_PROTOS = ("mvccpb/kv.proto", "authpb/auth.proto", "leasepb/lease.proto")
# These also define gRPC services, so they get a *_pb2_grpc.py module as well.
SERVICE_PROTOS = (
    "etcdserverpb/rpc.proto",
    "shimreplpb/replication.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
)
PROTO_FILES = MESSAGE_ONLY_PROTOS + SERVICE_PROTOS

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

INIT_TEXT = (
    '"""Generated protobuf and gRPC modules: the etcd v3 API (lock and election included)\n'
    "and the replication service.\n"
    "\n"
    f"Do not edit: regenerate with ``{REGEN_COMMAND}``.\n"
    '"""\n'
)


def _protoc(*args: str) -> None:
    from grpc_tools import protoc  # imported lazily: only needed when generating

    rc = protoc.main(["grpc_tools.protoc", f"--proto_path={PROTO_DIR}", *args])
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def _run_protoc(work: Path) -> None:
    _protoc(f"--python_out={work}", f"--pyi_out={work}", *PROTO_FILES)
    _protoc(f"--grpc_python_out={work}", *SERVICE_PROTOS)


def _rewrite_imports(text: str, packages: set[str]) -> str:
    alternatives = "|".join(sorted(re.escape(p) for p in packages))
    pattern = re.compile(rf"^from (?:{alternatives}) import (\w+)", re.MULTILINE)
    return pattern.sub(rf"from {TARGET_PACKAGE} import \1", text)


def generate() -> dict[str, str]:
    """Return {file name: contents} for every file of the generated package."""
    packages = {Path(p).parent.as_posix() for p in PROTO_FILES}
    files: dict[str, str] = {"__init__.py": INIT_TEXT}
    with tempfile.TemporaryDirectory(prefix="shim-protoc-") as tmp:
        work = Path(tmp)
        _run_protoc(work)
        for path in sorted(work.rglob("*")):
            if not path.is_file():
                continue
            name = path.name
            if not name.endswith(GENERATED_SUFFIXES):
                raise SystemExit(f"unexpected protoc output: {path.relative_to(work)}")
            if name in files:
                raise SystemExit(f"two .proto files generate the same module name: {name}")
            text = path.read_text(encoding="utf-8")
            files[name] = _rewrite_imports(text, packages)
    leftover = [
        f"{name}: {line.strip()}"
        for name, text in files.items()
        for line in text.splitlines()
        if any(line.startswith(f"from {p} import") for p in packages)
    ]
    if leftover:
        raise SystemExit("unrewritten imports remain:\n" + "\n".join(leftover))
    return files


def write(files: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Drop generated modules whose .proto source no longer exists.
    for old in out.iterdir():
        if old.is_file() and old.name.endswith(GENERATED_SUFFIXES) and old.name not in files:
            old.unlink()
    for name, text in files.items():
        target = out / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    files = generate()
    write(files, args.out)
    print(f"generated {len(files)} files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
