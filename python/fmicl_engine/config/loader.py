"""TOML file (+ the files it extends) + ``--set`` overrides -> a validated, frozen ``Config``; and back to TOML.

Everything that can be checked before work starts is checked here. Each problem is a
``ConfigError`` whose message begins with the key path, e.g. ``loss.sigma: must be > 0, got -1``;
validation collects every problem of a config and raises them together as one ``ConfigErrors``.
"""

from __future__ import annotations

import dataclasses
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

import torch

from fmicl_engine.atomic_files import write_text_atomically
from fmicl_engine.config import toml_writer
from fmicl_engine.config.schema import Config, EvalConfig, LossConfig
from fmicl_engine.loss.registry import LOSS_REGISTRY, REQUIRED, build_loss, loss_signature
from fmicl_engine.loss.reference import overflows_at_extremes
from fmicl_engine.loss.validation import LossArgumentError, did_you_mean, overflow_advice

# Keyword arguments of an objective that the engine supplies itself, so a config must not set them.
ENGINE_SUPPLIED_LOSS_ARGUMENTS = {
    "dim": "set by the engine from model.projector_out_dim",
    "gather_distributed": "set by the engine: true under torchrun with more than one process (negatives from every rank)",
}

# Bounds of objective keywords that the objective itself leaves open but a run cannot honour, in the
# form of schema.setting's constraints (the objective checks the lower ones).
LOSS_ARGUMENT_LIMITS = {
    "hidden": {"le": 16384},  # the MI critic's width: as model.projector_hidden_dim
}

DIGITS_NUM_IMAGES = 1797  # len(sklearn.datasets.load_digits().target); checked in tests

# The folder torchvision's dataset class reads under its root (it is never downloaded here).
TORCHVISION_DATASET_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}
STL10_ONLY_SPLITS = ("unlabeled", "train+unlabeled")

# Keys that may differ between a checkpointed run and its resume: they change how long the run
# goes, where and how often it writes, and how it is evaluated, not the training trajectory.
RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.max_steps", "train.log_every", "train.checkpoint", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "run.out_dir", "run.threads", "run.dist_timeout_s",
    "data.imagefolder.num_threads", "data.imagefolder.val_root", "data.torchvision.num_workers",
    *(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig)),
})


class ConfigError(ValueError):
    """A configuration problem, found before any work starts. ``key`` is the dotted key path."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)

    @property
    def errors(self) -> list[ConfigError]:
        """The problems this exception reports, one per key: here just itself (see ConfigErrors)."""
        return [self]


class ConfigErrors(ConfigError):
    """Every problem found in one config, reported together: ``errors`` lists them (each a
    ConfigError), ``key`` is the first one's, and the text is one "key: message" line per problem."""

    def __init__(self, errors: typing.Sequence[ConfigError]):
        self._errors = [single for error in errors for single in error.errors]
        if not self._errors:
            raise ValueError("ConfigErrors needs at least one error")
        super().__init__("", "\n".join(str(error) for error in self._errors))
        self.key = self._errors[0].key

    @property
    def errors(self) -> list[ConfigError]:
        return list(self._errors)


class _Problems:
    """The errors found so far in one config, and which keys they make unusable for later checks."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, error: ConfigError) -> None:
        self.errors.append(error)

    def report(self, key: str, message: str) -> None:
        self.add(ConfigError(key, message))

    def usable(self, *keys: str) -> bool:
        """False when one of ``keys`` (or a section holding it) has an error: its value was replaced
        by the default, and a check reading it would report a problem the config does not have."""
        return not any(key == error.key or key.startswith(error.key + ".") for key in keys for error in self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors)


# ----------------------------------------------------------------------------- reading


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML config and the files it extends, apply ``section.key=value`` overrides,
    validate (every problem at once, see ConfigErrors), resolve defaults."""
    path = Path(path)
    raw = read_config_file(path)
    for override in overrides:
        keys, value = parse_override(override)
        _set_path(raw, keys, value)
    return config_from_dict(raw, stem=path.stem)


def config_from_text(text: str, *, stem: str = "config") -> Config:
    """A resolved config's TOML (a run's config.toml) -> Config, checking keys, types, ranges and the
    objective but not the machine (paths, CUDA, world size): a checkpointed run's data may have moved."""
    raw = _parse_toml(text, "config")
    problems = _Problems()
    cfg = _build_config(raw, stem, problems)
    problems.raise_if_any()
    return cfg


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's table with the chain of files it ``extends`` merged under it (see _merge_extending)."""
    return _read_extending(Path(path), chain=())


def _read_extending(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved_chain = [p.resolve() for p in chain]
    if path.resolve() in resolved_chain:
        files = (*chain[resolved_chain.index(path.resolve()):], path)
        raise ConfigError("extends", "cycle: " + " -> ".join(str(p) for p in files))
    raw = _read_toml(path, extended_by=chain[-1] if chain else None)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base or "\x00" in base:  # NUL cannot be in a filesystem path
        raise ConfigError("extends", f"must be the path of a config file (relative to {path}), got {_describe(base)}")
    base_path = Path(os.path.normpath(path.parent / base))  # an absolute path stays as it is
    return _merge_extending(_read_extending(base_path, chain + (path,)), raw)


def text_line(path: Path, offset: int) -> int:
    """The 1-based line of byte ``offset`` in the file ``path``."""
    return path.read_bytes()[:offset].count(b"\n") + 1


def _read_toml(path: Path, extended_by: Path | None) -> dict[str, Any]:
    by = f" (extended by {extended_by})" if extended_by else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "no such config file" + by) from None
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror}{by}") from None
    except UnicodeDecodeError as err:  # TOML is UTF-8
        line = text_line(path, err.start)
        raise ConfigError(str(path), f"is not UTF-8 (byte 0x{err.object[err.start]:02x} on line {line}); "
                          f"save it as UTF-8{by}") from None
    if text.startswith("\ufeff"):  # TOML has no byte-order mark; some Windows editors write one
        raise ConfigError(str(path), f"starts with a UTF-8 byte-order mark; save it as UTF-8 without one{by}")
    return _parse_toml(text, str(path))


def _parse_toml(text: str, key: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except ValueError as err:  # TOMLDecodeError, or an integer beyond Python's 4,300-digit conversion limit
        raise ConfigError(key, f"invalid TOML: {err}") from None
    except RecursionError:  # tomllib recurses once per nesting level of an array or inline table
        raise ConfigError(key, "invalid TOML: arrays or inline tables nested too deeply") from None


def _merge_extending(base: dict[str, Any], extending: dict[str, Any]) -> dict[str, Any]:
    """``extending`` over ``base``: tables merge key by key, the extending file's values win. The
    [loss] table is the exception when the two name different objectives: one objective's keywords
    mean nothing to another, so then the extending file's [loss] replaces the base's."""
    base_loss, extending_loss = base.get("loss"), extending.get("loss")
    if isinstance(base_loss, dict) and isinstance(extending_loss, dict) and "name" in extending_loss:
        if extending_loss["name"] != base_loss.get("name", LossConfig.name):
            base = {key: value for key, value in base.items() if key != "loss"}
    return _deep_merge(base, extending)


def _deep_merge(base: dict[str, Any], extending: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extending.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
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
    """Validate a nested dict (as read from TOML) into a Config; ``stem`` names the default out_dir.
    Every problem is collected; if there is any, they are raised together as ConfigErrors."""
    problems = _Problems()
    cfg = _build_config(raw, stem, problems)
    _check_cross_section(cfg, problems)
    problems.raise_if_any()
    return cfg


def _build_config(raw: dict[str, Any], stem: str, problems: _Problems) -> Config:
    """Keys, types, ranges and the objective's arguments; where a value is wrong its default stands in,
    so that the other sections can still be checked."""
    loss_raw = raw.get("loss", {})
    cfg = _build_section(Config, raw, prefix="", problems=problems, skip={"loss"})
    if not cfg.run.out_dir:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=f"runs/{stem}"))
    if not isinstance(loss_raw, dict):
        problems.report("loss", f"must be a section (table), got {_describe(loss_raw)}")
        return cfg
    return dataclasses.replace(cfg, loss=_build_loss(loss_raw, cfg, problems))


def _build_section(cls, raw: dict[str, Any], prefix: str, problems: _Problems, skip: set[str] = frozenset()):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.report(prefix + key, "unknown key" + did_you_mean(key, fields, prefix))
    values = {}
    for name, f in fields.items():
        if name in skip:
            continue
        path = prefix + name
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            sub = raw.get(name, {})
            if not isinstance(sub, dict):
                problems.report(path, f"must be a section (table), got {_describe(sub)}")
                sub = {}
            values[name] = _build_section(expected, sub, prefix=path + ".", problems=problems)
        elif name in raw:
            try:
                values[name] = _check_value(path, raw[name], expected, f.metadata)
            except ConfigError as err:
                problems.add(err)
    return cls(**values)


def _check_value(path: str, value: Any, expected: type, meta: typing.Mapping[str, Any]) -> Any:
    value = _check_type(path, value, expected)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ConfigError(path, f"must be one of {options}, got {value!r}" + did_you_mean(value, choices))
    if meta.get("path"):
        # A control character (a pasted newline, a NUL) in a path is a mistake, and NUL is not even
        # representable in a filesystem path.
        control = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
        if control is not None:
            raise ConfigError(path, f"a path must not contain control characters; {value!r} holds "
                              f"U+{ord(control):04X}")
    for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        limit = meta.get(bound)
        if limit is not None and not ok(value, limit):
            raise ConfigError(path, f"must be {word} {limit}, got {_show(value)}")
    return value


def _check_type(path: str, value: Any, expected: Any) -> Any:
    """Return ``value`` as ``expected`` (an int is accepted for a float) or raise ConfigError."""
    origin = typing.get_origin(expected)
    if origin is typing.Literal:
        choices = typing.get_args(expected)
        if value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise ConfigError(path, f"must be one of {options}, got {value!r}" + did_you_mean(value, choices))
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
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the largest float
            raise ConfigError(path, f"must be finite, got {_show(value)}") from None
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
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # from undecodable bytes in --set's argument
            raise ConfigError(path, f"must be Unicode text, got {value!r} (undecodable bytes?)")
        return value
    return value  # an annotation this loader does not know (e.g. Any): the objective checks it


def _type_name(t: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(t, str(t))


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", list: "array"}
    return f"{kind.get(type(value), type(value).__name__)} {_show(value)}"


def _show(value: Any) -> str:
    """``repr(value)``, but a huge integer (whose repr Python refuses past 4,300 digits) by its size."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"{'-' if value < 0 else ''}<an integer of {value.bit_length()} bits>"
    return repr(value)


# ----------------------------------------------------------------------------- the [loss] section


def loss_parameters(name: str) -> dict[str, tuple[Any, Any]]:
    """The config-settable keyword arguments of objective ``name``: {keyword: (annotation, default)},
    default ``REQUIRED`` (``inspect.Parameter.empty``) when it has none: the objective's
    ``loss_signature`` without the keywords the engine supplies. A keyword without an annotation
    takes its default's type."""
    params = {}
    for key, (annotation, default) in loss_signature(name).items():
        if key in ENGINE_SUPPLIED_LOSS_ARGUMENTS:
            continue
        if annotation is None and default not in (REQUIRED, None):
            annotation = type(default)
        params[key] = (annotation, default)
    return params


def _build_loss(raw: dict[str, Any], cfg: Config, problems: _Problems) -> LossConfig:
    """The [loss] table as a LossConfig; on any problem, the default LossConfig (the errors are reported)."""
    raw = dict(raw)
    try:
        name = _check_type("loss.name", raw.pop("name", LossConfig.name), str)
    except ConfigError as err:
        problems.add(err)
        return LossConfig()
    if name not in LOSS_REGISTRY:  # without an objective its arguments cannot be checked
        options = ", ".join(sorted(LOSS_REGISTRY))
        problems.report("loss.name", f"unknown objective {name!r}" + did_you_mean(name, LOSS_REGISTRY)
                        + f"; one of: {options}")
        return LossConfig()
    first_error = len(problems.errors)
    params = loss_parameters(name)
    for key in raw:
        if key in ENGINE_SUPPLIED_LOSS_ARGUMENTS:
            problems.report(f"loss.{key}", ENGINE_SUPPLIED_LOSS_ARGUMENTS[key] + "; remove it")
        elif key not in params:
            problems.report(f"loss.{key}", f"unknown key for objective {name!r}"
                            + did_you_mean(key, params, "loss.") + f"; it accepts: {', '.join(params)}")
    options: dict[str, Any] = {}
    for key, (annotation, default) in params.items():
        if key in raw:
            try:
                options[key] = _check_value(f"loss.{key}", raw[key], annotation, LOSS_ARGUMENT_LIMITS.get(key, {}))
            except ConfigError as err:
                problems.add(err)
        elif default is REQUIRED:
            problems.report(f"loss.{key}", f"required by objective {name!r}")
        elif default is not None:  # None (e.g. "use the objective's own width") has no TOML form
            options[key] = default
    if len(problems.errors) > first_error:  # constructing it would only repeat these
        return LossConfig()
    try:
        objective = build_loss(name, **options, **engine_loss_arguments(name, cfg))
    except LossArgumentError as err:
        problems.report(f"loss.{err.argument}", str(err))
    except (TypeError, ValueError, ArithmeticError, RuntimeError, MemoryError) as err:
        # e.g. torch refusing a size it cannot allocate; its first line says why, the rest is C++ frames
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        problems.report("loss", f"objective {name!r} rejected its arguments: {first_line}")
    else:
        # Values each valid alone can still overflow together in float32, the engine's loss dtype,
        # once training brings pairs together or apart: refused now rather than at some step.
        # (Unit rows only: unnormalised embeddings have no extremes to probe.)
        hparams = getattr(objective, "hparams", {})
        argument = overflows_at_extremes(name, hparams, torch.float32) if hparams.get("normalize", True) else None
        if argument is not None:
            problems.report(f"loss.{argument}", f"objective {name!r} overflows float32 (the loss's dtype in training) "
                            f"with these values once embeddings meet or lie opposite ({argument} = "
                            f"{options.get(argument)!r}): {overflow_advice(argument)}")
    return LossConfig(name=name, options=tuple(options.items()))  # in the objective's signature order


def engine_loss_arguments(name: str, cfg: Config, world_size: int = 1) -> dict[str, Any]:
    """The keyword arguments the engine supplies to objective ``name`` (see ENGINE_SUPPLIED_LOSS_ARGUMENTS):
    ``dim`` where it takes one, and ``gather_distributed=True`` on more than one process where it can."""
    accepted = loss_signature(name)
    arguments: dict[str, Any] = {}
    if "dim" in accepted:
        arguments["dim"] = cfg.model.projector_out_dim
    if world_size > 1 and "gather_distributed" in accepted:
        arguments["gather_distributed"] = True
    return arguments


def local_negatives_only(name: str) -> bool:
    """True when objective ``name`` cannot gather embeddings across ranks: under torchrun each rank
    then contrasts (or estimates its statistics) within its own share of the batch only."""
    return "gather_distributed" not in loss_signature(name)


# ----------------------------------------------------------------------------- cross-section checks


def digits_split_sizes(test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes of sklearn's train_test_split on the digits (test = ceil(fraction * n))."""
    n_test = math.ceil(test_fraction * DIGITS_NUM_IMAGES)
    return DIGITS_NUM_IMAGES - n_test, n_test


def _check_cross_section(cfg: Config, problems: _Problems) -> None:
    """Checks that need several keys, the filesystem, CUDA or the launcher; each runs only when the keys
    it reads are valid."""
    dataset = cfg.data.dataset
    if problems.usable("data.dataset"):
        if dataset == "imagefolder":
            _check_imagefolder(cfg, problems)
        elif dataset in TORCHVISION_DATASET_FOLDERS:
            _check_torchvision_set(cfg, problems)
        elif dataset == "digits":
            _check_digits(cfg, problems)
        if dataset != "digits" and cfg.eval.linear_probe and problems.usable("eval.linear_probe"):
            # the in-memory probe needs the labelled, un-augmented images, which only the digits provide
            problems.report("eval.linear_probe", f"is implemented for data.dataset = 'digits' only, not {dataset!r}; "
                            "set it to false")
    if cfg.run.device == "cuda" and problems.usable("run.device") and not _cuda_available():
        problems.report("run.device", "is 'cuda' but torch.cuda.is_available() is False")
    _check_world_size(cfg, problems)
    if problems.usable("run.out_dir"):
        try:
            _check_out_dir(cfg.run.out_dir, problems)
        except OSError as err:  # e.g. a name too long for the filesystem
            problems.report("run.out_dir", f"cannot be checked: {err.strerror or err}")


def _check_out_dir(out_dir: str, problems: _Problems) -> None:
    """The run directory, or its nearest existing ancestor, must be a writable directory."""
    path = Path(out_dir or ".").absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under a file, {existing}"
        problems.report("run.out_dir", f"{out_dir} {where}; choose a directory")
    # the effective ids decide whether this process may write (os.access checks the real ones by default)
    elif not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        problems.report("run.out_dir", f"{existing} is not writable; choose a writable directory")


def _is_dir(key: str, path: str | Path, problems: _Problems) -> bool | None:
    """Whether ``path`` is a directory; None (and a problem reported under ``key``) when the filesystem
    cannot say, e.g. for a name longer than it allows."""
    try:
        return Path(path).is_dir()
    except OSError as err:
        problems.report(key, f"cannot be checked: {err.strerror or err}")
        return None


def _check_imagefolder(cfg: Config, problems: _Problems) -> None:
    folder = cfg.data.imagefolder
    if problems.usable("data.imagefolder.root"):
        if not folder.root:
            problems.report("data.imagefolder.root", "is required when data.dataset = 'imagefolder'")
        elif _is_dir("data.imagefolder.root", folder.root, problems) is False:
            problems.report("data.imagefolder.root", f"no such directory: {folder.root}")
    # The DALI pipeline must be able to run on the device now, not at the first batch: DALI
    # importable; for "gpu" a GPU, and the project's colour operator with its CUDA backend or
    # else DALI's built-in colour operators (refused by FMICL_DALI_COLOUR=exact).
    if problems.usable("data.imagefolder.device"):
        from fmicl_engine.data.dali_ops import pipeline_problem

        if folder.device == "gpu" and not _cuda_available():
            problems.report("data.imagefolder.device", "is 'gpu' but torch.cuda.is_available() is False")
        elif (why := pipeline_problem(folder.device)) is not None:
            problems.report("data.imagefolder.device", f"is {folder.device!r}, but {why}")


def _check_torchvision_set(cfg: Config, problems: _Problems) -> None:
    dataset, settings = cfg.data.dataset, cfg.data.torchvision
    if problems.usable("data.torchvision.root"):
        folder = TORCHVISION_DATASET_FOLDERS[dataset]
        if not settings.root:
            problems.report("data.torchvision.root", f"is required when data.dataset = {dataset!r}: the directory "
                            f"holding {folder}")
        elif (is_dir := _is_dir("data.torchvision.root", settings.root, problems)) is not True:
            if is_dir is False:
                problems.report("data.torchvision.root", f"no such directory: {settings.root}")
        elif _is_dir("data.torchvision.root", Path(settings.root) / folder, problems) is False:
            problems.report("data.torchvision.root", f"{settings.root} has no {folder} folder, which torchvision "
                            f"reads for data.dataset = {dataset!r} (it is never downloaded)")
    if dataset != "stl10" and settings.split in STL10_ONLY_SPLITS and problems.usable("data.torchvision.split"):
        problems.report("data.torchvision.split", f"{settings.split!r} is an STL-10 split; {dataset} has 'train'")


def _check_digits(cfg: Config, problems: _Problems) -> None:
    if not problems.usable("data.digits.test_fraction"):
        return
    n_train, n_test = digits_split_sizes(cfg.data.digits.test_fraction)
    if n_test < 10 or n_train < 10:
        problems.report("data.digits.test_fraction", f"leaves {n_train} train / {n_test} test images; "
                        "each split needs at least one image per class")
        return
    if cfg.eval.labels_per_class > 0 and problems.usable("eval.labels_per_class", "run.seed"):
        from fmicl_engine.data.digits import load_digits_split

        train, _ = load_digits_split(cfg.data.digits.test_fraction, cfg.run.seed)
        fewest = int(train.labels.bincount().min())
        if cfg.eval.labels_per_class > fewest:
            problems.report("eval.labels_per_class", f"must be <= {fewest} (the rarest digit's training "
                            f"images), got {cfg.eval.labels_per_class}")
    if cfg.train.batch_size > n_train and problems.usable("train.batch_size"):
        problems.report("train.batch_size", f"must be <= {n_train} (the digits training split), "
                        f"got {cfg.train.batch_size}")


def _check_world_size(cfg: Config, problems: _Problems) -> None:
    """Under torchrun (WORLD_SIZE > 1) the global batch is split evenly across the processes."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(text)
    except ValueError:
        world_size = 0
    if world_size < 1:
        problems.report("WORLD_SIZE", f"the environment variable (set by torchrun) must be a positive integer, "
                        f"got {text!r}")
        return
    batch = cfg.train.batch_size
    if world_size > 1 and batch % world_size and problems.usable("train.batch_size"):
        problems.report("train.batch_size", f"the global batch {batch} does not split evenly across WORLD_SIZE = "
                        f"{world_size} processes; use a multiple of {world_size}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- resuming


def resume_differences(saved: Config, current: Config) -> list[str]:
    """The sorted dotted keys (objective keywords as loss.<keyword>, loss.name included) whose values
    differ between a checkpointed run's config and the one resuming it, RESUMABLE_KEYS left out:
    a resume is sound only when this is empty."""
    before, after = _dotted_values(saved), _dotted_values(current)
    absent = object()  # a keyword only one of two objectives takes
    return sorted(key for key in before.keys() | after.keys()
                  if key not in RESUMABLE_KEYS and before.get(key, absent) != after.get(key, absent))


def _dotted_values(cfg: Config) -> dict[str, Any]:
    values: dict[str, Any] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            else:
                values[prefix + key] = value

    walk(config_to_dict(cfg), "")
    return values


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
    write_text_atomically(path, dumps_config(cfg))
