"""The objectives as ``nn.Module``s: ``__init__`` takes (and validates, eagerly) the keywords of the
matching function in functional.py, with the same defaults; ``forward(z1, z2)`` returns the loss.

They hold no tensors (MIBoundLoss, in mi_bounds.py, holds its critic), so nothing is checkpointed.
"""

from __future__ import annotations

import torch
from torch import nn

from fmicl_engine.loss import functional
from fmicl_engine.loss.validation import (BACKENDS, align_uniform_hyperparameters, check_bool, check_choice,
                                          emmi_hyperparameters, fmicl_hyperparameters, infonce_hyperparameters,
                                          rpc_hyperparameters)


def _dispatch_options(backend, gather_distributed) -> dict:
    return dict(backend=check_choice("backend", backend, BACKENDS),
                gather_distributed=check_bool("gather_distributed", gather_distributed))


class _Objective(nn.Module):
    """Holds validated keywords in ``self.hparams`` and calls ``loss_fn(z1, z2, **hparams)``."""

    loss_fn = None

    def __init__(self, hparams: dict):
        super().__init__()
        self.hparams = hparams

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(z1, z2, **self.hparams)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())


class FMICLLoss(_Objective):
    loss_fn = staticmethod(functional.fmicl_loss)

    def __init__(self, divergence: str = "kl", similarity: str = "gaussian", *, sigma: float = 0.5, tau: float = 0.5,
                 mu: float = 1.0, alpha: float = 1.0, tsallis_alpha: float = 1.5, normalize: bool = True,
                 backend: str = "auto", gather_distributed: bool = False):
        super().__init__(fmicl_hyperparameters(divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize)
                         | _dispatch_options(backend, gather_distributed))


class InfoNCELoss(_Objective):
    loss_fn = staticmethod(functional.infonce_loss)

    def __init__(self, *, tau: float = 0.5, normalize: bool = True, backend: str = "auto",
                 gather_distributed: bool = False):
        super().__init__(infonce_hyperparameters(tau, normalize) | _dispatch_options(backend, gather_distributed))


class AlignUniformLoss(_Objective):
    loss_fn = staticmethod(functional.align_uniform_loss)

    def __init__(self, *, align_alpha: float = 2.0, t: float = 2.0, lambda_uniform: float = 1.0,
                 backend: str = "auto", gather_distributed: bool = False):
        super().__init__(align_uniform_hyperparameters(align_alpha, t, lambda_uniform)
                         | _dispatch_options(backend, gather_distributed))


class RPCLoss(_Objective):
    loss_fn = staticmethod(functional.rpc_loss)

    def __init__(self, *, tau: float = 0.5, alpha: float = 0.0, beta: float = 0.001, gamma: float = 1.0,
                 normalize: bool = True):
        super().__init__(rpc_hyperparameters(tau, alpha, beta, gamma, normalize))


class EMMILoss(_Objective):
    loss_fn = staticmethod(functional.emmi_loss)

    def __init__(self, *, eps: float = 1e-4):
        super().__init__(emmi_hyperparameters(eps))
