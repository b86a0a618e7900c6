"""Objectives by name, for configs: ``build_loss("fmicl", divergence="js", sigma=0.3)``.

What each objective accepts is read once, from its module's ``__init__`` signature:
``loss_signature(name)`` gives every keyword with its annotation and default, and is the one
introspection the package does (the config loader reads types, the engine the keywords it
supplies itself, ``dim`` and ``gather_distributed``). ``loss_keywords(name)`` is its
{keyword: default} view, with ``REQUIRED`` for a keyword without a default (``mi_bound``'s bound,
critic, dim).
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, NamedTuple

from torch import nn

from fmicl_engine.loss.mi_bounds import MIBoundLoss
from fmicl_engine.loss.modules import AlignUniformLoss, EMMILoss, FMICLLoss, InfoNCELoss, RPCLoss
from fmicl_engine.loss.validation import LossArgumentError, did_you_mean

LOSS_REGISTRY: dict[str, type[nn.Module]] = {
    "fmicl": FMICLLoss,
    "infonce": InfoNCELoss,
    "align_uniform": AlignUniformLoss,
    "rpc": RPCLoss,
    "emmi": EMMILoss,
    "mi_bound": MIBoundLoss,
}

REQUIRED = inspect.Parameter.empty


class LossKeyword(NamedTuple):
    """One keyword argument of an objective: its type annotation (resolved; None when it has none)
    and its default (``REQUIRED`` when it has none)."""

    annotation: Any
    default: Any


def _loss_class(name: str) -> type[nn.Module]:
    if name not in LOSS_REGISTRY:
        raise LossArgumentError(
            "name", f"unknown loss {name!r}; known: {', '.join(LOSS_REGISTRY)}{did_you_mean(name, LOSS_REGISTRY)}"
        )
    return LOSS_REGISTRY[name]


def loss_signature(name: str) -> types.MappingProxyType[str, LossKeyword]:
    """{keyword: LossKeyword(annotation, default)} of ``build_loss(name, ...)``, in signature order."""
    return _signature(_loss_class(name))


@functools.cache
def _signature(cls: type[nn.Module]) -> types.MappingProxyType[str, LossKeyword]:
    keywords = {}
    for p in list(inspect.signature(cls.__init__, eval_str=True).parameters.values())[1:]:  # drop self
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = None if p.annotation is p.empty else p.annotation
        keywords[p.name] = LossKeyword(annotation, p.default)
    return types.MappingProxyType(keywords)


def loss_keywords(name: str) -> dict[str, object]:
    """{keyword: default} accepted by ``build_loss(name, ...)``; ``REQUIRED`` marks no default."""
    return {key: keyword.default for key, keyword in loss_signature(name).items()}


def build_loss(name: str, *positional, **kwargs) -> nn.Module:
    """The loss module registered as ``name``, built from keyword arguments only."""
    accepted = loss_signature(name)
    if positional:
        raise LossArgumentError(next(iter(accepted), "name"), f"build_loss takes {name}'s arguments by keyword, e.g. "
                                f"build_loss({name!r}, {next(iter(accepted), 'x')}=...); got positional "
                                f"{', '.join(map(repr, positional))}")
    for key in kwargs:
        if key not in accepted:
            raise LossArgumentError(key, f"{name} loss takes no argument {key!r}; it takes {', '.join(accepted)}"
                                         f"{did_you_mean(key, accepted)}")
    missing = [key for key, keyword in accepted.items() if keyword.default is REQUIRED and key not in kwargs]
    if missing:
        raise LossArgumentError(missing[0], f"{name} loss needs {', '.join(missing)}")
    return LOSS_REGISTRY[name](**kwargs)
