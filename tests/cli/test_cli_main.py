"""The fmicl-engine command: exit status 2 and one line for a config error; validate; a tiny run."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "fmicl_engine.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)


def assert_one_line_config_error(result, message):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"config error: {message}"]
    assert result.stdout == ""


def test_config_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[loss]\nsigma = -1\n[train]\nepochs = 3\n")
    result = cli("validate", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("config error: loss.sigma: ")
    # the same through `run`, and through --set, before any work starts
    assert_one_line_config_error(cli("run", bad, "--set", "loss.sigma=0.5", "--set", "train.epoch=2",
                                     "--out", tmp_path / "never"),
                                 "train.epoch: unknown key (did you mean 'train.epochs'?)")
    assert not (tmp_path / "never").exists()


def test_the_imagenet_config_fails_cleanly_on_its_missing_dataset():
    assert_one_line_config_error(cli("validate", "configs/imagenet_kl.toml", "--set", "run.device=cpu",
                                     "--set", "data.imagefolder.device=cpu"),
                                 "data.imagefolder.root: no such directory: /data/imagenet/train")


def test_validate_reports_every_error_at_once():
    result = cli("validate", "configs/imagenet_kl.toml", "--set", "loss.sigma=-1", "--set", "train.batch_sise=8")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    keys = [line.split(":")[1].strip() for line in result.stderr.splitlines()]
    assert all(line.startswith("config error: ") for line in result.stderr.splitlines())
    assert {"loss.sigma", "train.batch_sise", "data.imagefolder.root"} <= set(keys)


def test_validate_prints_the_resolved_config():
    result = cli("validate", "configs/digits_kl.toml", "--set", "optim.lr=0.01")
    assert result.returncode == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert resolved["optim"]["lr"] == 0.01 and resolved["run"]["out_dir"] == "runs/digits_kl"
    assert resolved["loss"]["name"] == "fmicl" and resolved["loss"]["divergence"] == "kl"


def test_a_tiny_run_writes_config_metrics_and_results(tmp_path):
    out = tmp_path / "run"
    result = cli("run", "configs/digits_kl.toml", "--out", out, "--no-progress",
                 "--set", "train.max_steps=3", "--set", "train.log_every=1", "--set", "train.batch_size=64",
                 "--set", "model.cnn_width=4", "--set", "eval.label_subsets=1", "--set", "loss.backend=reference",
                 "--set", "eval.linear_epochs=3", "--set", "eval.geometry_pairs=200", "--set", "eval.mi_steps=10")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.splitlines()[-1])  # the final line prints the results
    assert json.loads((out / "results.json").read_text()) == results
    for key in ("linear_probe_top1", "random_init_probe_top1", "pretrain_seconds", "probe_seconds", "session_seconds"):
        assert isinstance(results[key], float), key
    assert 0.0 <= results["linear_probe_top1"] <= 1.0 and results["steps"] == 3
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(set(line) == {"step", "epoch", "loss", "lr", "images_per_s", "data_wait_fraction"} for line in lines)
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["run"]["out_dir"] == str(out)
    assert "resolved config:" in result.stderr and "git " in result.stderr  # logged at start


def test_an_overflowing_loss_exits_1_with_one_line(tmp_path, capsys):
    from fmicl_engine.cli.main import main

    # Squared Hellinger's positive term is 1 - exp(D / (4 sigma^2)): with sigma = 0.01 it overflows.
    # (Unnormalised embeddings: validation has no extremes to probe, the loss overflows in training.)
    status = main(["run", "configs/digits_sh.toml", "--out", str(tmp_path / "run"), "--no-progress",
                   "--set", "loss.sigma=0.01", "--set", "loss.normalize=false", "--set", "eval.linear_probe=false",
                   "--set", "model.cnn_width=4"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().splitlines()[-1].startswith("training error: fmicl")
    assert "sigma" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_eval_export_and_compare_from_the_command_line(tmp_path):
    import torch
    import torchvision

    out = tmp_path / "run"
    quick = ["--set", "train.max_steps=2", "--set", "train.batch_size=64", "--set", "model.cnn_width=4",
             "--set", "model.arch=resnet18_cifar", "--set", "eval.linear_probe=false", "--set", "eval.knn=false",
             "--set", "eval.linear_epochs=0", "--set", "eval.geometry_pairs=0", "--set", "loss.backend=reference"]
    assert cli("run", "configs/digits_kl.toml", "--out", out, "--no-progress", *quick).returncode == 0
    evaluated = cli("eval", "configs/digits_kl.toml", "--checkpoint", out, "--out", tmp_path / "eval",
                    "--set", "model.arch=resnet18_cifar", "--set", "eval.knn_k=10", "--set", "eval.linear_epochs=2",
                    "--set", "eval.geometry_pairs=100", "--set", "eval.mi_steps=10")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["step"] == 2 and 0 <= report["knn_top1"] <= 1 and "knn" in report["protocol"]
    assert (tmp_path / "eval" / "figures" / "alignment_uniformity.png").stat().st_size > 1000

    exported = cli("export", out, "--out", tmp_path / "encoder.pt")
    assert exported.returncode == 0, exported.stderr
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the run's 1-channel CIFAR stem
    net.maxpool = torch.nn.Identity()
    missing, unexpected = net.load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []

    compared = cli("compare", out, tmp_path / "eval", "--out", tmp_path / "compare")
    assert compared.returncode == 0, compared.stderr
    assert "| run |" in (tmp_path / "compare" / "compare.md").read_text()


def test_a_run_time_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    out = tmp_path / "file"
    out.write_text("not a directory")
    result = cli("run", "configs/digits_kl.toml", "--out", out / "run", "--set", "train.max_steps=1")
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    debug = cli("--debug", "run", "configs/digits_kl.toml", "--out", out / "run", "--set", "train.max_steps=1")
    assert "Traceback" in debug.stderr


def test_run_and_eval_on_a_generated_imagefolder_with_train_and_val(tmp_path):
    import pytest

    pytest.importorskip("nvidia.dali")
    from fmicl_engine.data.synthetic import make_image_folder

    make_image_folder(tmp_path / "train", num_classes=2, per_class=12, size=(40, 36))
    make_image_folder(tmp_path / "val", num_classes=2, per_class=8, size=(40, 36), seed=1)
    tiny = [f"data.imagefolder.root={tmp_path / 'train'}", f"data.imagefolder.val_root={tmp_path / 'val'}",
            "data.imagefolder.device=cpu", "run.device=cpu", "data.imagefolder.image_size=32",
            "data.imagefolder.num_threads=1", "model.arch=digits_cnn", "model.cnn_width=4",
            "model.projector_hidden_dim=16", "model.projector_out_dim=8", "train.batch_size=8", "train.max_steps=2",
            "train.precision=fp32", "optim.warmup_epochs=0", "eval.knn_k=5", "eval.linear_epochs=2",
            "eval.geometry_pairs=16", "eval.mi_steps=5"]
    sets = [arg for override in tiny for arg in ("--set", override)]
    ran = cli("run", "configs/imagenet_kl.toml", "--out", tmp_path / "run", "--no-progress", *sets)
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["train_images"] == 24 and report["test_images"] == 16 and 0 <= report["knn_top1"] <= 1
    evaluated = cli("eval", "configs/imagenet_kl.toml", "--checkpoint", tmp_path / "run", "--out", tmp_path / "eval",
                    *sets)
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert again["knn_top1"] == report["knn_top1"] and again["linear_top1"] == report["linear_top1"]
