"""Training metrics: accumulated on the device between logging steps, read and written at them;
and one record per epoch in ``epochs.jsonl`` (loss, online-probe top-1, held-out geometry).

Every step adds its loss to a device tensor (no host-device sync); a logging step all-reduces the
window's sums across ranks once, reads them, and rank 0 appends a line to ``metrics.jsonl`` and
the same scalars to TensorBoard (``DIR/tensorboard``). The figures are global: the loss is the
window's mean over steps and ranks, images/s counts the global batch, the data-wait fraction is
the mean over ranks of the share of wall time spent waiting for the next batch, and peak GPU
memory is the largest over ranks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fmicl_engine.atomic_files import write_text_atomically
from fmicl_engine.train.distributed import DistContext


class MetricWindow:
    """Sums since the last read: loss (on the device), steps, images, data-wait seconds (host)."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.steps, self.images, self.data_wait_s = 0, 0, 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int, data_wait_s: float) -> None:
        self.loss_sum += loss.detach()
        self.steps += 1
        self.images += images
        self.data_wait_s += data_wait_s

    def read(self) -> dict[str, float]:
        """The window's global figures (a device sync and one all-reduce); then starts a new window."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        sums = torch.stack([self.loss_sum, torch.tensor(self.data_wait_s / elapsed, dtype=torch.float64,
                                                          device=self.ctx.device)])
        if self.ctx.distributed:
            dist.all_reduce(sums)
        loss_sum, wait_fraction_sum = sums.tolist()
        figures = {"loss": loss_sum / (max(self.steps, 1) * self.ctx.world_size),
                   "images_per_s": self.images * self.ctx.world_size / elapsed,
                   "data_wait_fraction": wait_fraction_sum / self.ctx.world_size}
        if self.ctx.device.type == "cuda":
            peak = torch.tensor(torch.cuda.max_memory_allocated(self.ctx.device) / 2**30, device=self.ctx.device)
            if self.ctx.distributed:
                dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            figures["peak_gpu_mem_gib"] = peak.item()
        self.reset()
        return figures


def _truncate_to_step(path: Path, resume_step: int, warn) -> None:
    """A resumed run continues the file of the run it resumes, minus what followed its checkpoint."""
    lines = path.read_text(errors="replace").splitlines() if resume_step and path.exists() else []
    kept = []
    for number, line in enumerate(lines, 1):
        step = _step_of(line)
        if step is None:  # a line torn by a crash mid-write, or damaged since
            warn(f"warning: {path}:{number}: dropping an unreadable line ({line[:60]!r})")
        elif step <= resume_step:
            kept.append(line)
    write_text_atomically(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


class MetricsLog:
    """``metrics.jsonl`` and TensorBoard scalars, written by rank 0 alone."""

    def __init__(self, out_dir: Path, *, enabled: bool, resume_step: int, warn=lambda message: None):
        self.enabled = enabled
        self.path, self.epochs_path = out_dir / "metrics.jsonl", out_dir / "epochs.jsonl"
        self._file = self._epochs = self._writer = None
        if not enabled:
            return
        for path in (self.path, self.epochs_path):
            _truncate_to_step(path, resume_step, warn)
        self._file, self._epochs = self.path.open("a"), self.epochs_path.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, epoch: int, figures: dict[str, float]) -> None:
        if not self.enabled:
            return
        rounded = {k: (round(v, 4) if k != "loss" and k != "lr" else v) for k, v in figures.items()}
        self._file.write(json.dumps({"step": step, "epoch": epoch, **rounded}) + "\n")
        self._file.flush()
        for name, value in figures.items():
            self._writer.add_scalar(f"train/{name}", value, step)

    def write_epoch(self, record: dict) -> None:
        """A line of epochs.jsonl: {"epoch", "step", "loss", and the epoch's evaluation figures}."""
        if not self.enabled:
            return
        self._epochs.write(json.dumps(record) + "\n")
        self._epochs.flush()
        for name, value in record.items():
            if name not in ("epoch", "step"):
                self._writer.add_scalar(f"epoch/{name}", value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._epochs.close()
            self._writer.close()
