"""scripts/gpu_check.sh in its CPU mode (GPU_CHECK_CPU_ONLY=1): the part of the GPU check that a
machine without a GPU can run (the emulated CUDA tests, the benchmarks' smoke forms, the report),
so that the script cannot rot between the sessions that have a GPU.

The CUDA build is left out here (GPU_CHECK_BUILD=0): it takes minutes on two cores, and CI's
install already builds the kernels where a matching nvcc is present. FMICL_TEST_GPU_CHECK_BUILD=1
lets the script decide (it builds when the extension lacks the kernels and nvcc is there).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
SECTIONS = ["## GPU check: ", "### Machine and versions", "### Steps",
            "### Fused loss vs the PyTorch reference and torch.compile",
            "### Data pipeline: two-view images/s, DALI against the torchvision loader",
            "### Step profile: where the time goes", "### Training throughput"]
STEPS = ["build", "emulated CUDA tests", "loss benchmark", "data benchmark", "step profile", "training fp32"]

pytestmark = pytest.mark.slow


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_cpu_mode_writes_the_report(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_CPU_ONLY="1", PYTHON=sys.executable,
               GPU_CHECK_BUILD="auto" if os.environ.get("FMICL_TEST_GPU_CHECK_BUILD") == "1" else "0")
    start = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    seconds = time.monotonic() - start
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"gpu_check.sh --cpu exited {done.returncode} after {seconds:.0f} s:\n{log[-6000:]}"

    report = (tmp_path / "gpu_check.md").read_text()
    for section in SECTIONS:
        assert section in report, f"no {section!r} in the report:\n{report}"
    assert "**ok**" in report and "CPU only" in report
    # Each step has its row, none failed; the benchmarks' tables are there, not "Not run".
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+?) \| ([^|]+?) \|", report, re.M)}
    for step in STEPS:
        assert step in rows, f"no row for step {step!r}:\n{report}"
        assert rows[step] in ("ok", "skipped"), f"step {step!r}: {rows[step]}"
    for step in STEPS[1:]:
        assert rows[step] == "ok", f"step {step!r}: {rows[step]}"
    assert "| fmicl-kl | 256 |" in report and "| infonce | 1024 |" in report
    assert "Largest 2N each backend held" in report and "- infonce, d = 64: fused 1,024" in report
    assert "torchvision DataLoader" in report
    assert "| synthetic | random tensors | cpu | resnet18 |" in report
    # The profile sweep's smoke rows (both backends), their ratio and the full profile table.
    profile = report.split("### Step profile: where the time goes", 1)[1].split("### Training throughput", 1)[0]
    for backend in ("fused", "reference"):
        assert re.search(rf"^\| resnet18 \| 4 \| fmicl-kl \| {backend} \| [0-9.,]+ \| [0-9.,]+ \|", profile, re.M), profile
    assert re.search(r"^\| resnet18 \| 4 \| fmicl-kl \| [0-9.,]+ \| [0-9.,]+ \| [0-9.]+x \|", profile, re.M), profile
    assert "Full profile: resnet18, batch 4, fmicl-kl, fused" in profile and "loss forward+backward" in profile
    assert "Not run" not in report
    # Pasted into the docs, the report must name no path outside the repository.
    assert str(tmp_path) not in report and "/root/" not in report and "site-packages" not in report
    for name in ("gpu_check.log", "pytest.log", "loss.jsonl", "data.jsonl", "train.jsonl", "profile.jsonl"):
        assert (tmp_path / name).is_file(), name
    # The device machine returns at most 8 files, none deeper than two folders.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in files), files
    print(f"gpu_check.sh --cpu: {seconds:.0f} s")
