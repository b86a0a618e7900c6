"""`fmicl-engine profile`: the step's parts add up, the bottleneck is named, profile.json is complete."""

import json
import math

import pytest
from engine_runs import REPO, environment, sets

from fmicl_engine.cli.main import main
from fmicl_engine.config import load_config
from fmicl_engine.train.profile import PARTS, format_table, profile

DIGITS = REPO / "configs" / "digits_kl.toml"
FAST = ["run.threads=1", "eval.online_probe=false"]
PROFILE_KEYS = {"step_ms", "parts", "images_per_s", "data_wait_fraction", "verdict", "bottleneck", "alone",
                "loader_images_per_s", "compute_images_per_s", "ranks", "timing", "world_size"}


def digits_profile(tmp_path, overrides=(), **kwargs):
    cfg = load_config(DIGITS, [*FAST, *overrides, f"run.out_dir={tmp_path / 'run'}"])
    return profile(cfg, steps=8, warmup=2, out_dir=tmp_path / "profile", log=lambda line: None, **kwargs)


def test_the_parts_add_up_to_the_step_and_the_json_is_complete(tmp_path):
    report = digits_profile(tmp_path)
    saved = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert PROFILE_KEYS <= set(saved) and set(saved["parts"]) == set(PARTS)
    assert all(math.isfinite(v) and v >= 0 for v in saved["parts"].values())
    # The instrumented steps' parts against the plain steps' time, measured in turn.
    assert report["parts_sum_ms"] == pytest.approx(report["step_ms"], rel=0.15)
    assert report["images_per_s"] == pytest.approx(1e3 * 128 / report["step_ms"])
    assert 0 <= report["data_wait_fraction"] < 1
    assert set(report["alone"]) == {"data", "host_to_device", "forward", "loss", "backward", "optimizer"}
    # The encoder dominates the digits step on a CPU, the loader is two orders of magnitude faster.
    assert report["bottleneck"] == "model" and report["verdict"].startswith("model-bound: encoder forward+backward")
    table = format_table(report)
    assert "encoder backward" in table and report["verdict"] in table


def test_a_slow_loader_is_named_as_the_bottleneck(tmp_path):
    report = digits_profile(tmp_path, data_delay_s=0.4)
    assert report["bottleneck"] == "data"
    assert report["verdict"].startswith("data-bound: the loader delivers")
    assert report["data_wait_fraction"] > 0.2
    assert report["loader_images_per_s"] < report["compute_images_per_s"]


def test_the_command_on_an_imagefolder_tree_with_a_trace(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    from fmicl_engine.data.synthetic import make_image_folder

    make_image_folder(tmp_path / "train", num_classes=2, per_class=16, size=(48, 40))
    overrides = [f"data.imagefolder.root={tmp_path / 'train'}", "data.imagefolder.device=cpu", "run.device=cpu",
                 "data.imagefolder.image_size=32", "data.imagefolder.num_threads=1", "model.arch=digits_cnn",
                 "model.cnn_width=8", "train.batch_size=8", "run.threads=1"]
    status = main(["profile", str(REPO / "configs" / "imagenet_kl.toml"), "--steps", "3", "--warmup", "1",
                   "--out", str(tmp_path / "profile"), "--trace", *sets(overrides)])
    assert status == 0
    report = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert report["config"]["dataset"] == "imagefolder" and report["step_ms"] > 0
    assert report["verdict"].split(":")[0].endswith("-bound")
    trace = json.loads((tmp_path / "profile" / "trace" / "rank0.pt.trace.json").read_text())
    assert any(event.get("name") == "train_step" for event in trace["traceEvents"])
    assert report["verdict"] in capsys.readouterr().out


def test_synthetic_data_measures_the_compute_alone(tmp_path):
    report = digits_profile(tmp_path, synthetic_data=True)
    assert report["config"]["dataset"] == "synthetic" and report["bottleneck"] != "data"


def test_bad_arguments_are_one_config_error_line(tmp_path, capsys):
    status = main(["profile", str(DIGITS), "--steps", "1", "--out", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.strip() == ("config error: profile: --steps must be in [2, 100000] and --warmup in "
                                               "[0, 100000], got 1 and 5")


def test_torchrun_gives_per_rank_figures_and_the_loss_collectives(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "fmicl_engine", "profile", str(DIGITS), "--steps", "3", "--warmup", "1",
               "--out", str(tmp_path / "profile"), *sets([*FAST, "model.cnn_width=8"])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert report["world_size"] == 2 and [r["rank"] for r in report["ranks"]] == [0, 1]
    assert report["alone"]["all_gather"] > 0 and report["alone"]["reduce_scatter"] > 0
    assert report["images_per_s"] == pytest.approx(1e3 * 128 / report["step_ms"])
    assert result.stdout.count("rank 1:") == 1 and "loss all-gather" in result.stdout


def test_synthetic_data_with_the_online_probe_and_a_bad_out(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    status = main(["profile", str(DIGITS), "--synthetic-data", "--steps", "2", "--warmup", "0",
                   "--out", str(tmp_path / "a_file" / "profile"), *sets(["eval.online_probe=true"])])
    assert status == 2 and "config error: run.out_dir:" in capsys.readouterr().err  # before any work
    status = main(["profile", str(DIGITS), "--synthetic-data", "--steps", "2", "--warmup", "0",
                   "--out", str(tmp_path / "profile"), *sets(["eval.online_probe=true", "run.threads=1"])])
    assert status == 0 and (tmp_path / "profile" / "profile.json").exists()
