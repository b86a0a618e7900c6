"""Weight export: a run's checkpoint -> the encoder alone, as a plain state_dict that other code loads.

The file is ``torch.save`` of a ``dict[str, Tensor]`` (CPU, contiguous), nothing else: no projector,
no optimiser, no config, no pickled classes, so ``torch.load(path, weights_only=True)`` reads it.

Formats:

``torchvision`` (resnet18, resnet50, resnet18_cifar, resnet50_cifar)
    The keys are exactly those of ``torchvision.models.<resnet>()`` without ``fc.*`` (checked at
    export), so::

        model = torchvision.models.resnet50()
        missing, unexpected = model.load_state_dict(torch.load(path), strict=False)
        # missing == ["fc.weight", "fc.bias"], unexpected == []
        model.fc = torch.nn.Identity()  # -> the engine's encoder features (2048-d for resnet50)

    The ``_cifar`` variants were trained with SimCLR's small-image stem, so before loading set::

        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()

    ``torchvision_model(arch)`` builds exactly that (also for an encoder pretrained on 1-channel
    images, whose conv1 has 1 input channel: ``torchvision_model(arch, in_channels=1)``).

``engine`` (every arch, the only one for digits_cnn)
    The state_dict of the engine's encoder, ``build_model(arch, ...).encoder``, which
    ``engine_encoder(arch, in_channels, cnn_width)`` builds. For the ResNets it holds the same
    keys and tensors as the torchvision format (the engine's encoder *is* torchvision's ResNet
    with ``fc = Identity``), without the check against torchvision. digits_cnn is the engine's own
    module, so it has no torchvision format.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fmicl_engine.config.schema import ModelConfig
from fmicl_engine.models.encoders import ARCHITECTURES
from fmicl_engine.atomic_files import write_atomically
from fmicl_engine.train.checkpoint import CheckpointStore, file_sha256, load_checkpoint

FORMATS = ("torchvision", "engine")

# engine arch -> (torchvision constructor, SimCLR's small-image stem)
TORCHVISION_ARCHS: dict[str, tuple[str, bool]] = {
    "resnet18": ("resnet18", False),
    "resnet50": ("resnet50", False),
    "resnet18_cifar": ("resnet18", True),
    "resnet50_cifar": ("resnet50", True),
}

# Wrappers whose names may prefix a state_dict's keys: DistributedDataParallel ("module.") and
# torch.compile's OptimizedModule ("_orig_mod."). The engine's checkpoints have neither (it compiles
# the encoder in place and wraps only the objective in DDP), but a hand-made checkpoint may.
_WRAPPER_SEGMENTS = ("module", "_orig_mod")


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked (the message says why and what to do instead)."""


@dataclass(frozen=True)
class ExportedEncoder:
    """What ``export_encoder`` wrote."""

    path: Path
    checkpoint: Path
    arch: str
    format: str
    in_channels: int
    num_tensors: int
    step: int | None  # the checkpoint's training step, when it records one
    cnn_width: int | None = None  # digits_cnn's model.cnn_width (read off its first conv); None for the ResNets

    def how_to_load(self) -> str:
        """A short Python snippet that loads the file (for the CLI to print)."""
        if self.format == "engine":
            width = f", cnn_width={self.cnn_width}" if self.cnn_width is not None else ""
            return (f"from fmicl_engine.eval.export import engine_encoder\n"
                    f"encoder = engine_encoder({self.arch!r}, in_channels={self.in_channels}{width})\n"
                    f"encoder.load_state_dict(torch.load({str(self.path)!r}, weights_only=True))")
        base, cifar_stem = TORCHVISION_ARCHS[self.arch]
        if not cifar_stem and self.in_channels == 3:
            build = f"model = torchvision.models.{base}()"
        else:
            build = (f"model = torchvision_model({self.arch!r}"
                     + (f", in_channels={self.in_channels}" if self.in_channels != 3 else "") + ")"
                     + "  # from fmicl_engine.eval.export: " + ("3x3/1 conv1, no max-pool" if cifar_stem
                                                              else f"{self.in_channels}-channel conv1"))
        return (f"{build}\n"
                f"model.load_state_dict(torch.load({str(self.path)!r}, weights_only=True), strict=False)"
                f"  # missing: fc.weight, fc.bias\n"
                f"model.fc = torch.nn.Identity()  # the pretrained features; or a new head to fine-tune")


def torchvision_model(arch: str, in_channels: int = 3, *, num_classes: int = 1000) -> nn.Module:
    """``torchvision.models.<resnet>(weights=None, num_classes=...)`` shaped to take the torchvision
    export of an engine ``arch``: for the ``_cifar`` variants ``conv1`` is a 3x3 stride-1 conv and
    ``maxpool`` is Identity; with ``in_channels != 3`` conv1 takes that many channels. ``fc`` is
    torchvision's (left untrained by loading: replace it, or set it to Identity for features)."""
    if arch not in TORCHVISION_ARCHS:
        raise ExportError(f"arch {arch!r} has no torchvision model; one of {', '.join(TORCHVISION_ARCHS)}")
    base, cifar_stem = TORCHVISION_ARCHS[arch]
    model = getattr(torchvision.models, base)(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def engine_encoder(arch: str, in_channels: int = 3, cnn_width: int = 32) -> nn.Module:
    """The engine's encoder for ``arch`` (what the engine format's state_dict loads into, strictly);
    its output is the feature vector the probes evaluate (``.out_dim`` wide)."""
    if arch not in ARCHITECTURES:
        raise ExportError(f"unknown arch {arch!r}; one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels, cnn_width)


def encoder_state_dict(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SSLModel state_dict (``encoder.*``, ``projector.*``) -> the encoder's own state_dict:
    the ``encoder.`` entries with that prefix (and any DDP / torch.compile wrapper names) removed,
    as CPU tensors in the standard contiguous layout (a channels_last run's weights included)."""
    encoder: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        parts = [p for p in key.split(".") if p not in _WRAPPER_SEGMENTS]
        if len(parts) < 2 or parts[0] != "encoder":
            continue
        name = ".".join(parts[1:])
        if name in encoder:
            raise ExportError(f"two checkpoint entries give the encoder's {name!r}")
        encoder[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    if not encoder:
        raise ExportError("the checkpoint's model has no encoder.* entries (is it an fmicl-engine checkpoint?)")
    return encoder


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file; or a run directory / its ``checkpoints`` directory -> the newest valid
    checkpoint in it. A file with a ``.sha256`` beside it must match that digest."""
    path = Path(path)
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        warnings: list[str] = []
        found = CheckpointStore(directory, keep=1).newest_valid(warnings.append)
        if found is None:
            detail = ("; " + "; ".join(warnings)) if warnings else ""
            raise ExportError(f"{path}: no valid checkpoint (step_*.pt with a matching .sha256) in {directory}{detail}")
        for warning in warnings:
            print(warning, file=sys.stderr)
        return found
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file or run directory")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file() and sidecar.read_text().strip() != file_sha256(path):
        raise ExportError(f"{path}: its SHA-256 does not match {sidecar.name} (truncated or damaged)")
    return path


def checkpoint_arch(state: Mapping) -> str:
    """The ``model.arch`` of the config a checkpoint records (its resolved TOML)."""
    text = state.get("config")
    if not isinstance(text, str):
        raise ExportError("the checkpoint records no config; pass arch= (one of "
                          f"{', '.join(ARCHITECTURES)})")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ExportError(f"the checkpoint's config is not valid TOML: {err}") from None
    return raw.get("model", {}).get("arch", ModelConfig().arch)


def _input_channels(arch: str, encoder: Mapping[str, torch.Tensor]) -> int:
    first = "blocks.0.0.weight" if arch == "digits_cnn" else "conv1.weight"
    if first not in encoder or encoder[first].dim() != 4:
        raise ExportError(f"the checkpoint's encoder has no {first!r} conv weight: is it really a {arch}?")
    return int(encoder[first].shape[1])


def _check_against_torchvision(arch: str, in_channels: int, encoder: Mapping[str, torch.Tensor]) -> None:
    """Keys and shapes exactly those of torchvision's model without fc.* (built on the meta device:
    no memory, no initialisation)."""
    with torch.device("meta"):
        reference = torchvision_model(arch, in_channels).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.startswith("fc.")}
    problems = [f"missing {k}" for k in expected if k not in encoder]
    problems += [f"unexpected {k}" for k in encoder if k not in expected]
    problems += [f"{k}: shape {tuple(encoder[k].shape)}, torchvision's {shape}"
                 for k, shape in expected.items() if k in encoder and tuple(encoder[k].shape) != shape]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ExportError(f"the encoder does not match torchvision's {TORCHVISION_ARCHS[arch][0]}: {shown}")


def export_encoder(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike,
                   format: str = "torchvision", *, arch: str | None = None) -> ExportedEncoder:
    """Write the encoder of ``checkpoint_path`` (a checkpoint file, or a run directory: its newest
    valid checkpoint) to ``out_path`` as a plain state_dict in ``format`` (see the module's text).

    ``arch`` defaults to the checkpoint's ``model.arch``. The file is written atomically (a
    temporary name, fsync, rename). Raises ExportError when the export is impossible, e.g. the
    torchvision format of digits_cnn."""
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    source = resolve_checkpoint(checkpoint_path)
    state = load_checkpoint(source)
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        raise ExportError(f"{source}: not an fmicl-engine checkpoint (no 'model' state_dict)")
    arch = arch or checkpoint_arch(state)
    if arch not in ARCHITECTURES:
        raise ExportError(f"unknown arch {arch!r}; one of {', '.join(ARCHITECTURES)}")
    if format == "torchvision" and arch not in TORCHVISION_ARCHS:
        raise ExportError(f"arch {arch!r} is the engine's own module and has no torchvision counterpart: "
                          "export it with format 'engine' (fmicl_engine.eval.export.engine_encoder loads it)")
    encoder = encoder_state_dict(state["model"])
    in_channels = _input_channels(arch, encoder)
    if format == "torchvision":
        _check_against_torchvision(arch, in_channels, encoder)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda f: torch.save(encoder, f))
    step = state.get("step")
    return ExportedEncoder(path=out, checkpoint=source, arch=arch, format=format, in_channels=in_channels,
                           num_tensors=len(encoder), step=int(step) if isinstance(step, int) else None,
                           cnn_width=int(encoder["blocks.0.0.weight"].shape[0]) if arch == "digits_cnn" else None)


__all__ = ["FORMATS", "TORCHVISION_ARCHS", "ExportError", "ExportedEncoder", "checkpoint_arch", "encoder_state_dict",
           "engine_encoder", "export_encoder", "resolve_checkpoint", "torchvision_model"]
