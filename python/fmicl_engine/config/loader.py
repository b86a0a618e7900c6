"""TOML file + ``--set`` overrides -> a validated, frozen ``Config``; and back to TOML.

Everything that can be checked before work starts is checked here, and every failure is a
``ConfigError`` whose message begins with the key path, e.g. ``loss.sigma: must be > 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fmicl_engine.config import toml_writer
from fmicl_engine.config.schema import Config, LossConfig

# Keyword arguments of an objective that the engine supplies itself, so a config must not set them.
ENGINE_SUPPLIED_LOSS_ARGUMENTS = {
    "dim": "set by the engine from model.projector_out_dim",
    "gather_distributed": "reserved for the engine's distributed launcher (negatives from every rank)",
}

DIGITS_NUM_IMAGES = 1797  # len(sklearn.datasets.load_digits().target); checked in tests


class ConfigError(ValueError):
    """A configuration problem, found before any work starts. ``key`` is the dotted key path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


# ----------------------------------------------------------------------------- reading


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML config, apply ``section.key=value`` overrides, validate, resolve defaults."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "no such config file") from None
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), f"invalid TOML: {err}") from None
    for override in overrides:
        keys, value = parse_override(override)
        _set_path(raw, keys, value)
    return config_from_dict(raw, stem=path.stem)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``a.b=value`` -> (("a", "b"), value): the value as a TOML value, else the bare string."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("--set", f"expected section.key=value, got {text!r}")
    keys = tuple(k.strip() for k in key.split("."))
    if len(keys) < 2 or not all(keys):
        raise ConfigError(key, f"--set needs a dotted section.key path, got {text!r}")
    value_text = value_text.strip()
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # e.g. --set data.imagefolder.root=/data/x needs no quotes
    return keys, value


def _set_path(raw: dict, keys: tuple[str, ...], value: Any) -> None:
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: i + 1]), "is a value, not a section")
        node = child
    node[keys[-1]] = value


def config_from_dict(raw: dict[str, Any], *, stem: str = "config") -> Config:
    """Validate a nested dict (as read from TOML) into a Config; ``stem`` names the default out_dir."""
    loss_raw = raw.get("loss", {})
    rest = {k: v for k, v in raw.items() if k != "loss"}
    if not isinstance(loss_raw, dict):
        raise ConfigError("loss", f"must be a section (table), got {_describe(loss_raw)}")
    cfg = _build_section(Config, rest, prefix="", skip={"loss"})
    if not cfg.run.out_dir:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=f"runs/{stem}"))
    cfg = dataclasses.replace(cfg, loss=_build_loss(loss_raw, cfg))
    _check_cross_section(cfg)
    return cfg


def _build_section(cls, raw: dict[str, Any], prefix: str, skip: set[str] = frozenset()):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(prefix + key, "unknown key" + _did_you_mean(key, fields, prefix))
    values = {}
    for name, f in fields.items():
        if name in skip:
            continue
        path = prefix + name
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            sub = raw.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(path, f"must be a section (table), got {_describe(sub)}")
            values[name] = _build_section(expected, sub, prefix=path + ".")
        elif name in raw:
            values[name] = _check_value(path, raw[name], expected, f.metadata)
    return cls(**values)


def _check_value(path: str, value: Any, expected: type, meta: typing.Mapping[str, Any]) -> Any:
    value = _check_type(path, value, expected)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ConfigError(path, f"must be one of {options}, got {value!r}" + _did_you_mean(value, choices, ""))
    for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        limit = meta.get(bound)
        if limit is not None and not ok(value, limit):
            raise ConfigError(path, f"must be {word} {limit}, got {value!r}")
    return value


def _check_type(path: str, value: Any, expected: Any) -> Any:
    """Return ``value`` as ``expected`` (an int is accepted for a float) or raise ConfigError."""
    origin = typing.get_origin(expected)
    if origin is typing.Literal:
        choices = typing.get_args(expected)
        if value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise ConfigError(path, f"must be one of {options}, got {value!r}" + _did_you_mean(value, choices, ""))
        return value
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(expected) if m is not type(None)]
        for member in members:
            try:
                return _check_type(path, value, member)
            except ConfigError:
                pass
        names = " or ".join(_type_name(m) for m in members)
        raise ConfigError(path, f"must be {names}, got {_describe(value)}")
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(path, f"must be finite, got {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer, got {_describe(value)}")
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {_describe(value)}")
        return value
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string, got {_describe(value)}")
        return value
    return value  # an annotation this loader does not know (e.g. Any): the objective checks it


def _type_name(t: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(t, str(t))


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", list: "array"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}"


def _did_you_mean(word: Any, candidates: typing.Iterable[Any], prefix: str) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------- the [loss] section


def loss_parameters(name: str) -> dict[str, tuple[Any, Any]]:
    """The config-settable keyword arguments of objective ``name``: {keyword: (annotation, default)},
    default ``inspect.Parameter.empty`` when required. Read from its ``__init__`` signature."""
    from fmicl_engine.loss import LOSS_REGISTRY

    cls = LOSS_REGISTRY[name]
    init = cls.__init__ if inspect.isclass(cls) else cls
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: fall back to the defaults' types below
        hints = {}
    params = {}
    for p in inspect.signature(init).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in ENGINE_SUPPLIED_LOSS_ARGUMENTS:
            continue
        annotation = hints.get(p.name)
        if annotation is None and p.default not in (p.empty, None):
            annotation = type(p.default)
        params[p.name] = (annotation, p.default)
    return params


def _build_loss(raw: dict[str, Any], cfg: Config) -> LossConfig:
    from fmicl_engine.loss import LOSS_REGISTRY, LossArgumentError, build_loss

    raw = dict(raw)
    name = _check_type("loss.name", raw.pop("name", LossConfig.name), str)
    if name not in LOSS_REGISTRY:
        options = ", ".join(sorted(LOSS_REGISTRY))
        raise ConfigError("loss.name", f"unknown objective {name!r}" + _did_you_mean(name, LOSS_REGISTRY, "")
                          + f"; one of: {options}")
    params = loss_parameters(name)
    for key in raw:
        if key in ENGINE_SUPPLIED_LOSS_ARGUMENTS:
            raise ConfigError(f"loss.{key}", ENGINE_SUPPLIED_LOSS_ARGUMENTS[key] + "; remove it")
        if key not in params:
            raise ConfigError(f"loss.{key}", f"unknown key for objective {name!r}"
                              + _did_you_mean(key, params, "loss.") + f"; it accepts: {', '.join(params)}")
    options: dict[str, Any] = {}
    for key, (annotation, default) in params.items():
        if key in raw:
            options[key] = _check_type(f"loss.{key}", raw[key], annotation)
        elif default is inspect.Parameter.empty:
            raise ConfigError(f"loss.{key}", f"required by objective {name!r}")
        elif default is not None:  # None (e.g. "use the objective's own width") has no TOML form
            options[key] = default
    try:
        build_loss(name, **options, **engine_loss_arguments(name, cfg))
    except LossArgumentError as err:
        raise ConfigError(f"loss.{err.argument}", str(err)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError("loss", f"objective {name!r} rejected its arguments: {err}") from None
    return LossConfig(name=name, options=tuple(options.items()))  # in the objective's signature order


def engine_loss_arguments(name: str, cfg: Config) -> dict[str, Any]:
    """The keyword arguments the engine supplies to objective ``name`` (see ENGINE_SUPPLIED_LOSS_ARGUMENTS)."""
    from fmicl_engine.loss import LOSS_REGISTRY

    cls = LOSS_REGISTRY[name]
    accepted = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
    return {"dim": cfg.model.projector_out_dim} if "dim" in accepted else {}


# ----------------------------------------------------------------------------- cross-section checks


def digits_split_sizes(test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes of sklearn's train_test_split on the digits (test = ceil(fraction * n))."""
    n_test = math.ceil(test_fraction * DIGITS_NUM_IMAGES)
    return DIGITS_NUM_IMAGES - n_test, n_test


def _check_cross_section(cfg: Config) -> None:
    import torch

    if cfg.data.dataset == "imagefolder":  # the data first: without it nothing else matters
        folder = cfg.data.imagefolder
        if not folder.root:
            raise ConfigError("data.imagefolder.root", "is required when data.dataset = 'imagefolder'")
        if not Path(folder.root).is_dir():
            raise ConfigError("data.imagefolder.root", f"no such directory: {folder.root}")
        if folder.device == "gpu" and not torch.cuda.is_available():
            raise ConfigError("data.imagefolder.device", "is 'gpu' but torch.cuda.is_available() is False")
        if cfg.eval.linear_probe:  # the in-memory probe needs labelled un-augmented images (digits only)
            raise ConfigError("eval.linear_probe", "is implemented for data.dataset = 'digits' only; set it to false")
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device", "is 'cuda' but torch.cuda.is_available() is False")
    if cfg.data.dataset == "digits":
        n_train, n_test = digits_split_sizes(cfg.data.digits.test_fraction)
        if n_test < 10 or n_train < 10:
            raise ConfigError("data.digits.test_fraction", f"leaves {n_train} train / {n_test} test images; "
                              "each split needs at least one image per class")
        if cfg.eval.labels_per_class > 0:
            from fmicl_engine.data.digits import load_digits_split

            train, _ = load_digits_split(cfg.data.digits.test_fraction, cfg.run.seed)
            fewest = int(train.labels.bincount().min())
            if cfg.eval.labels_per_class > fewest:
                raise ConfigError("eval.labels_per_class", f"must be <= {fewest} (the rarest digit's training "
                                  f"images), got {cfg.eval.labels_per_class}")
        if cfg.train.batch_size > n_train:
            raise ConfigError("train.batch_size", f"must be <= {n_train} (the digits training split), "
                              f"got {cfg.train.batch_size}")


# ----------------------------------------------------------------------------- writing


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The nested dict whose TOML is a config file that loads back to ``cfg``."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, LossConfig):
            out[f.name] = {"name": value.name, **value.kwargs()}
        elif dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        else:
            out[f.name] = value
    return out


def dumps_config(cfg: Config) -> str:
    return toml_writer.dumps(config_to_dict(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_config(cfg), encoding="utf-8")
    os.replace(tmp, path)
