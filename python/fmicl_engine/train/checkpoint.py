"""Checkpoints a killed run can always resume from, and the lock that gives a run its directory.

Layout under ``DIR/checkpoints``: ``step_00001200.pt`` (a ``torch.save`` dict) and beside it
``step_00001200.pt.sha256`` (the hex SHA-256 of the .pt file). A checkpoint is valid when both
exist and the digest matches: a file cut short by a kill, a full disk or a damaged disk is
detected, skipped with a warning, and the run resumes from the newest valid one.

Writing is atomic at every moment: the payload goes to a temporary name, is fsynced and renamed;
then the digest, the same way; then the directory is fsynced. A kill before the digest's rename
leaves a payload without a digest, which is not valid, so the previous checkpoint is used. Older
checkpoints are pruned only after the new one is complete.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fmicl_engine.atomic_files import write_atomically

_NAME = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only or vanished directory). The
    temporary file is gone and the previous checkpoints are intact."""


class _HashingWriter:
    """A binary file that hashes what passes through it (torch.save writes to any such object).

    torch.save turns an OSError raised by ``write`` into a RuntimeError that no longer says
    ENOSPC; the writer keeps the original so that the caller can report it."""

    def __init__(self, file):
        self.file = file
        self.digest = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data) -> int:
        self.digest.update(data)
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointStore:
    """The checkpoints of one run directory: save (atomic, pruned to ``keep``), find, load."""

    def __init__(self, directory: str | os.PathLike, *, keep: int):
        self.directory = Path(directory)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def steps(self) -> list[int]:
        """Steps of every checkpoint file present (valid or not), oldest first."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        digest = {}

        def write_payload(f):
            writer = _HashingWriter(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
            digest["hex"] = writer.digest.hexdigest()

        try:
            write_atomically(path, write_payload)
            write_atomically(path.with_name(path.name + ".sha256"), lambda f: f.write(digest["hex"].encode() + b"\n"))
            _fsync_dir(self.directory)
        except OSError as err:
            path.unlink(missing_ok=True)  # a payload without its digest is not a checkpoint
            previous = [s for s in self.steps() if s != step]
            kept = f"the previous checkpoint, {self.path(previous[-1]).name}, is intact" if previous else \
                "no earlier checkpoint exists"
            reason = f"{errno.errorcode.get(err.errno, 'error')}: {err.strerror or err}" if err.errno else str(err)
            error = CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; {kept}; free space "
                                         "(or fix the directory) and rerun the same command to resume")
            error.errno = err.errno
            raise error from None
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
            self.path(old).with_name(self.path(old).name + ".sha256").unlink(missing_ok=True)
        return path

    def problem(self, step: int) -> str | None:
        """Why the checkpoint of ``step`` cannot be used, or None if it is valid."""
        path = self.path(step)
        sidecar = path.with_name(path.name + ".sha256")
        if not sidecar.exists():
            return "no .sha256 beside it (its write did not complete)"
        try:
            expected = sidecar.read_text().strip()
            actual = file_sha256(path)
        except OSError as err:
            return f"unreadable: {err.strerror or err}"
        if actual != expected:
            return "its SHA-256 does not match (truncated or damaged)"
        return None

    def set_aside(self, step: int) -> Path:
        """Rename a damaged checkpoint (and its digest) to ``*.damaged``: kept for inspection, no
        longer counted among the checkpoints a new save prunes to ``keep``."""
        path = self.path(step)
        for file in (path, path.with_name(path.name + ".sha256")):
            if file.exists():
                file.rename(file.with_name(file.name + ".damaged"))
        return path.with_name(path.name + ".damaged")

    def newest_valid(self, warn: Callable[[str], None]) -> Path | None:
        """The newest valid checkpoint; each newer invalid one is named through ``warn``."""
        for step in reversed(self.steps()):
            problem = self.problem(step)
            if problem is None:
                return self.path(step)
            warn(f"warning: skipping checkpoint {self.path(step)}: {problem}")
        return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers, strings and containers; nothing executable.
    return torch.load(path, map_location="cpu", weights_only=True)


class RunLock:
    """An exclusive lock on a run directory (``DIR/run.lock``, flock), held while the run lives.

    A second run into the same directory is refused with the holder's pid, host and start time,
    instead of both writing the same checkpoints. The kernel releases the lock when the holder
    dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, directory: Path):
        self.path = directory / "run.lock"
        self._file = None
        self._created = False

    def acquire(self) -> str | None:
        """Take the lock; on failure return a description of the process that holds it."""
        self._created = not self.path.exists()
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            return holder
        self._file = f
        return None

    def record_holder(self) -> None:
        """Write who holds the lock (after the run has decided to proceed: a refused run writes nothing)."""
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": " ".join(sys.argv)}) + "\n")
        self._file.flush()

    def release(self, *, refused: bool = False) -> None:
        if self._file is None:
            return
        if refused and self._created:  # leave the directory as the refused run found it
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None
