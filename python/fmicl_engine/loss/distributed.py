"""Exact distributed negatives for the fused pairwise losses (``gather_distributed=True``).

Each rank scores its own anchors against every rank's embeddings, so W ranks with n pairs each
compute exactly the loss of one process holding the global batch of N = W·n pairs; no rank forms
the pairwise matrix (the fused op tiles it) and no rank repeats another's anchors.

Layout. The ranks' ``[z1; z2]`` blocks are all-gathered and rearranged into the global layout of
LOSSES.md, ``Z = [z1_all; z2_all]`` (2N, d) with ``z1_all = [z1 of rank 0; z1 of rank 1; ...]``,
so the positive of global anchor a is (a + N) mod 2N: rank r's z1 row i (global row r·n + i) pairs
with rank r's z2 row i (global row N + r·n + i). Rank r's anchors are its own 2n rows in those
global indices; the ranks' anchor sets partition {0 … 2N−1}.

Convention (value and gradient), chosen so that DDP training equals single-process training on
the global batch:

- fmicl / infonce: the fused op returns ``loss_r``, the sum of rank r's per-anchor terms with the
  GLOBAL normalisers, so ``Σ_r loss_r`` is the global loss L. Each rank returns ``W · loss_r``:
  the mean over ranks of the returned values is L (average it across ranks to log L).
- uniformity (L_uniform of Wang & Isola, a log of a global mean, not a sum over anchors): the
  ranks' additive pieces are all-reduced and every rank returns L itself.
- In both cases the gradient with respect to rank r's local rows is ``W · ∂L/∂(its rows)``: the
  ranks' (2N, d) gradients are summed (reduce-scatter), which is what differentiating through an
  all-gather means when each rank's output counts once. DDP averages parameter gradients over
  the W ranks; that 1/W cancels the W, so the parameters receive exactly ∂L/∂θ.

The uniformity op runs on rows in the compute dtype (float32 for float16/bfloat16), as in one
process: the gradient of the unnormalised pair sum, dS/dz, overflows float16 for large N although
the gradient of L_uniform (dS/dz / S) does not.

No host-device sync: the anchors are made on the host (the ops take them there) and the
collectives are enqueued on the device. The gradient check is the caller's (``check_gradient``):
validation.raise_if all-reduces its verdict and reads it at once by default; inside
DeferredFiniteChecks it records the verdict instead, and the all-reduce happens once per
``check()``, not per step.

Every rank must hold the same number of pairs n (DistributedSampler guarantees it); the
collectives reject unequal sizes. Backends: any with single-tensor all-gather and reduce-scatter
(NCCL; gloo in torch 2.14).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from fmicl_engine.loss import ops
from fmicl_engine.loss.validation import LossArgumentError, compute_dtype

# torch 2.14 renamed the single-tensor collectives and deprecated the old names (a warning on
# every call); older torch has only the old names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# An op of ops.py with the objective's keywords bound (functools.partial), called as
# op(z, anchors, needs_grad=...) -> (value pieces, grad_z (2N, d)).
FusedOp = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# Called in the forward as check_gradient(grad_z, group=group) with this rank's share of the
# gradient of the returned value (2N, d), before the shares are summed; it must raise on every
# rank or on none (a rank raising alone leaves the others waiting in the next collective), e.g.
# by all-reducing its verdict over ``group`` (fused.check_finite_gradient).
GradientCheck = Callable[..., None]


def to_global_layout(rank_blocks: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rank-major gathered rows (W·2n, d), each rank's [z1; z2], -> [z1_all; z2_all] (2N, d)."""
    rows, d = rank_blocks.shape
    n = rows // (2 * world_size)
    return rank_blocks.view(world_size, 2, n, d).transpose(0, 1).reshape(rows, d)


def from_global_layout(global_rows: torch.Tensor, world_size: int) -> torch.Tensor:
    """Inverse of to_global_layout: [z1_all; z2_all] (2N, d) -> rank-major (W·2n, d)."""
    rows, d = global_rows.shape
    n = rows // (2 * world_size)
    return global_rows.view(2, world_size, n, d).transpose(0, 1).reshape(rows, d)


def rank_anchors(rank: int, world_size: int, n: int) -> torch.Tensor:
    """Global indices of rank `rank`'s anchors: its z1 rows, then its z2 rows.  (2n,) int64 on the
    CPU: the ops take anchors on the host, so they check them without waiting for a GPU."""
    local = torch.arange(n, dtype=torch.int64) + rank * n
    return torch.cat([local, local + world_size * n])


def gather_global_batch(z1: torch.Tensor, z2: torch.Tensor, group) -> torch.Tensor:
    """Every rank's rows in the global layout.  (n, d), (n, d) -> (2N, d)"""
    world_size = dist.get_world_size(group)
    local = torch.cat([z1, z2]).contiguous()  # 2n x d
    gathered = local.new_empty((world_size * local.shape[0], local.shape[1]))
    _all_gather_single(gathered, local, group=group)
    return to_global_layout(gathered, world_size)


def sum_row_grads(grad_global: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the ranks' (2N, d) gradients and keep this rank's rows: (n, d) for z1 and for z2."""
    world_size = dist.get_world_size(group)
    rank_major = from_global_layout(grad_global, world_size).contiguous()  # W·2n x d
    mine = rank_major.new_empty((rank_major.shape[0] // world_size, rank_major.shape[1]))
    _reduce_scatter_single(mine, rank_major, op=dist.ReduceOp.SUM, group=group)
    return mine.chunk(2)


def _gather_and_run(op: FusedOp, z1, z2, group, needs_grad: bool):
    """All-gather, then the fused op on this rank's anchors: (pieces, grad_z (2N, d) or (0, d))."""
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    z = gather_global_batch(z1.detach(), z2.detach(), group)  # 2N x d
    return op(z, rank_anchors(rank, world_size, z1.shape[0]), needs_grad=needs_grad)


def _summed_row_grads(ctx, grad_loss):
    """The backward of both Functions: this rank's saved share of the gradient, times W and the
    incoming grad_loss, summed over the ranks: (grad z1, grad z2) of this rank's rows."""
    (grad_z,) = ctx.saved_tensors
    # grad_loss may differ between ranks (per-rank loss scaling), so scale before summing.
    scale = (grad_loss * ctx.world_size).to(grad_z.dtype)
    return sum_row_grads(grad_z * scale, ctx.group)


class _GatheredAdditiveLoss(torch.autograd.Function):
    """W · (this rank's anchors' share of the global loss); see the module docstring."""

    @staticmethod
    def forward(ctx, z1, z2, op, group, needs_grad, check_gradient):
        loss_sum, grad_z = _gather_and_run(op, z1, z2, group, needs_grad)  # (), 2N x d
        if needs_grad:
            if check_gradient is not None:
                check_gradient(grad_z, group=group)
            ctx.save_for_backward(grad_z)
        ctx.group = group
        ctx.world_size = dist.get_world_size(group)
        return loss_sum * ctx.world_size

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return *_summed_row_grads(ctx, grad_loss), None, None, None, None


class _GatheredUniformity(torch.autograd.Function):
    """L_uniform = ½ Σ_v log(S_v / (N(N−1)/2)) of the global batch, S_v = Σ_{i<j in view v} exp(-t D_ij)."""

    @staticmethod
    def forward(ctx, z1, z2, op, group, needs_grad, check_gradient):
        sum_exp, grad_z = _gather_and_run(op, z1, z2, group, needs_grad)  # (2,), 2N x d
        dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)  # this rank's pieces -> S
        n_global = z1.shape[0] * dist.get_world_size(group)
        if needs_grad:
            # d L / d(rows of view v) = ½ dS_v / S_v: scale each view's rows of this rank's share.
            view_scale = (0.5 / sum_exp).to(grad_z.dtype)[:, None, None].expand(2, n_global, 1).reshape(-1, 1)
            grad_z = grad_z * view_scale
            if check_gradient is not None:
                check_gradient(grad_z, group=group)
            ctx.save_for_backward(grad_z)
        ctx.group = group
        ctx.world_size = dist.get_world_size(group)
        return ops.uniformity_from_sums(sum_exp, n_global)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return *_summed_row_grads(ctx, grad_loss), None, None, None, None


def _check_process_group(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise LossArgumentError(
            "gather_distributed", "gather_distributed=True needs an initialised torch.distributed process group "
            "(e.g. launch with torchrun and call torch.distributed.init_process_group)")
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (n, d); got {tuple(z1.shape)} and {tuple(z2.shape)}")


def _needs_grad(z1: torch.Tensor, z2: torch.Tensor) -> bool:
    # decided here, not in the Functions' forward, where grad mode is always off
    return torch.is_grad_enabled() and (z1.requires_grad or z2.requires_grad)


def gathered_loss(op: FusedOp, z1: torch.Tensor, z2: torch.Tensor, *, group=None,
                  check_gradient: GradientCheck | None = None) -> torch.Tensor:
    """W × this rank's share of the global-batch loss of an additive op (0-dim, float64).

    op: ops.fmicl_fwd_bwd or ops.infonce_fwd_bwd with the objective's keywords bound, e.g.
        ``functools.partial(ops.infonce_fwd_bwd, tau=0.2)``.
    z1, z2: (n, d) this rank's two views, raw (the op normalises where its arguments say so).
    group: the process group (default: the global one). check_gradient: see GradientCheck.
    """
    _check_process_group(z1, z2)
    group = dist.group.WORLD if group is None else group
    return _GatheredAdditiveLoss.apply(z1, z2, op, group, _needs_grad(z1, z2), check_gradient)


def gathered_uniformity(op: FusedOp, z1: torch.Tensor, z2: torch.Tensor, *, group=None,
                        check_gradient: GradientCheck | None = None) -> torch.Tensor:
    """L_uniform of the global batch (0-dim float64, the same on every rank), in the compute dtype's
    rows (see the module docstring: dS/dz overflows float16).

    op: ops.uniformity_fwd_bwd with t (and tile) bound. Other arguments as in gathered_loss.
    """
    _check_process_group(z1, z2)
    group = dist.group.WORLD if group is None else group
    dtype = compute_dtype(z1.dtype)
    return _GatheredUniformity.apply(z1.to(dtype), z2.to(dtype), op, group, _needs_grad(z1, z2), check_gradient)
