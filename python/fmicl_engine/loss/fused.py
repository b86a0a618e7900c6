"""The fused backend of the pairwise objectives: the C++/CUDA ops ``torch.ops.fmicl.*``.

The ops (declared in cpp/bindings/ops.cpp, where their contract is written down) compute the loss
and its gradient with respect to the embeddings in one tiled pass, without ever storing the
(2N x 2N) pairwise matrix. Here they become differentiable: an autograd Function runs the op in
``forward``, keeps the gradient it returned (only when an input needs one), and ``backward``
scales it by the incoming gradient. ``register_fake`` gives the ops shapes for torch.compile.

Called by ``functional._pairwise`` (``backend="auto" | "fused"``) as
``supports(objective, z1, z2, **hp)`` and ``pairwise_loss(objective, z1, z2, **hp)``, with the
hyperparameter keywords of validation.py. Inputs are validated again here with the same checks,
so a direct caller gets the same errors as the reference backend.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fmicl_engine import _ext  # noqa: F401  (loads _C, which registers torch.ops.fmicl)
from fmicl_engine.loss.validation import (Failure, LossArgumentError, NonFiniteLossError,
                                          align_uniform_hyperparameters, check_finite_loss, check_pair, compute_dtype,
                                          fmicl_hyperparameters, infonce_hyperparameters, raise_if)

OBJECTIVES = ("fmicl", "infonce", "align_uniform")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The uniformity op sums exp(-t D) with no shift (D <= 4 on unit rows): exact while exp(-4t) is a
# normal float32, i.e. t up to ~21; above, the reference (a log-sum-exp) is used instead.
MAX_UNIFORMITY_T = 20.0

_OP_NAMES = {"fmicl": "fmicl_fwd_bwd", "infonce": "infonce_fwd_bwd", "align_uniform": "uniformity_fwd_bwd"}


# ---------------------------------------------------------------------------------------------
# Shapes for torch.compile / FakeTensor: (loss pieces in float64, gradient like z)
# ---------------------------------------------------------------------------------------------


@torch.library.register_fake("fmicl::fmicl_fwd_bwd")
def _fmicl_fwd_bwd_fake(z, anchors, divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize,
                        tile=0):
    return z.new_empty((), dtype=torch.float64), torch.empty_like(z)


@torch.library.register_fake("fmicl::infonce_fwd_bwd")
def _infonce_fwd_bwd_fake(z, anchors, tau, tile=0):
    return z.new_empty((), dtype=torch.float64), torch.empty_like(z)


@torch.library.register_fake("fmicl::uniformity_fwd_bwd")
def _uniformity_fwd_bwd_fake(z, anchors, t, tile=0):
    return z.new_empty((2,), dtype=torch.float64), torch.empty_like(z)


# ---------------------------------------------------------------------------------------------
# Autograd glue
# ---------------------------------------------------------------------------------------------


def _check_finite_gradient(grad_z: torch.Tensor, objective: str, scale: str | None, group=None) -> None:
    """The value can be finite while a derivative overflows (validation.raise_if: one sync, or
    deferred; the op already paid O(N² d)). With a process group, grad_z is this rank's share and
    the ranks agree (one all-reduce of one element) so that all raise or none: a rank raising alone
    would leave the others waiting in the backward's reduce-scatter. Skipped while torch.compile
    traces: a data-dependent branch would break the graph."""
    if torch.compiler.is_compiling():
        return
    hint = f"increase {scale}, " if scale else ""
    failure = Failure(NonFiniteLossError, scale, f"{objective}: the gradient of the fused loss overflows "
                                                 f"{grad_z.dtype} for these inputs; {hint}or pass float64 embeddings")
    raise_if((~torch.isfinite(grad_z)).any(), failure, group=group)


def _saved_gradient_times(ctx, grad_loss: torch.Tensor) -> torch.Tensor:
    """The backward of the fused Functions: the gradient the op computed in forward, scaled."""
    (grad_z,) = ctx.saved_tensors
    return grad_z * grad_loss.to(grad_z.dtype)


class _FusedAdditiveLoss(torch.autograd.Function):
    """loss = op(z)[0] (all anchors), with d loss/dz = op(z)[1] computed in the same pass."""

    @staticmethod
    def forward(ctx, z, op_name, op_args, objective, scale):
        loss_sum, grad_z = getattr(torch.ops.fmicl, op_name)(z, None, *op_args)
        _check_finite_gradient(grad_z, objective, scale)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(grad_z)
        return loss_sum.to(compute_dtype(z.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return _saved_gradient_times(ctx, grad_loss), None, None, None, None


class _FusedUniformity(torch.autograd.Function):
    """L_uniform = ½ Σ_v log(S_v / (N (N-1) / 2)) from the op's pair sums S_v and dS_v/dz."""

    @staticmethod
    def forward(ctx, z, t, tile):
        sum_exp, grad_z = torch.ops.fmicl.uniformity_fwd_bwd(z, None, t, tile)  # (2,) float64, (2N, d)
        n = z.shape[0] // 2
        pairs = n * (n - 1) / 2
        loss = 0.5 * (torch.log(sum_exp[0] / pairs) + torch.log(sum_exp[1] / pairs))
        if ctx.needs_input_grad[0]:
            # d L / d(rows of view v) = ½ dS_v / S_v
            view_scale = (0.5 / sum_exp).to(grad_z.dtype).repeat_interleave(n)[:, None]
            grad_z = grad_z * view_scale
            _check_finite_gradient(grad_z, "align_uniform", "t")
            ctx.save_for_backward(grad_z)
        return loss.to(compute_dtype(z.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return _saved_gradient_times(ctx, grad_loss), None, None


# ---------------------------------------------------------------------------------------------
# The backend interface of functional._pairwise
# ---------------------------------------------------------------------------------------------


def _has_kernel(op_name: str, device: torch.device) -> bool:
    dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return dispatch_key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"fmicl::{op_name}", dispatch_key)


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
    return _has_kernel(_OP_NAMES[objective], z1.device)


def _validated(objective: str, z1, z2, hp: dict) -> dict:
    check_pair(z1, z2)
    if objective == "fmicl":
        return fmicl_hyperparameters(**hp)
    if objective == "infonce":
        return infonce_hyperparameters(**hp)
    if objective == "align_uniform":
        return align_uniform_hyperparameters(**hp)
    raise LossArgumentError("objective", f"the fused backend has no objective {objective!r}; "
                                         f"it computes {', '.join(OBJECTIVES)}")


def pairwise_loss(objective: str, z1: torch.Tensor, z2: torch.Tensor, *, gather_distributed: bool = False,
                  tile: int = 0, **hp) -> torch.Tensor:
    """The loss of `objective` ("fmicl", "infonce" or "align_uniform") on the views z1, z2 (N, d).

    hp: the objective's keywords (validation.py). tile: rows per tile of the pairwise matrix
    (0 = the op's default; only speed and memory depend on it). gather_distributed=True scores
    this rank's anchors against every rank's rows (fmicl_engine.loss.distributed). Returns a 0-dim
    tensor in compute_dtype(z1.dtype); raises NonFiniteLossError when the loss or its gradient
    overflows.
    """
    hp = _validated(objective, z1, z2, hp)
    if objective == "fmicl":
        op_args = (hp["divergence"], hp["similarity"], hp["sigma"], hp["tau"], hp["mu"], hp["alpha"],
                   hp["tsallis_alpha"], hp["normalize"], tile)
        scale = "sigma" if hp["similarity"] == "gaussian" else "tau"
        context = dict(divergence=hp["divergence"], similarity=hp["similarity"], **{scale: hp[scale]})
    elif objective == "infonce":
        op_args, scale, context = (hp["tau"], tile), "tau", dict(tau=hp["tau"])
    else:
        return _align_uniform(z1, z2, hp, gather_distributed, tile)

    if gather_distributed:
        from fmicl_engine.loss import distributed  # imported here: only distributed runs need it

        check_gradient = functools.partial(_check_finite_gradient, objective=objective, scale=scale)
        loss = distributed.distributed_pairwise_loss(_OP_NAMES[objective], z1, z2, op_args,
                                                     check_gradient=check_gradient)
        loss = loss.to(compute_dtype(z1.dtype))
        return check_finite_loss(loss, objective, **context, scale=scale, group=dist.group.WORLD)
    z = torch.cat([z1, z2])  # [z1; z2], 2N x d, contiguous
    loss = _FusedAdditiveLoss.apply(z, _OP_NAMES[objective], op_args, objective, scale)
    return check_finite_loss(loss, objective, **context, scale=scale)


def _align_uniform(z1, z2, hp: dict, gather_distributed: bool, tile: int) -> torch.Tensor:
    """L_align (O(N d), plain autograd) + lambda_uniform L_uniform (the fused op)."""
    dtype = compute_dtype(z1.dtype)
    u1, u2 = F.normalize(z1.to(dtype), dim=1), F.normalize(z2.to(dtype), dim=1)
    # Under gather_distributed each rank's mean over its own pairs is W times its share of the
    # global mean: the convention of fmicl_engine.loss.distributed for additive terms.
    # the norm, not the squared norm to the power align_alpha/2: finite gradients for identical
    # views with align_alpha < 2, as in the reference
    align = torch.linalg.vector_norm(u1 - u2, dim=1).pow(hp["align_alpha"]).mean()
    if hp["lambda_uniform"] == 0:
        return check_finite_loss(align, "align_uniform", **hp)
    if gather_distributed:
        from fmicl_engine.loss import distributed

        check_gradient = functools.partial(_check_finite_gradient, objective="align_uniform", scale="t")
        uniform = distributed.distributed_pairwise_loss("uniformity_fwd_bwd", z1, z2, (hp["t"], tile),
                                                        check_gradient=check_gradient).to(dtype)
    else:
        # in the compute dtype: dS/dz of the unnormalised pair sum overflows float16 for large N
        uniform = _FusedUniformity.apply(torch.cat([z1, z2]).to(dtype), hp["t"], tile)
    loss = align + hp["lambda_uniform"] * uniform
    return check_finite_loss(loss, "align_uniform", **hp, scale="t",
                             group=dist.group.WORLD if gather_distributed else None)


__all__ = ["supports", "pairwise_loss", "OBJECTIVES", "MAX_UNIFORMITY_T"]
