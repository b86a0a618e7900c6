"""Typed, validated, frozen configuration: TOML in, ``Config`` out (see schema.py for every key)."""

from fmicl_engine.config.loader import (
    RESUMABLE_KEYS,
    ConfigError,
    ConfigErrors,
    config_from_dict,
    config_from_text,
    config_to_dict,
    dumps_config,
    engine_loss_arguments,
    load_config,
    local_negatives_only,
    loss_parameters,
    parse_override,
    read_config_file,
    resume_differences,
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
    TorchvisionSetConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ConfigError", "ConfigErrors", "DataConfig", "DigitsConfig", "EvalConfig", "ImageFolderConfig",
    "LossConfig", "ModelConfig", "OptimConfig", "RESUMABLE_KEYS", "RunConfig", "TorchvisionSetConfig",
    "TrainConfig", "config_from_dict", "config_from_text", "config_to_dict", "dumps_config",
    "engine_loss_arguments", "load_config", "local_negatives_only", "loss_parameters", "parse_override",
    "read_config_file", "resume_differences", "save_config",
]
