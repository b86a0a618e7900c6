"""The training run in one process: output files, determinism, checkpoints, resume rules, the lock,
precision options."""

import json
import math

import pytest
import torch

from fmicl_engine.config import ConfigError, config_from_dict, load_config
from fmicl_engine.train import loop
from fmicl_engine.train.checkpoint import CheckpointStore, RunLock, load_checkpoint

TINY = {
    "model": {"cnn_width": 4, "projector_hidden_dim": 16, "projector_out_dim": 8},
    "train": {"batch_size": 256, "log_every": 1},
    "loss": {"backend": "reference"},
    "eval": {"linear_probe": False, "knn": False, "linear_epochs": 0, "geometry_pairs": 0},  # (evaluation: below)
}
TIMING = {"images_per_s", "data_wait_fraction"}  # wall-clock figures: differ between runs


def tiny_config(tmp_path, name, **sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    raw.setdefault("run", {})["out_dir"] = str(tmp_path / name)
    return config_from_dict(raw)


def metrics(cfg):
    with open(cfg.run.out_dir + "/metrics.jsonl") as f:
        lines = f.read().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def quiet_run(cfg, log=lambda s: None):
    return loop.run(cfg, log=log, progress=False)


def store(cfg):
    return CheckpointStore(cfg.run.out_dir + "/checkpoints", keep=cfg.train.keep_checkpoints)


def final_model(cfg):
    s = store(cfg)
    return load_checkpoint(s.path(s.steps()[-1]))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def snapshot(directory):
    return {p.relative_to(directory): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_first_steps_are_identical_with_one_and_two_threads(tmp_path):
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            # batch 64: the loss's sums over the (128 x 128) pair matrix stay below torch's 32k-element
            # grain, above which a CPU sum's partial sums (so its last bits) depend on thread count.
            cfg = tiny_config(tmp_path, f"threads{n}", train={"max_steps": 2, "checkpoint": False, "batch_size": 64})
            quiet_run(cfg)
            runs.append(metrics(cfg))
    finally:
        torch.set_num_threads(threads)
    one, two = runs
    assert len(one) == 2 and one[0] == two[0]  # the first step's loss: bit-identical
    # Later steps agree to rounding only: torch's CPU kernels for large reductions (conv weight
    # gradients, sums of > 32k elements) order their partial sums by thread count.
    assert one[1]["loss"] == pytest.approx(two[1]["loss"], rel=1e-5, abs=1e-6)


def test_checkpoints_are_kept_pruned_and_complete(tmp_path):
    cfg = tiny_config(tmp_path, "run", train={"max_steps": 7, "checkpoint_every_steps": 2, "keep_checkpoints": 2})
    quiet_run(cfg)
    s = store(cfg)
    assert s.steps() == [6, 7]  # every 2 steps and at the end; the newest 2 kept
    assert all(s.problem(step) is None for step in s.steps())
    state = load_checkpoint(s.path(7))
    assert {"model", "step", "optimizer", "scaler", "data", "rng", "config", "loss", "progress"} <= state.keys()
    assert state["step"] == 7 and state["batches_done"] == 2  # 5 batches per epoch: epoch 1, 2 batches in
    assert state["data"] == [{"epoch": 1, "position": 512}]
    assert "[train]" in state["config"] and "max_steps = 7" in state["config"]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    settings = dict(train={"max_steps": 4, "checkpoint_every_steps": 2, "keep_checkpoints": 3})
    whole = tiny_config(tmp_path, "whole", **settings)
    quiet_run(whole)

    cut = tiny_config(tmp_path, "cut", **settings)
    quiet_run(cut)
    newest = store(cut).path(4)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte in the middle
    newest.write_bytes(bytes(data))
    logged = []
    resumed = quiet_run(cut, log=logged.append)
    assert any("skipping checkpoint" in line and "step_00000004.pt" in line and "SHA-256" in line for line in logged)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert_same_weights(final_model(cut), final_model(whole))


def test_a_trajectory_changing_key_is_refused_and_changes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, "run", train={"max_steps": 2})
    quiet_run(cfg)
    before = snapshot(tmp_path / "run")
    changed = tiny_config(tmp_path, "run", train={"max_steps": 2}, loss={"sigma": 0.3}, optim={"lr": 0.01})
    with pytest.raises(ConfigError, match=r"^run.out_dir: cannot resume .*loss.sigma: 0.5 -> 0.3.*optim.lr"):
        quiet_run(changed)
    assert snapshot(tmp_path / "run") == before


def test_resumable_keys_may_change_and_a_finished_run_keeps_its_figures(tmp_path):
    first = quiet_run(tiny_config(tmp_path, "run", train={"epochs": 1}))
    again = quiet_run(tiny_config(tmp_path, "run", train={"epochs": 1, "log_every": 3}))  # nothing left to train
    assert again["steps"] == first["steps"] == 5 and again["final_loss"] == first["final_loss"]
    assert again["pretrain_seconds"] == pytest.approx(first["pretrain_seconds"], abs=0.5)
    longer = quiet_run(tiny_config(tmp_path, "run", train={"epochs": 2, "checkpoint_every_steps": 3}))
    assert longer["steps"] == 10 and longer["resumed_from_step"] == 5


def test_a_run_directory_held_by_a_live_run_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, "run", train={"max_steps": 1})
    (tmp_path / "run").mkdir()
    holder = RunLock(tmp_path / "run")
    assert holder.acquire() is None
    holder.record_holder()
    try:
        with pytest.raises(ConfigError, match=r"^run.out_dir: .* is in use by another run \(.*\"pid\""):
            quiet_run(cfg)
    finally:
        holder.release()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    quiet_run(cfg)  # released: the directory is free again


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_channels_last_and_clipping_train(tmp_path, precision):
    cfg = tiny_config(tmp_path, precision, train={"max_steps": 3, "precision": precision, "channels_last": True,
                                                  "grad_clip": 1.0, "batch_size": 64})
    results = quiet_run(cfg)
    assert results["steps"] == 3 and math.isfinite(results["final_loss"])
    state = load_checkpoint(store(cfg).path(3))
    assert state["scaler"] != {} if precision == "fp16" else state["scaler"] == {}
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in state["model"].values())


def test_the_loss_sees_float32_under_autocast():
    from fmicl_engine.models import build_model

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, z1, z2):
            seen.append((z1.dtype, z2.dtype))
            return (z1 - z2).square().sum()

    model = build_model("digits_cnn", in_channels=1, cnn_width=4, projector_hidden_dim=8, projector_out_dim=4)
    objective = loop.PretrainingObjective(model, Recorder(), "bf16", torch.device("cpu"))
    loss, features = objective(torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16))
    loss.backward()
    assert features.shape == (4, model.encoder.out_dim)  # the first view's, for the online probe
    assert seen == [(torch.float32, torch.float32)]


def test_every_digits_config_in_the_repo_validates():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("digits_*.toml"))
    assert len(configs) >= 14
    for path in configs:
        cfg = load_config(path)
        assert cfg.data.dataset == "digits" and cfg.loss.kwargs().get("backend", "auto") == "auto", path


def test_a_torn_metrics_line_is_dropped_with_a_warning_on_resume(tmp_path):
    first = tiny_config(tmp_path, "run", train={"max_steps": 2})
    quiet_run(first)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 0, "lo')  # a crash mid-write
    logged = []
    quiet_run(tiny_config(tmp_path, "run", train={"max_steps": 4}), log=logged.append)
    assert any("metrics.jsonl:3: dropping an unreadable line" in line for line in logged)
    assert [line["step"] for line in metrics(first)] == [1, 2, 3, 4]


def test_a_full_disk_while_checkpointing_names_enospc_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from fmicl_engine.train import checkpoint

    cfg = tiny_config(tmp_path, "run", train={"max_steps": 4, "checkpoint_every_steps": 2})
    s = store(cfg)
    s.save(2, {"model": {"w": torch.zeros(3)}})
    written = {"bytes": 0}
    real_write = checkpoint._HashingWriter.write

    def write_until_full(self, data):
        written["bytes"] += len(data)
        if written["bytes"] > 64:  # the disk fills during the next write
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real_write(self, data)

    monkeypatch.setattr(checkpoint._HashingWriter, "write", write_until_full)
    with pytest.raises(checkpoint.CheckpointWriteError,
                       match=r"cannot write checkpoint .*step_00000004.pt: ENOSPC: No space left on device; "
                             r"the previous checkpoint, step_00000002.pt, is intact"):
        s.save(4, {"model": {"w": torch.ones(1000)}})
    assert sorted(p.name for p in s.directory.iterdir()) == ["step_00000002.pt", "step_00000002.pt.sha256"]
    assert s.problem(2) is None


def test_a_run_ends_with_its_evaluation_epoch_records_and_figures(tmp_path):
    cfg = tiny_config(tmp_path, "run", train={"epochs": 2},
                      eval={"knn": True, "knn_k": 20, "linear_epochs": 5, "geometry_pairs": 200, "mi_steps": 20})
    results = quiet_run(cfg)
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "alignment", "uniformity", "mi_infonce"):
        assert math.isfinite(report[key]) and results.get(key, report[key]) == report[key], key
    assert 0.1 < report["knn_top1"] <= report["knn_top5"] <= 1.0 and report["test_images"] == 450
    assert {"knn", "linear", "geometry", "histograms", "mi"} <= report["protocol"].keys()
    epochs = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and all("online_probe_top1" in e and "uniformity" in e for e in epochs)
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert figures == ["accuracy.png", "alignment_uniformity.png", "loss.png", "similarity_histograms.png"]
    assert all((tmp_path / "run" / "figures" / f).stat().st_size > 1000 for f in figures)


def test_a_dataset_smaller_than_one_global_batch_is_a_config_error(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fmicl_engine.data.synthetic import make_image_folder

    make_image_folder(tmp_path / "train", num_classes=2, per_class=3, size=(40, 36))
    cfg = config_from_dict({"data": {"dataset": "imagefolder", "imagefolder": {"root": str(tmp_path / "train"),
                                                                               "image_size": 32, "num_threads": 1}},
                            "train": {"batch_size": 8}, "eval": {"linear_probe": False},
                            "run": {"out_dir": str(tmp_path / "run")}})
    with pytest.raises(ConfigError, match="^train.batch_size: the global batch 8 is larger than the imagefolder"):
        quiet_run(cfg)
    assert not (tmp_path / "run").exists()
