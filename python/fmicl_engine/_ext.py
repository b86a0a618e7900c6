"""Loads the native extension ``fmicl_engine._C`` and refuses a missing or stale one.

There is no pure-Python fallback for what ``_C`` provides: a missing build is an error that says
how to build it, and so is a build older than the C++ sources next to this package.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

import torch  # noqa: F401  (loads libtorch before _C, which links against it)

BUILD_COMMAND = "pip install --no-build-isolation -e .   (from the repository root; see README)"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def sources_sha256(root: Path = _REPO_ROOT) -> str | None:
    """The digest cmake/build_info.cmake computes, or None outside a source checkout."""
    cpp = root / "cpp"
    if not (cpp.is_dir() and (root / "CMakeLists.txt").is_file()):
        return None
    files = sorted(
        p.relative_to(root).as_posix()
        for p in cpp.rglob("*")
        if p.is_file() and p.suffix in {".h", ".cuh", ".cpp", ".cu"}
    )
    manifest = "".join(f"{f}:{hashlib.sha256((root / f).read_bytes()).hexdigest()}\n" for f in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


def _load():
    try:
        _C = importlib.import_module("fmicl_engine._C")
    except ImportError as err:
        raise ImportError(
            f"fmicl_engine._C, the native extension, is not built or cannot be loaded ({err}). "
            f"Build it with: {BUILD_COMMAND}"
        ) from err
    if os.environ.get("FMICL_ALLOW_STALE_EXTENSION") != "1":
        expected = sources_sha256()
        if expected is not None and expected != _C.build_info["sources_sha256"]:
            raise ImportError(
                "fmicl_engine._C is stale: the C++ sources under "
                f"{_REPO_ROOT / 'cpp'} changed since it was built. Rebuild it with: {BUILD_COMMAND}"
            )
    return _C


_C = _load()
