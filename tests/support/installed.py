"""The tests run the installed shim, never the checkout's source: this checks that they can.

`./tests/run` installs the checkout as a wheel (not editable) into its virtual environment;
src/ is not on sys.path. A copy that differs from src/shim (a forgotten reinstall, an
editable install, a file the wheel left out) would make every test check the wrong code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "shim"


def package_files(root: Path) -> dict[str, str]:
    """Every file of a package tree (byte-code caches aside), relative path -> SHA-256."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def installed_copy_problem() -> str | None:
    """Why the importable `shim` is not an installed copy of src/shim, or None if it is."""
    import shim

    installed = Path(shim.__file__).resolve().parent
    if installed.is_relative_to(SOURCE.parent):
        return f"`shim` is imported from the checkout ({installed}), not from an install"
    want, have = package_files(SOURCE), package_files(installed)
    if want == have:
        return None
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    changed = sorted(name for name in set(want) & set(have) if want[name] != have[name])
    parts = [
        f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("extra", extra), ("changed", changed))
        if names
    ]
    return f"the installed shim ({installed}) differs from src/shim ({'; '.join(parts)})"
