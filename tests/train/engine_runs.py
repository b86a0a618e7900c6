"""Running the fmicl-engine command as a user does: one process, or a torchrun job on gloo."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The digits at a tiny width: a few milliseconds per step, so a test runs dozens of them.
TINY_DIGITS = ["model.cnn_width=4", "model.projector_hidden_dim=16", "model.projector_out_dim=8",
               "train.log_every=1", "loss.backend=reference", "eval.linear_probe=false", "run.threads=1",
               "eval.knn=false", "eval.linear_epochs=0", "eval.geometry_pairs=0"]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def engine_command(config, out, overrides=(), nproc=1):
    """argv of `fmicl-engine run` (through torchrun --standalone when nproc > 1)."""
    command = ["-m", "fmicl_engine.cli.main", "run", str(config), "--out", str(out), "--no-progress",
               *sets(overrides)]
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *command]
    return [sys.executable, *command]


def environment():
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_engine(config, out, overrides=(), nproc=1, timeout=300):
    return subprocess.run(engine_command(config, out, overrides, nproc), cwd=REPO, capture_output=True, text=True,
                          env=environment(), timeout=timeout)


def start_engine(config, out, overrides=(), nproc=1):
    return subprocess.Popen(engine_command(config, out, overrides, nproc), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment(), start_new_session=True)


def wait_for(condition, process, timeout=120):
    """Poll until condition() holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before the condition held:\n"
                                 + process.stderr.read())
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
