"""The fused backend of the pairwise objectives: the C++/CUDA ops of ops.py composed into losses.

The ops compute each loss and its gradient with respect to the embeddings in one tiled pass,
without ever storing the (2N x 2N) pairwise matrix; ops.py makes them differentiable.

Called by ``functional._pairwise`` (``backend="auto" | "fused"``, ``gather_distributed``) as
``supports(objective, z1, z2, **hp)``, ``missing_kernels(device)`` and
``pairwise_loss(objective, z1, z2, **hp)``. Like the reference backend's functions,
``pairwise_loss`` takes validated keywords (validation.py's bundles) and valid embeddings: the
public functions of functional.py check the arguments, the embeddings and the loss, once per call,
whichever backend runs. What belongs to this backend is checked here: that this build has
kernels for the embeddings' device (a LossArgumentError naming FMICL_CUDA otherwise), and that the
gradient the op computed is finite (validation.raise_if: at once by default, or deferred inside
DeferredFiniteChecks).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fmicl_engine import _ext
from fmicl_engine.loss import ops
from fmicl_engine.loss.validation import (Failure, LossArgumentError, NonFiniteLossError, compute_dtype,
                                          overflow_diagnosis, raise_if)

OBJECTIVES = ("fmicl", "infonce", "align_uniform")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The uniformity op sums exp(-t D) with no shift (D <= 4 on unit rows): exact while exp(-4t) is a
# normal float32, i.e. t up to ~21; above, the reference (a log-sum-exp) is used instead.
MAX_UNIFORMITY_T = 20.0


def missing_kernels(device: torch.device) -> str | None:
    """Why this build cannot run the fused ops on ``device``, with how to fix it; None when it can."""
    if ops.has_kernel(device.type):
        return None
    if device.type == "cuda":
        return ("fmicl_engine._C was built without its CUDA kernels (FMICL_CUDA=OFF, or AUTO without a usable "
                f"CUDA toolkit); rebuild it with them: FMICL_CUDA=ON {_ext.BUILD_COMMAND}")
    return f"the fused ops have no kernels for {device.type} tensors (only CPU and CUDA)"


def supports(objective: str, z1: torch.Tensor, z2: torch.Tensor, **hp) -> bool:
    """Whether the fused ops compute this objective for these inputs (else use the reference):
    a device with a kernel of this build, a floating dtype, N >= 2 pairs, and for align_uniform
    t <= MAX_UNIFORMITY_T."""
    if objective not in OBJECTIVES or not isinstance(z1, torch.Tensor) or not isinstance(z2, torch.Tensor):
        return False
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2 or z1.dtype not in FUSED_DTYPES:
        return False
    if objective == "align_uniform" and float(hp.get("t", 2.0)) > MAX_UNIFORMITY_T:
        return False
    return ops.has_kernel(z1.device.type)


def check_finite_gradient(grad_z: torch.Tensor, objective: str, scale: str | None, group=None, *,
                          hyperparameters: dict | None = None) -> None:
    """The value can be finite while a derivative overflows (validation.raise_if: one sync, or
    deferred; the op already paid O(N² d)). With a process group, grad_z is this rank's share and
    the ranks agree (immediate mode: one all-reduce of one element) so that all raise or none: a
    rank raising alone would leave the others waiting in the backward's reduce-scatter. The error
    names ``scale``, or, given ``hyperparameters``, the one the overflow is owed to (as
    validation.check_finite_loss). Skipped while torch.compile traces: a data-dependent branch
    would break the graph."""
    if torch.compiler.is_compiling():
        return
    failure = Failure(NonFiniteLossError, scale,
                      f"{objective}: the gradient of the fused loss overflows {grad_z.dtype} for these inputs; "
                      f"{{advice}}or pass float64 embeddings",
                      overflow_diagnosis(objective, hyperparameters, compute_dtype(grad_z.dtype)))
    raise_if((~torch.isfinite(grad_z)).any(), failure, group=group)


def pairwise_loss(objective: str, z1: torch.Tensor, z2: torch.Tensor, *, gather_distributed: bool = False,
                  tile: int = 0, **hp) -> torch.Tensor:
    """The loss of ``objective`` ("fmicl", "infonce" or "align_uniform") on the views z1, z2 (N, d).

    hp: the objective's validated keywords (validation.py). tile: rows per tile of the pairwise
    matrix (0 = the op's default; only speed and memory depend on it). gather_distributed=True
    scores this rank's anchors against every rank's rows (fmicl_engine.loss.distributed). Returns
    a 0-dim tensor in compute_dtype(z1.dtype), unchecked (functional.py checks it); raises
    NonFiniteLossError when the gradient overflows, LossArgumentError without kernels for the device.
    """
    missing = missing_kernels(z1.device)
    if missing is not None:
        raise LossArgumentError("backend", f"the fused backend (backend='fused', or gather_distributed=True) "
                                           f"cannot run on {z1.device}: {missing}")
    if objective not in OBJECTIVES:
        raise LossArgumentError("objective", f"the fused backend has no objective {objective!r}; "
                                             f"it computes {', '.join(OBJECTIVES)}")
    check_gradient = functools.partial(check_finite_gradient, objective=objective, scale=None, hyperparameters=hp)
    if objective == "align_uniform":
        return _align_uniform(z1, z2, gather_distributed=gather_distributed, tile=tile, check_gradient=check_gradient,
                              **hp)
    if objective == "fmicl":
        op = functools.partial(ops.fmicl_fwd_bwd, **hp, tile=tile)
    else:
        op = functools.partial(ops.infonce_fwd_bwd, tau=hp["tau"], tile=tile)
    if gather_distributed:
        from fmicl_engine.loss import distributed  # imported here: only distributed runs need it

        loss = distributed.gathered_loss(op, z1, z2, check_gradient=check_gradient)
    else:
        loss = _whole_batch(op, torch.cat([z1, z2]), check_gradient)  # [z1; z2], 2N x d
    return loss.to(compute_dtype(z1.dtype))


def _whole_batch(op, z: torch.Tensor, check_gradient) -> torch.Tensor:
    """op's value over every anchor of z; its gradient, when computed, is checked."""
    value, grad_z = op(z)
    if grad_z.shape[0]:  # else needs_grad was False: no gradient computed (a shape: no host read)
        check_gradient(grad_z)
    return value


def _align_uniform(z1, z2, *, align_alpha: float, t: float, lambda_uniform: float, gather_distributed: bool,
                   tile: int, check_gradient) -> torch.Tensor:
    """L_align (O(N d), plain autograd) + lambda_uniform L_uniform (the fused op)."""
    dtype = compute_dtype(z1.dtype)
    u1, u2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
    # Under gather_distributed each rank's mean over its own pairs is W times its share of the
    # global mean: the convention of fmicl_engine.loss.distributed for additive terms.
    # the norm, not the squared norm to the power align_alpha/2: finite gradients for identical
    # views with align_alpha < 2, as in the reference
    align = torch.linalg.vector_norm(u1 - u2, dim=1).pow(align_alpha).mean()
    if lambda_uniform == 0:
        return align
    op = functools.partial(ops.uniformity_fwd_bwd, t=t, tile=tile)
    if gather_distributed:
        from fmicl_engine.loss import distributed

        uniform = distributed.gathered_uniformity(op, z1, z2, check_gradient=check_gradient)
    else:
        # in the compute dtype: dS/dz of the unnormalised pair sum overflows float16 for large N
        sum_exp = _whole_batch(op, torch.cat([z1, z2]).to(dtype), check_gradient)  # (2,) float64
        uniform = ops.uniformity_from_sums(sum_exp, z1.shape[0])
    return align + lambda_uniform * uniform.to(dtype)


__all__ = ["supports", "missing_kernels", "pairwise_loss", "check_finite_gradient", "OBJECTIVES",
           "MAX_UNIFORMITY_T"]
