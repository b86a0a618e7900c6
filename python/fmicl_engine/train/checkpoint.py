"""Atomic checkpoints: a reader (or a resumed run) sees the previous file or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic on POSIX within one filesystem


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers, strings and dicts; nothing executable.
    return torch.load(path, map_location="cpu", weights_only=True)
