"""Runs that survive preemption: SIGKILL at any moment, SIGTERM/SIGUSR1/SIGINT, a rerun that resumes."""

import json
import signal

import pytest
import torch

from fmicl_engine.train.checkpoint import CheckpointStore, load_checkpoint

from engine_runs import TINY_DIGITS, run_engine, start_engine, wait_for

CONFIG = "configs/digits_kl.toml"
# 5 steps per epoch (batch 256 of 1,347 images), 8 epochs; checkpoints every 3 steps, so most fall
# mid-epoch.
LONG = [*TINY_DIGITS, "train.batch_size=256", "train.epochs=8", "train.checkpoint_every_steps=3",
        "train.keep_checkpoints=2"]


def checkpoints(out):
    return CheckpointStore(out / "checkpoints", keep=2)


def final_state(out):
    s = checkpoints(out)
    return load_checkpoint(s.path(s.steps()[-1]))


def losses(out):
    return [(line["step"], line["loss"]) for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    result = run_engine(CONFIG, out, LONG)
    assert result.returncode == 0, result.stderr
    return out


def assert_same_run(out, reference):
    a, b = final_state(out), final_state(reference)
    assert a["step"] == b["step"] == 40
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-6, atol=1e-7)
    assert [s for s, _ in losses(out)] == list(range(1, 41))
    for (_, x), (_, y) in zip(losses(out), losses(reference)):
        assert x == pytest.approx(y, rel=1e-5)


def test_sigkill_mid_epoch_then_rerun_equals_the_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = start_engine(CONFIG, out, LONG)
    wait_for(lambda: any(step >= 9 for step in checkpoints(out).steps()), process)
    process.kill()  # SIGKILL: no handler runs; whatever was being written is left as it was
    process.wait()
    result = run_engine(CONFIG, out, LONG)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    assert_same_run(out, uninterrupted)
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 40 and results["resumed_from_step"] >= 9


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preemption_signal_checkpoints_and_exits_0(tmp_path, uninterrupted, signum):
    out = tmp_path / "run"
    process = start_engine(CONFIG, out, LONG)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 4,
             process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and f"stopped by {signum.name}" in stderr
    stopped = json.loads(stdout.splitlines()[-1])
    assert stopped["stopped_by"] == signum.name and stopped["steps"] < 40
    assert checkpoints(out).steps()[-1] == stopped["steps"]  # written at the step it stopped after
    assert not (out / "results.json").exists()
    result = run_engine(CONFIG, out, LONG)
    assert result.returncode == 0, result.stderr
    assert_same_run(out, uninterrupted)


def test_ctrl_c_saves_and_exits_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    process = start_engine(CONFIG, out, LONG)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2,
             process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr and "stopped by SIGINT" in stderr
    assert checkpoints(out).steps() and all(checkpoints(out).problem(s) is None for s in checkpoints(out).steps())
