"""torchrun jobs on gloo (CPU): 2 processes train what 1 process trains on the same global batch."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from fmicl_engine.train.checkpoint import CheckpointStore, load_checkpoint

from engine_runs import REPO, TINY_DIGITS, engine_command, environment, run_engine, start_engine, wait_for

CONFIG = "configs/digits_kl.toml"


def final_state(out):
    s = CheckpointStore(out / "checkpoints", keep=2)
    return load_checkpoint(s.path(s.steps()[-1]))


def test_two_ranks_train_the_same_weights_as_one_with_sync_batchnorm_and_gathered_negatives(tmp_path):
    overrides = [*TINY_DIGITS, "train.batch_size=128", "train.max_steps=3", "model.sync_batchnorm=true",
                 "loss.backend=auto"]  # gathering negatives runs the fused op
    one = run_engine(CONFIG, tmp_path / "one", overrides)
    two = run_engine(CONFIG, tmp_path / "two", overrides, nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert a["step"] == b["step"] == 3 and b["world_size"] == 2 and len(b["data"]) == 2
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 3  # written once, by rank 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert len(two.stdout.strip().splitlines()) == 1  # the results line, printed by rank 0 alone
    assert two.stderr.count("resolved config:") == 1


def test_a_batch_that_does_not_split_across_ranks_is_refused_at_validation(tmp_path):
    result = run_engine(CONFIG, tmp_path / "run", [*TINY_DIGITS, "train.batch_size=129"], nproc=2)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and errors[0].startswith("config error: train.batch_size: the global batch 129")
    assert "fmicl_engine" not in result.stderr.split("config error:")[0]  # (torchrun's own summary follows)
    assert not (tmp_path / "run").exists()


def test_a_rank_that_dies_brings_the_job_down_naming_it(tmp_path):
    out = tmp_path / "run"
    process = start_engine(CONFIG, out, [*TINY_DIGITS, "train.batch_size=64", "train.epochs=200"], nproc=2)
    wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3,
             process)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in workers:
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        rank = next(int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK="))
        ranks[rank] = int(pid)
    os.kill(ranks[1], signal.SIGKILL)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=180)
    assert process.returncode != 0
    assert time.monotonic() - started < 120  # brought down, not hung
    assert "rank: 1" in stderr  # torchrun's summary names the failed rank


def test_imagefolder_end_to_end_in_one_and_two_processes(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fmicl_engine.data.synthetic import make_image_folder

    make_image_folder(tmp_path / "train", num_classes=2, per_class=12, size=(40, 36))
    overrides = [f"data.imagefolder.root={tmp_path / 'train'}", "data.imagefolder.device=cpu", "run.device=cpu",
                 "data.imagefolder.image_size=32", "data.imagefolder.num_threads=1", "model.arch=resnet18_cifar",
                 "model.projector_hidden_dim=16", "model.projector_out_dim=8", "train.batch_size=8",
                 "train.max_steps=2", "train.log_every=1", "train.precision=bf16", "optim.warmup_epochs=0",
                 "run.threads=1"]
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        result = run_engine("configs/imagenet_kl.toml", out, overrides, nproc=nproc)
        assert result.returncode == 0, result.stderr
        results = json.loads(result.stdout.splitlines()[-1])
        assert results["steps"] == 2 and results["world_size"] == nproc
        assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert (out / "config.toml").exists() and list((out / "tensorboard").iterdir())
