"""The public loss functions: validate, pick a backend, compute, refuse a non-finite result.

Every function returns a 0-dim tensor to minimise (minus the objective of LOSSES.md). The loss is
in float32 for float16/bfloat16 embeddings and in the embeddings' dtype otherwise (validation
``compute_dtype``); gradients reach the embeddings in their own dtype.

Backends of the pairwise objectives (fmicl, infonce, align_uniform), ``backend=``:
  "reference"  pure PyTorch (reference.py), any device and dtype;
  "fused"      ``fmicl_engine.loss.fused.pairwise_loss`` (C++/CUDA, memory-lean); a
               LossArgumentError where this build has no kernels for the device (a CUDA tensor
               in a build without FMICL_CUDA);
  "auto"       fused when ``fused.supports(...)`` says it handles these inputs, else reference:
               a device without kernels warns once (RuntimeWarning) before taking the reference.
``gather_distributed=True`` (negatives from every rank) always runs the fused backend.

Checks, each once per call: the arguments (host values, free); the embeddings' layout (shape,
dtype, device: free); finite embeddings, a finite loss and, on the fused backend, a finite
gradient. The last three read a device value: immediate by default (a host-device sync each), or,
inside ``validation.DeferredFiniteChecks``, recorded on the device and raised by its ``check()``
(the training engine's choice: no sync between logging steps). Under gather_distributed the ranks
agree on them (validation.raise_if).
"""

from __future__ import annotations

import warnings

import torch

from fmicl_engine.loss import reference
from fmicl_engine.loss.validation import (BACKENDS, align_uniform_hyperparameters, check_bool, check_choice,
                                          check_finite_loss, check_pair, emmi_hyperparameters,
                                          fmicl_hyperparameters, infonce_hyperparameters, rpc_hyperparameters)

_REFERENCE = {"fmicl": reference.fmicl, "infonce": reference.infonce, "align_uniform": reference.align_uniform}
_WARNED_DEVICE_TYPES: set[str] = set()  # "auto" took the reference for lack of kernels: warned once per type


def _runs_fused(objective: str, z1, z2, hyperparameters: dict, backend: str, gather_distributed: bool) -> bool:
    if backend == "reference" and not gather_distributed:
        return False
    from fmicl_engine.loss import fused  # imported here: the reference path must not need the build

    if gather_distributed or backend == "fused" or fused.supports(objective, z1, z2, **hyperparameters):
        return True
    missing = fused.missing_kernels(z1.device)
    if missing is not None and z1.device.type not in _WARNED_DEVICE_TYPES:
        _WARNED_DEVICE_TYPES.add(z1.device.type)
        warnings.warn(f"backend='auto' computes {objective} on {z1.device.type} tensors with the reference backend, "
                      f"which stores the (2N x 2N) pairwise matrices: {missing} (backend='reference' silences this)",
                      RuntimeWarning, stacklevel=4)
    return False


def _pairwise(objective: str, z1, z2, hyperparameters: dict, backend, gather_distributed, *,
              context: dict) -> torch.Tensor:
    """The checked loss of a pairwise objective; ``context`` describes a non-finite one."""
    backend = check_choice("backend", backend, BACKENDS)
    gather_distributed = check_bool("gather_distributed", gather_distributed)
    check_pair(z1, z2)
    if _runs_fused(objective, z1, z2, hyperparameters, backend, gather_distributed):
        from fmicl_engine.loss import fused

        loss = fused.pairwise_loss(objective, z1, z2, gather_distributed=gather_distributed, **hyperparameters)
    else:
        loss = _REFERENCE[objective](z1, z2, **hyperparameters)
    group = None
    if gather_distributed:  # each rank holds a share of the loss: the ranks agree on the verdict
        import torch.distributed as dist

        group = dist.group.WORLD
    return check_finite_loss(loss, objective, hyperparameters=hyperparameters, group=group, **context)


def fmicl_loss(z1: torch.Tensor, z2: torch.Tensor, divergence: str = "kl", similarity: str = "gaussian", *,
               sigma: float = 0.5, tau: float = 0.5, mu: float = 1.0, alpha: float = 1.0, tsallis_alpha: float = 1.5,
               normalize: bool = True, backend: str = "auto", gather_distributed: bool = False) -> torch.Tensor:
    """-I_f: f-MICL with an f-divergence (kl, js, pearson, sh, tsallis, vlc) and a similarity
    (gaussian: r = mu exp(-D/(2 sigma^2)); cosine: r = mu exp(C/tau)); alpha weighs the negatives.

    ``normalize`` L2-normalises the rows before D is formed; the cosine C is scale-free, so it does
    not change the cosine similarity."""
    hp = fmicl_hyperparameters(divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize)
    scale = "sigma" if hp["similarity"] == "gaussian" else "tau"
    context = dict(divergence=hp["divergence"], similarity=hp["similarity"], **{scale: hp[scale]})
    return _pairwise("fmicl", z1, z2, hp, backend, gather_distributed, context=context)


def infonce_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5, normalize: bool = True,
                 backend: str = "auto", gather_distributed: bool = False) -> torch.Tensor:
    """NT-Xent: cross-entropy of the positive among the 2N-1 other rows, cosine logits C/tau.

    The cosine normalises by definition, so ``normalize`` does not change the value; it is
    accepted so every pairwise objective takes the same keywords."""
    hp = infonce_hyperparameters(tau, normalize)
    return _pairwise("infonce", z1, z2, hp, backend, gather_distributed, context=dict(tau=hp["tau"]))


def align_uniform_loss(z1: torch.Tensor, z2: torch.Tensor, *, align_alpha: float = 2.0, t: float = 2.0,
                       lambda_uniform: float = 1.0, backend: str = "auto",
                       gather_distributed: bool = False) -> torch.Tensor:
    """Wang & Isola: L_align + lambda_uniform L_uniform on L2-normalised embeddings."""
    hp = align_uniform_hyperparameters(align_alpha, t, lambda_uniform)
    return _pairwise("align_uniform", z1, z2, hp, backend, gather_distributed, context=hp)


def rpc_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5, alpha: float = 0.0, beta: float = 0.001,
             gamma: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """-J of relative predictive coding with scores s = Z_a.Z_b / tau (reference backend only)."""
    hp = rpc_hyperparameters(tau, alpha, beta, gamma, normalize)
    check_pair(z1, z2)
    return check_finite_loss(reference.rpc(z1, z2, **hp), "rpc", hyperparameters=hp, tau=hp["tau"])


def emmi_loss(z1: torch.Tensor, z2: torch.Tensor, *, eps: float = 1e-4) -> torch.Tensor:
    """-I of EMMI: Gaussian MI from the batch covariances (Cholesky log-determinants)."""
    hp = emmi_hyperparameters(eps)
    check_pair(z1, z2)
    return check_finite_loss(reference.emmi(z1, z2, **hp), "emmi", hyperparameters=hp, eps=hp["eps"])
