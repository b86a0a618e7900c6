"""The public loss functions: validate, pick a backend, compute, refuse a non-finite result.

Every function returns a 0-dim tensor to minimise (minus the objective of LOSSES.md). The loss is
in float32 for float16/bfloat16 embeddings and in the embeddings' dtype otherwise (validation
``compute_dtype``); gradients reach the embeddings in their own dtype.

Backends of the pairwise objectives (fmicl, infonce, align_uniform), ``backend=``:
  "reference"  pure PyTorch (reference.py), any device and dtype;
  "fused"      ``fmicl_engine.loss.fused.pairwise_loss`` (C++/CUDA, memory-lean);
  "auto"       fused when ``fused.supports(...)`` says it handles these inputs, else reference.
``gather_distributed=True`` (negatives from every rank) always runs the fused backend.
"""

from __future__ import annotations

import torch

from fmicl_engine.loss import reference
from fmicl_engine.loss.validation import (BACKENDS, align_uniform_hyperparameters, check_bool, check_choice,
                                          check_finite_loss, check_pair, emmi_hyperparameters,
                                          fmicl_hyperparameters, infonce_hyperparameters, rpc_hyperparameters)

_REFERENCE = {"fmicl": reference.fmicl, "infonce": reference.infonce, "align_uniform": reference.align_uniform}


def _pairwise(objective: str, z1, z2, hyperparameters: dict, backend, gather_distributed) -> torch.Tensor:
    backend = check_choice("backend", backend, BACKENDS)
    gather_distributed = check_bool("gather_distributed", gather_distributed)
    check_pair(z1, z2)
    if gather_distributed or backend != "reference":
        from fmicl_engine.loss import fused  # imported here: the reference path must not need the build

        if gather_distributed or backend == "fused" or fused.supports(objective, z1, z2, **hyperparameters):
            return fused.pairwise_loss(objective, z1, z2, gather_distributed=gather_distributed, **hyperparameters)
    return _REFERENCE[objective](z1, z2, **hyperparameters)


def _scale_name(hyperparameters: dict) -> str:
    return "sigma" if hyperparameters["similarity"] == "gaussian" else "tau"


def fmicl_loss(z1: torch.Tensor, z2: torch.Tensor, divergence: str = "kl", similarity: str = "gaussian", *,
               sigma: float = 0.5, tau: float = 0.5, mu: float = 1.0, alpha: float = 1.0, tsallis_alpha: float = 1.5,
               normalize: bool = True, backend: str = "auto", gather_distributed: bool = False) -> torch.Tensor:
    """-I_f: f-MICL with an f-divergence (kl, js, pearson, sh, tsallis, vlc) and a similarity
    (gaussian: r = mu exp(-D/(2 sigma^2)); cosine: r = mu exp(C/tau)); alpha weighs the negatives.

    ``normalize`` L2-normalises the rows before D is formed; the cosine C is scale-free, so it does
    not change the cosine similarity."""
    hp = fmicl_hyperparameters(divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize)
    loss = _pairwise("fmicl", z1, z2, hp, backend, gather_distributed)
    scale = _scale_name(hp)
    return check_finite_loss(loss, "fmicl", divergence=hp["divergence"], similarity=hp["similarity"],
                             **{scale: hp[scale]}, scale=scale)


def infonce_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5, normalize: bool = True,
                 backend: str = "auto", gather_distributed: bool = False) -> torch.Tensor:
    """NT-Xent: cross-entropy of the positive among the 2N-1 other rows, cosine logits C/tau.

    The cosine normalises by definition, so ``normalize`` does not change the value; it is
    accepted so every pairwise objective takes the same keywords."""
    hp = infonce_hyperparameters(tau, normalize)
    loss = _pairwise("infonce", z1, z2, hp, backend, gather_distributed)
    return check_finite_loss(loss, "infonce", tau=hp["tau"], scale="tau")


def align_uniform_loss(z1: torch.Tensor, z2: torch.Tensor, *, align_alpha: float = 2.0, t: float = 2.0,
                       lambda_uniform: float = 1.0, backend: str = "auto",
                       gather_distributed: bool = False) -> torch.Tensor:
    """Wang & Isola: L_align + lambda_uniform L_uniform on L2-normalised embeddings."""
    hp = align_uniform_hyperparameters(align_alpha, t, lambda_uniform)
    loss = _pairwise("align_uniform", z1, z2, hp, backend, gather_distributed)
    return check_finite_loss(loss, "align_uniform", **hp)


def rpc_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5, alpha: float = 0.0, beta: float = 0.001,
             gamma: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """-J of relative predictive coding with scores s = Z_a.Z_b / tau (reference backend only)."""
    hp = rpc_hyperparameters(tau, alpha, beta, gamma, normalize)
    check_pair(z1, z2)
    return check_finite_loss(reference.rpc(z1, z2, **hp), "rpc", tau=hp["tau"], scale="tau")


def emmi_loss(z1: torch.Tensor, z2: torch.Tensor, *, eps: float = 1e-4) -> torch.Tensor:
    """-I of EMMI: Gaussian MI from the batch covariances (Cholesky log-determinants)."""
    hp = emmi_hyperparameters(eps)
    check_pair(z1, z2)
    return check_finite_loss(reference.emmi(z1, z2, **hp), "emmi", eps=hp["eps"], scale="eps")
