"""The training run: output files, determinism across thread counts, kill-and-resume."""

import json

import pytest
import torch

from fmicl_engine.config import ConfigError, config_from_dict, load_config
from fmicl_engine.train import loop

TINY = {
    "model": {"cnn_width": 4, "projector_hidden_dim": 16, "projector_out_dim": 8},
    "train": {"batch_size": 256, "log_every": 1},
    "loss": {"backend": "reference"},
}


def tiny_config(tmp_path, name, **sections):
    raw = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    raw.setdefault("run", {})["out_dir"] = str(tmp_path / name)
    return config_from_dict(raw)


def metrics(cfg):
    with open(cfg.run.out_dir + "/metrics.jsonl") as f:
        lines = f.read().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in lines]


def quiet_run(cfg):
    return loop.run(cfg, log=lambda s: None, progress=False)


def test_first_steps_are_identical_with_one_and_two_threads(tmp_path):
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            # batch 64: the loss's sums over the (128 x 128) pair matrix stay below torch's 32k-element
            # grain, above which a CPU sum's partial sums (so its last bits) depend on thread count.
            cfg = tiny_config(tmp_path, f"threads{n}", train={"max_steps": 2, "checkpoint": False, "batch_size": 64},
                              eval={"linear_probe": False})
            quiet_run(cfg)
            runs.append(metrics(cfg))
    finally:
        torch.set_num_threads(threads)
    one, two = runs
    assert len(one) == 2 and one[0] == two[0]  # the first step's loss: bit-identical
    # Later steps agree to rounding only: torch's CPU kernels for large reductions (conv weight
    # gradients, sums of > 32k elements) order their partial sums by thread count.
    assert one[1]["loss"] == pytest.approx(two[1]["loss"], rel=1e-5, abs=1e-6)


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    settings = dict(train={"epochs": 2, "checkpoint": True},
                    eval={"labels_per_class": 3, "label_subsets": 1, "probe_max_iter": 200})
    whole = tiny_config(tmp_path, "whole", **settings)
    expected = quiet_run(whole)
    expected_state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]

    cut = tiny_config(tmp_path, "cut", **settings)
    save = loop.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path, state):
        save(path, state)
        if state["step"] == 5:  # 5 steps per epoch: killed right after epoch 1's checkpoint
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        quiet_run(cut)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a line written after the checkpoint
        f.write(json.dumps({"step": 6, "epoch": 1, "loss": 0.0, "lr": 0.0, "samples_per_s": 1.0}) + "\n")
    monkeypatch.setattr(loop, "save_checkpoint", save)
    resumed = quiet_run(cut)

    assert metrics(cut) == metrics(whole) and len(metrics(whole)) == 10
    for key in ("linear_probe_top1", "random_init_probe_top1", "linear_probe_top1_all_labels", "final_loss", "steps"):
        assert resumed[key] == expected[key], key
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


def test_max_steps_checkpoint_position_and_a_different_config_is_refused(tmp_path):
    first = tiny_config(tmp_path, "same", train={"max_steps": 1, "checkpoint": True}, eval={"linear_probe": False})
    quiet_run(first)
    saved = torch.load(tmp_path / "same" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 1 and saved["data"] == {"epoch": 0, "position": 256}  # stopped mid-epoch: 1 batch used
    other = tiny_config(tmp_path, "same", train={"max_steps": 2, "checkpoint": True}, eval={"linear_probe": False})
    with pytest.raises(ConfigError, match="^run.out_dir: .*checkpoint.pt belongs to a different config"):
        quiet_run(other)


def test_every_objective_config_in_the_repo_validates():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("digits_*.toml"))
    assert len(configs) >= 14
    for path in configs:
        cfg = load_config(path)
        assert cfg.data.dataset == "digits" and cfg.loss.kwargs().get("backend", "auto") == "auto", path
