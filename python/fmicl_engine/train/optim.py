"""Optimisers: AdamW, SGD and LARS, over parameter groups that keep biases and norm scales out of
weight decay (and out of LARS's trust ratio), as SimCLR and BYOL do."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fmicl_engine.config.schema import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You, Gitman, Ginsburg 2017).

    Per parameter tensor w with gradient g:  u = g + weight_decay * w;  if the group adapts,
    u <- u * trust_coefficient * ||w|| / ||u||  (unchanged where either norm is 0);
    v <- momentum * v + u;  w <- w - lr * v.  A group with ``lars_adapt=False`` is plain SGD.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if group["weight_decay"] != 0:
                    update = update.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["trust_coefficient"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])
        return loss


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """[decayed and adapted, then (if excluded) biases and norm parameters with neither].

    Biases and norm scales/shifts are the 1-D parameters of these networks."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    regular = [p for p in params if p.ndim > 1 or not exclude_bias_and_norm]
    exempt = [p for p in params if p.ndim <= 1 and exclude_bias_and_norm]
    groups = [{"params": regular, "weight_decay": weight_decay, "lars_adapt": True}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def build_optimizer(cfg: OptimConfig, modules: Iterable[nn.Module]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over every trainable parameter of ``modules`` (the model and the
    objective, whose critics have parameters). The lr is set per step by the schedule."""
    groups = parameter_groups(modules, cfg.weight_decay, cfg.exclude_bias_and_norm)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    raise ValueError(f"unknown optimiser {cfg.name!r}")
