"""Files written whole or not at all: a temporary name, fsync, rename. A crash, a kill or a full
disk leaves the previous file (or none), never half of one, and no temporary behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """``write(file)`` into a temporary file, fsync it, rename it to ``path``. The temporary's name
    holds the process id: processes writing the same file (ranks sharing an index cache) never
    write into one temporary."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """A run's small files (results, reports, config): whole or absent, never half written."""
    write_atomically(Path(path), lambda f: f.write(text.encode("utf-8")))
