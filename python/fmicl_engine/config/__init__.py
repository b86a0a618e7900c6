"""Typed, validated, frozen configuration: TOML in, ``Config`` out (see schema.py for every key)."""

from fmicl_engine.config.loader import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    dumps_config,
    load_config,
    loss_parameters,
    parse_override,
    save_config,
)
from fmicl_engine.config.schema import (
    Config,
    DataConfig,
    DigitsConfig,
    EvalConfig,
    ImageFolderConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "DataConfig", "DigitsConfig", "EvalConfig", "ImageFolderConfig",
    "LossConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "config_from_dict",
    "config_to_dict", "dumps_config", "load_config", "loss_parameters", "parse_override", "save_config",
]
