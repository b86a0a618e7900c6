"""TOML -> validated Config: defaults, types, ranges, unknown keys, paths, --set, round trip."""

import dataclasses
import math
import tomllib

import pytest

from fmicl_engine.config import (
    Config,
    ConfigError,
    config_from_dict,
    dumps_config,
    load_config,
    parse_override,
    save_config,
)
from fmicl_engine.config.loader import DIGITS_NUM_IMAGES, digits_split_sizes, loss_parameters
from fmicl_engine.config.toml_writer import dumps


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


def test_empty_file_gives_every_default(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg.run == dataclasses.replace(Config().run, out_dir="runs/mine")  # out_dir from the file stem
    assert cfg.train == Config().train and cfg.optim == Config().optim and cfg.data == Config().data
    options = cfg.loss.kwargs()
    # The objective's own defaults are filled in (read from its signature), so the saved config is complete.
    assert cfg.loss.name == "fmicl"
    assert options["divergence"] == "kl" and options["similarity"] == "gaussian" and options["sigma"] == 0.5
    assert options["backend"] == "auto"
    assert "dim" not in options and "gather_distributed" not in options


def test_values_are_read_and_int_is_accepted_for_float():
    cfg = config_from_dict({"optim": {"lr": 1, "name": "sgd"}, "train": {"epochs": 3}, "loss": {"sigma": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.name == "sgd" and cfg.train.epochs == 3
    assert cfg.loss.kwargs()["sigma"] == 1.0 and isinstance(cfg.loss.kwargs()["sigma"], float)


def test_config_is_frozen():
    cfg = config_from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"epochs": "3"}}, "train.epochs: must be an integer, got string '3'"),
        ({"train": {"epochs": 2.5}}, "train.epochs: must be an integer, got number 2.5"),
        ({"train": {"checkpoint": 1}}, "train.checkpoint: must be true or false, got integer 1"),
        ({"optim": {"lr": True}}, "optim.lr: must be a number, got boolean True"),
        ({"optim": {"lr": "fast"}}, "optim.lr: must be a number, got string 'fast'"),
        ({"run": {"device": 0}}, "run.device: must be a string, got integer 0"),
        ({"loss": {"sigma": "big"}}, "loss.sigma: must be a number, got string 'big'"),
        ({"loss": {"normalize": "yes"}}, "loss.normalize: must be true or false, got string 'yes'"),
        ({"train": 3}, "train: must be a section (table), got integer 3"),
    ],
)
def test_wrong_types_name_the_key(raw, message):
    assert error_of(raw) == message


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"optim": {"lr": 0}}, "optim.lr: must be > 0.0, got 0.0"),
        ({"optim": {"momentum": 1.0}}, "optim.momentum: must be < 1.0, got 1.0"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
        ({"train": {"batch_size": 1}}, "train.batch_size: must be >= 2, got 1"),
        ({"data": {"digits": {"test_fraction": 1.5}}}, "data.digits.test_fraction: must be < 1.0, got 1.5"),
        ({"optim": {"lr": math.inf}}, "optim.lr: must be finite, got inf"),
        ({"optim": {"name": "adam"}}, "optim.name: must be one of 'adamw', 'sgd', 'lars', got 'adam' (did you mean 'adamw'?)"),
        ({"train": {"batch_size": 4096}}, "train.batch_size: must be <= 1347 (the digits training split), got 4096"),
    ],
)
def test_out_of_range_values_name_the_key(raw, message):
    assert error_of(raw) == message


def test_loss_range_errors_come_from_constructing_the_objective():
    # The objective's own validation (LossArgumentError.argument) becomes the key path.
    assert error_of({"loss": {"sigma": -1}}).startswith("loss.sigma: ")
    assert "-1" in error_of({"loss": {"sigma": -1}})
    assert error_of({"loss": {"divergence": "kll"}}).startswith("loss.divergence: ")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "trian: unknown key (did you mean 'train'?)"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key (did you mean 'train.epochs'?)"),
        ({"data": {"digits": {"noise": 0.1}}}, "data.digits.noise: unknown key (did you mean 'data.digits.noise_std'?)"),
        ({"optim": {"zzz": 1}}, "optim.zzz: unknown key"),
    ],
)
def test_unknown_keys_suggest_the_closest(raw, message):
    assert error_of(raw) == message


def test_unknown_loss_key_and_name_suggest_the_closest():
    assert error_of({"loss": {"sigam": 0.5}}).startswith("loss.sigam: unknown key for objective 'fmicl' (did you mean 'loss.sigma'?)")
    assert error_of({"loss": {"name": "infonse"}}).startswith("loss.name: unknown objective 'infonse' (did you mean 'infonce'?)")
    # tau belongs to infonce, not to emmi
    assert error_of({"loss": {"name": "emmi", "tau": 0.5}}).startswith("loss.tau: unknown key for objective 'emmi'")


def test_engine_supplied_and_required_loss_arguments():
    assert error_of({"loss": {"name": "mi_bound", "bound": "nwj", "critic": "separable", "dim": 8}}) == (
        "loss.dim: set by the engine from model.projector_out_dim; remove it")
    assert error_of({"loss": {"name": "mi_bound", "bound": "nwj"}}) == "loss.critic: required by objective 'mi_bound'"
    cfg = config_from_dict({"loss": {"name": "mi_bound", "bound": "nwj", "critic": "separable"}})
    assert "dim" not in cfg.loss.kwargs()
    assert set(loss_parameters("mi_bound")) >= {"bound", "critic"}


def test_missing_paths_are_config_errors(tmp_path):
    no_probe = {"linear_probe": False}  # (the probe is digits-only: an error of its own on other data)
    assert error_of({"data": {"dataset": "imagefolder"}, "eval": no_probe}) == (
        "data.imagefolder.root: is required when data.dataset = 'imagefolder'")
    missing = tmp_path / "nope"
    assert error_of({"data": {"dataset": "imagefolder", "imagefolder": {"root": str(missing)}}, "eval": no_probe}) == (
        f"data.imagefolder.root: no such directory: {missing}")
    assert error_of({"data": {"dataset": "cifar10"}, "eval": no_probe}) == (
        "data.torchvision.root: is required when data.dataset = 'cifar10': the directory holding cifar-10-batches-py")
    assert error_of({"data": {"dataset": "stl10", "torchvision": {"root": str(missing)}}, "eval": no_probe}) == (
        f"data.torchvision.root: no such directory: {missing}")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_set_overrides_parse_toml_values_and_fall_back_to_strings(tmp_path):
    assert parse_override("optim.lr=3e-4") == (("optim", "lr"), 3e-4)
    assert parse_override("train.epochs=7") == (("train", "epochs"), 7)
    assert parse_override("train.checkpoint=false") == (("train", "checkpoint"), False)
    assert parse_override('loss.divergence="js"') == (("loss", "divergence"), "js")
    assert parse_override("data.imagefolder.root=/data/x y") == (("data", "imagefolder", "root"), "/data/x y")
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 0.1\n[loss]\nsigma = 0.3\n")
    cfg = load_config(path, ["optim.lr=0.5", "loss.divergence=js", "loss.sigma=0.7", "data.digits.noise_std=0"])
    assert cfg.optim.lr == 0.5 and cfg.loss.kwargs()["divergence"] == "js" and cfg.loss.kwargs()["sigma"] == 0.7
    assert cfg.data.digits.noise_std == 0.0
    with pytest.raises(ConfigError, match=r"^optim\.lrr: unknown key \(did you mean 'optim\.lr'\?\)$"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="dotted"):
        load_config(path, ["lr=1"])


def test_saved_config_round_trips(tmp_path):
    raw = {"run": {"seed": 7, "out_dir": "somewhere/else"},
           "loss": {"name": "fmicl", "divergence": "tsallis", "sigma": 0.25, "tsallis_alpha": 2.5},
           "optim": {"name": "lars", "lr": 1e-5, "weight_decay": 1.5e-6},
           "data": {"digits": {"noise_std": 0.0}}, "eval": {"linear_probe": False}}
    cfg = config_from_dict(raw)
    save_config(cfg, tmp_path / "config.toml")
    text = (tmp_path / "config.toml").read_text()
    assert load_config(tmp_path / "config.toml") == cfg
    assert dumps_config(load_config(tmp_path / "config.toml")) == text


def test_toml_writer_values_read_back():
    table = {"a": {"s": 'quote " back \\ slash \n tab\t é', "i": -3, "f": 1e-300, "g": 0.1, "big": 1e22,
                   "t": True, "inf": math.inf, "l": [1, 2]}, "b": {"c": {"d": 1}}, "top": "x"}
    assert tomllib.loads(dumps(table)) == table


def test_digits_split_size_matches_sklearn():
    from sklearn.datasets import load_digits
    from fmicl_engine.data.digits import load_digits_split

    assert len(load_digits().target) == DIGITS_NUM_IMAGES
    train, test = load_digits_split(0.25, seed=0)
    assert (len(train.labels), len(test.labels)) == digits_split_sizes(0.25)


def test_threads_setting_is_applied(tmp_path):
    import torch

    from fmicl_engine.train import loop

    before = torch.get_num_threads()
    cfg = config_from_dict({"run": {"threads": 1, "out_dir": str(tmp_path)}, "train": {"max_steps": 1},
                            "model": {"cnn_width": 2}, "eval": {"linear_probe": False}})
    try:
        loop.run(cfg, log=lambda s: None, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert error_of({"run": {"threads": -1}}) == "run.threads: must be >= 0, got -1"
