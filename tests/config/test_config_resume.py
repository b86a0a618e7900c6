"""Resuming: which keys may change between a checkpointed run and its resume; a saved config read back."""

import pytest

from fmicl_engine.config import (
    RESUMABLE_KEYS,
    ConfigError,
    config_from_dict,
    config_from_text,
    config_to_dict,
    dumps_config,
    resume_differences,
)
from fmicl_engine.config.toml_writer import dumps


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def every_dotted_key(table: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        keys |= every_dotted_key(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_resumable_keys_are_config_keys():
    assert RESUMABLE_KEYS <= every_dotted_key(config_to_dict(config_from_dict({})))
    assert {"train.epochs", "run.out_dir", "eval.linear_probe", "eval.labels_per_class"} <= RESUMABLE_KEYS
    assert not RESUMABLE_KEYS & {"train.batch_size", "run.seed", "optim.lr", "loss.name"}


def test_resumable_changes_are_not_differences():
    saved = config_from_dict({"train": {"epochs": 10}})
    current = config_from_dict({"train": {"epochs": 20, "max_steps": 5, "log_every": 1, "checkpoint_every_steps": 3,
                                          "keep_checkpoints": 4},
                                "run": {"out_dir": "elsewhere", "threads": 1, "dist_timeout_s": 60},
                                "data": {"imagefolder": {"num_threads": 2}, "torchvision": {"num_workers": 0}},
                                "eval": {"linear_probe": False, "probe_c": 0.5}})
    assert resume_differences(saved, current) == []


def test_differences_are_sorted_dotted_keys_including_the_objective():
    saved = config_from_dict({"loss": {"divergence": "js", "sigma": 0.3}})
    current = config_from_dict({"loss": {"divergence": "kl", "sigma": 0.3}, "optim": {"lr": 0.01},
                                "train": {"batch_size": 64, "epochs": 3}})
    assert resume_differences(saved, current) == ["loss.divergence", "optim.lr", "train.batch_size"]
    other = config_from_dict({"loss": {"name": "infonce", "tau": 0.2}})
    differences = resume_differences(saved, other)
    assert {"loss.name", "loss.divergence", "loss.sigma", "loss.tau"} <= set(differences)  # tau: 0.5 vs 0.2
    assert differences == sorted(differences)


def test_a_saved_config_reads_back_without_checking_the_machine(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    cfg = config_from_dict({"data": {"dataset": "imagefolder", "imagefolder": {"root": str(root)}},
                            "eval": {"linear_probe": False}, "run": {"out_dir": str(tmp_path / "run")}})
    text = dumps_config(cfg)
    root.rmdir()  # the data moved since the run was checkpointed
    assert config_from_text(text) == cfg
    with pytest.raises(ConfigError, match="no such directory"):
        config_from_dict(config_to_dict(cfg))


def test_a_saved_config_from_before_a_new_key_takes_its_default():
    cfg = config_from_dict({})
    table = config_to_dict(cfg)
    del table["train"]["precision"]
    assert config_from_text(dumps(table)) == cfg


def test_a_saved_config_is_still_type_checked():
    with pytest.raises(ConfigError) as info:
        config_from_text("[train]\nepochs = 0\nbatch_size = 'x'\n")
    assert str(info.value).splitlines() == ["train.epochs: must be >= 1, got 0",
                                            "train.batch_size: must be an integer, got string 'x'"]
    with pytest.raises(ConfigError, match="^config: invalid TOML"):
        config_from_text("[train\n")
