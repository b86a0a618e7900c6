"""Failures of the command as a user meets them: one line naming the path or the config keys and
what to do, the right exit status, nothing left half written."""

import errno
import os
import subprocess
from pathlib import Path

import pytest

from fmicl_engine.cli.main import main
from fmicl_engine.config import loader as config_loader

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits_kl.toml")
TINY = ["model.cnn_width=4", "model.projector_hidden_dim=16", "model.projector_out_dim=8", "train.max_steps=4",
        "train.log_every=2", "eval.linear_probe=false", "eval.knn=false", "eval.linear_epochs=0",
        "eval.geometry_pairs=0", "eval.online_probe=false", "run.threads=1"]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only file system (a tmpfs mounted ro; needs root and mount rights, else skipped)."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_read_only_file_system_is_refused_before_any_work(read_only_mount, capsys):
    for command in ("validate", "run"):
        status = main([command, DIGITS, *sets([f"run.out_dir={read_only_mount / 'run'}", *TINY])])
        assert status == 2
        assert one_line(capsys) == f"config error: run.out_dir: {read_only_mount} is not writable; choose a " \
                                   "writable directory"


def test_a_directory_that_turns_read_only_after_validation_is_one_line(read_only_mount, capsys, monkeypatch):
    monkeypatch.setattr(config_loader, "_check_out_dir", lambda out_dir, problems: None)
    status = main(["run", DIGITS, "--no-progress", *sets([f"run.out_dir={read_only_mount / 'run'}", *TINY])])
    assert status == 1
    assert one_line(capsys) == (f"error: EROFS: Read-only file system: {read_only_mount / 'run'}; that file system "
                                "is read-only: choose a writable --out (run.out_dir)")


def test_an_unwritable_directory_as_a_normal_user(tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user for the test")
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(dir="/tmp"))  # (pytest's tmp_path lies in a folder only root may enter)
    request_cleanup = lambda: shutil.rmtree(base, ignore_errors=True)  # noqa: E731
    locked = base / "locked"
    locked.mkdir(mode=0o555)
    os.chmod(base, 0o755)
    assert main(["validate", DIGITS]) == 0  # (imports what validate needs while root can read it all)
    capsys.readouterr()
    os.seteuid(65534)  # nobody: permissions apply (root would write anyway)
    try:
        # (labels_per_class = 0: validate then reads no data set, which lies under root's home here)
        status = main(["validate", DIGITS, "--set", f"run.out_dir={locked / 'run'}", "--set", "eval.labels_per_class=0"])
    finally:
        os.seteuid(0)
        request_cleanup()
    assert status == 2
    assert one_line(capsys) == f"config error: run.out_dir: {locked} is not writable; choose a writable directory"


def test_a_full_disk_while_writing_the_config_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    from fmicl_engine import atomic_files

    real = atomic_files.write_atomically

    def full_disk(path, write):
        def write_then_fail(f):
            write(f)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write_then_fail)

    monkeypatch.setattr(atomic_files, "write_atomically", full_disk)
    status = main(["run", DIGITS, "--no-progress", *sets([f"run.out_dir={tmp_path / 'run'}", *TINY])])
    assert status == 1
    line = one_line(capsys)
    assert line == (f"error: ENOSPC: No space left on device: {tmp_path / 'run' / 'config.toml'}; free space on that "
                    "disk and rerun the same command (it resumes from the last checkpoint)")
    assert not list((tmp_path / "run").glob("*.tmp")) and not (tmp_path / "run" / "config.toml").exists()


def test_a_diverging_model_names_the_config_keys(tmp_path, capsys, monkeypatch):
    import torch

    from fmicl_engine.train import loop

    real_encode = loop.PretrainingObjective.encode
    calls = {"n": 0}

    def diverging(self, view1, view2):
        features, z = real_encode(self, view1, view2)
        calls["n"] += 1
        return features, z * (torch.inf if calls["n"] >= 3 else 1.0)  # the weights blew up at step 3

    monkeypatch.setattr(loop.PretrainingObjective, "encode", diverging)
    status = main(["run", DIGITS, "--no-progress", *sets([f"run.out_dir={tmp_path / 'run'}", *TINY])])
    assert status == 1
    line = one_line(capsys)
    assert line.startswith("training error: z1 contains inf or NaN")
    assert "at step 4 of this run; the usual causes: optim.lr (" in line and "optim.warmup_epochs (" in line
    assert "No checkpoint holds non-finite weights" in line
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))


def test_an_overflowing_loss_names_its_config_key(tmp_path, capsys):
    # Unnormalised embeddings: nothing bounds them before training, so the overflow comes in training.
    status = main(["run", str(REPO / "configs" / "digits_sh.toml"), "--no-progress",
                   *sets([f"run.out_dir={tmp_path / 'run'}", *TINY, "loss.sigma=0.01", "loss.normalize=false"])])
    assert status == 1
    line = one_line(capsys)
    assert line.startswith("training error: fmicl") and "loss.sigma (0.01)" in line


@pytest.mark.parametrize("config, key, value, advice", [
    ("digits_sh.toml", "sigma", "0.01", "increase sigma"),
    ("digits_kl.toml", "mu", "1e300", "bring mu closer to 1"),
    ("digits_kl.toml", "alpha", "1e300", "decrease alpha"),
])
def test_values_whose_loss_overflows_on_unit_embeddings_are_refused_at_validate(config, key, value, advice, capsys):
    status = main(["validate", str(REPO / "configs" / config), "--set", f"loss.{key}={value}"])
    assert status == 2
    line = one_line(capsys)
    assert line.startswith(f"config error: loss.{key}: objective 'fmicl' overflows float32") and line.endswith(advice)


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_good_ones_survive(tmp_path, capsys):
    run = ["run", DIGITS, "--no-progress", *sets([f"run.out_dir={tmp_path / 'run'}", *TINY,
                                                 "train.checkpoint_every_steps=2", "train.keep_checkpoints=2"])]
    assert main(run) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    newest = checkpoints / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a crashed node
    capsys.readouterr()
    assert main([*run, "--set", "train.max_steps=8"]) == 0
    err = capsys.readouterr().err
    assert f"set aside {newest}.damaged (damaged)" in err and "resumed from" in err
    # The damaged file no longer counts among the kept ones: the new checkpoints are not pruned for it.
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == ["step_00000006.pt", "step_00000008.pt"]
    assert (checkpoints / "step_00000004.pt.damaged").exists()


def test_every_checkpoint_damaged_is_refused_and_nothing_is_overwritten(tmp_path, capsys):
    run = ["run", DIGITS, "--no-progress", *sets([f"run.out_dir={tmp_path / 'run'}", *TINY])]
    assert main(run) == 0
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step_*.pt"):
        checkpoint.write_bytes(b"")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(run) == 2
    line = one_line(capsys)
    assert line.startswith(f"config error: run.out_dir: every checkpoint in {tmp_path / 'run' / 'checkpoints'} "
                           "is damaged")
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
