"""Objectives by name, for configs: ``build_loss("fmicl", divergence="js", sigma=0.3)``.

A config system learns what each objective accepts from ``loss_keywords(name)``: the keyword
arguments of the module's ``__init__`` (its ``inspect.signature``) mapped to their defaults, with
``REQUIRED`` for those without one (``mi_bound``'s bound, critic, dim).
"""

from __future__ import annotations

import inspect

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


def _loss_class(name: str) -> type[nn.Module]:
    if name not in LOSS_REGISTRY:
        raise LossArgumentError(
            "name", f"unknown loss {name!r}; known: {', '.join(LOSS_REGISTRY)}{did_you_mean(name, list(LOSS_REGISTRY))}"
        )
    return LOSS_REGISTRY[name]


def loss_keywords(name: str) -> dict[str, object]:
    """{keyword: default} accepted by ``build_loss(name, ...)``; ``REQUIRED`` marks no default."""
    parameters = list(inspect.signature(_loss_class(name).__init__).parameters.values())[1:]  # drop self
    return {p.name: p.default for p in parameters}


def build_loss(name: str, **kwargs) -> nn.Module:
    """The loss module registered as ``name``, built from keyword arguments only."""
    accepted = loss_keywords(name)
    for key in kwargs:
        if key not in accepted:
            raise LossArgumentError(key, f"{name} loss takes no argument {key!r}; it takes {', '.join(accepted)}"
                                         f"{did_you_mean(key, list(accepted))}")
    missing = [key for key, default in accepted.items() if default is REQUIRED and key not in kwargs]
    if missing:
        raise LossArgumentError(missing[0], f"{name} loss needs {', '.join(missing)}")
    return LOSS_REGISTRY[name](**kwargs)
