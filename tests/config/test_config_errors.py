"""Validation reports every problem of a config at once; cross-section checks; the engine's loss arguments."""

import pytest

from fmicl_engine.config import (
    ConfigError,
    ConfigErrors,
    config_from_dict,
    engine_loss_arguments,
    local_negatives_only,
)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        config_from_dict(raw)
    return str(info.value).splitlines()


def test_every_error_is_reported_at_once():
    raw = {"trian": {}, "run": {"seed": -1}, "model": {"arch": "resnet51"}, "optim": {"lr": 0, "name": "adam"},
           "train": {"epoch": 3, "batch_size": "big"}, "loss": {"sigam": 0.5, "sigma": "x", "normalize": 1}}
    with pytest.raises(ConfigErrors) as info:
        config_from_dict(raw)
    err = info.value
    assert [e.key for e in err.errors] == ["trian", "run.seed", "model.arch", "optim.name", "optim.lr", "train.epoch",
                                           "train.batch_size", "loss.sigam", "loss.sigma", "loss.normalize"]
    assert str(err).splitlines() == [str(e) for e in err.errors]
    assert str(err).splitlines()[:2] == ["trian: unknown key (did you mean 'train'?)", "run.seed: must be >= 0, got -1"]
    assert err.key == "trian" and isinstance(err, ConfigError) and isinstance(err, ValueError)


def test_a_single_error_reads_as_before():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"optim": {"lr": 0}})
    assert str(info.value) == "optim.lr: must be > 0.0, got 0.0" and info.value.key == "optim.lr"
    assert [str(e) for e in info.value.errors] == ["optim.lr: must be > 0.0, got 0.0"]
    plain = ConfigError("a.b", "bad")
    assert plain.errors == [plain]


def test_an_unknown_objective_skips_its_argument_checks():
    assert errors_of({"loss": {"name": "infonse", "sigma": "x", "whatever": 1}}) == [
        "loss.name: unknown objective 'infonse' (did you mean 'infonce'?); one of: align_uniform, emmi, fmicl, "
        "infonce, mi_bound, rpc"]


def test_loss_key_errors_are_all_reported_and_construction_waits_for_them():
    lines = errors_of({"loss": {"name": "mi_bound", "dim": 8, "bound": 3}})
    assert [line.split(":")[0] for line in lines] == ["loss.dim", "loss.bound", "loss.critic"]
    assert lines[0] == "loss.dim: set by the engine from model.projector_out_dim; remove it"
    # with the keys right, the objective's own checks run (and report as loss.<argument>)
    assert errors_of({"loss": {"sigma": -1}, "optim": {"lr": 0}})[0] == "optim.lr: must be > 0.0, got 0.0"
    assert errors_of({"loss": {"sigma": -1}, "optim": {"lr": 0}})[1].startswith("loss.sigma: ")


def test_the_gather_argument_cannot_be_set():
    assert errors_of({"loss": {"gather_distributed": True}}) == [
        "loss.gather_distributed: set by the engine: true under torchrun with more than one process "
        "(negatives from every rank); remove it"]


def test_a_wrong_value_does_not_trigger_checks_that_read_it():
    # dataset is wrong: no imagefolder/torchvision/digits or probe checks on a guessed dataset
    assert errors_of({"data": {"dataset": "imagefolde"}, "train": {"batch_size": 4096}}) == [
        "data.dataset: must be one of 'digits', 'imagefolder', 'cifar10', 'cifar100', 'stl10', got 'imagefolde' "
        "(did you mean 'imagefolder'?)"]
    # a section that is not a table makes every key under it unusable
    assert errors_of({"data": 3}) == ["data: must be a section (table), got integer 3"]
    # the digits split cannot be sized from a bad fraction; the batch check then waits
    assert errors_of({"data": {"digits": {"test_fraction": 2.0}}, "train": {"batch_size": 4096}}) == [
        "data.digits.test_fraction: must be < 1.0, got 2.0"]


def test_cross_section_errors_are_collected_with_the_others(tmp_path):
    lines = errors_of({"data": {"dataset": "cifar100", "torchvision": {"root": str(tmp_path), "split": "unlabeled"}},
                       "optim": {"lr": -1}})
    assert lines == [
        "optim.lr: must be > 0.0, got -1.0",
        f"data.torchvision.root: {tmp_path} has no cifar-100-python folder, which torchvision reads for "
        "data.dataset = 'cifar100' (it is never downloaded)",
        "data.torchvision.split: 'unlabeled' is an STL-10 split; cifar100 has 'train'",
        "eval.linear_probe: is implemented for data.dataset = 'digits' only, not 'cifar100'; set it to false",
    ]


def test_torchvision_roots_are_accepted_with_their_folder(tmp_path):
    for dataset, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")):
        (tmp_path / folder).mkdir()
        cfg = config_from_dict({"data": {"dataset": dataset, "torchvision": {"root": str(tmp_path), "split": ""}},
                                "eval": {"linear_probe": False}})
        assert cfg.data.dataset == dataset
    stl = config_from_dict({"data": {"dataset": "stl10", "torchvision": {"root": str(tmp_path), "split": "unlabeled"}},
                            "eval": {"linear_probe": False}})
    assert stl.data.torchvision.split == "unlabeled"


def test_the_global_batch_must_split_evenly_across_torchrun_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert errors_of({"train": {"batch_size": 128}}) == [
        "train.batch_size: the global batch 128 does not split evenly across WORLD_SIZE = 3 processes; "
        "use a multiple of 3"]
    assert config_from_dict({"train": {"batch_size": 129}}).train.batch_size == 129
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert config_from_dict({"train": {"batch_size": 127}}).train.batch_size == 127
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert errors_of({}) == ["WORLD_SIZE: the environment variable (set by torchrun) must be a positive integer, "
                             "got 'two'"]


def test_sync_batchnorm_is_valid_in_a_single_process():
    assert config_from_dict({"model": {"sync_batchnorm": True}}).model.sync_batchnorm


def test_cuda_settings_need_cuda(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert errors_of({"run": {"device": "cuda"}}) == ["run.device: is 'cuda' but torch.cuda.is_available() is False"]
    assert errors_of({"data": {"dataset": "imagefolder", "imagefolder": {"root": str(tmp_path), "device": "gpu"}},
                      "eval": {"linear_probe": False}}) == [
        "data.imagefolder.device: is 'gpu' but torch.cuda.is_available() is False"]


def test_engine_loss_arguments():
    cfg = config_from_dict({"model": {"projector_out_dim": 16}})
    assert engine_loss_arguments("fmicl", cfg) == {}
    assert engine_loss_arguments("fmicl", cfg, world_size=4) == {"gather_distributed": True}
    assert engine_loss_arguments("infonce", cfg, world_size=2) == {"gather_distributed": True}
    assert engine_loss_arguments("mi_bound", cfg, world_size=4) == {"dim": 16}  # no gather support
    assert engine_loss_arguments("rpc", cfg, world_size=4) == {}


def test_objectives_without_gather_support_use_local_negatives():
    assert [name for name in ("fmicl", "infonce", "align_uniform") if local_negatives_only(name)] == []
    assert all(local_negatives_only(name) for name in ("rpc", "emmi", "mi_bound"))


def test_a_config_that_is_not_utf8_is_one_clear_error(tmp_path):
    from fmicl_engine.config import ConfigError, load_config

    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[run]\nseed = 0\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.toml: is not UTF-8 \(byte 0xe9 on line 3\); save it as UTF-8"):
        load_config(path)


def test_an_out_dir_that_is_or_lies_under_a_file_is_refused_at_validation(tmp_path):
    from pathlib import Path

    from fmicl_engine.config import ConfigError, load_config

    config = Path(__file__).resolve().parents[2] / "configs" / "digits_kl.toml"
    (tmp_path / "file").write_text("")
    for out, problem in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "lies under a file")):
        with pytest.raises(ConfigError, match=f"run.out_dir: .*{problem}"):
            load_config(config, [f"run.out_dir={out}"])
