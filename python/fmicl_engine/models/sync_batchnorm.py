"""BatchNorm over the global batch of a distributed run, on any device and backend.

torch.nn.SyncBatchNorm computes its statistics with CUDA kernels and refuses CPU inputs, so a
torchrun run on CPU (gloo) would otherwise normalise each rank's share on its own. The
``SyncBatchNorm`` here computes the global statistics with plain tensor ops and one all-reduce
per pass, so it runs on CPU under gloo (and on any device whose backend all-reduces).
``convert_sync_batchnorm`` picks torch's on CUDA (fused kernels) and this one elsewhere.

Forward: each rank reduces its per-channel sum, sum of squares and element count; one all-reduce
gives the global ones, hence the global mean and biased variance, which normalise every rank's
share. Ranks may hold different batch sizes. The running statistics are updated with the
unbiased global variance, with torch BatchNorm's momentum semantics (momentum=None: cumulative
average over ``num_batches_tracked``).

Backward: one all-reduce of the per-channel sums of dy and dy·(x − mean) gives the exact input
gradient of BatchNorm over the global batch. The weight and bias gradients are the rank's own
(its share of the global sums): DDP averages them over ranks, and the engine's loss convention
(each rank's dy is W times the global loss's, see fmicl_engine.loss.distributed) makes that
average the exact global gradient.

Statistics are computed in float32 (float64 for float64 inputs), also for float16/bfloat16
inputs under autocast; the output has the input's dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.autograd.function import once_differentiable


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def channel_view(per_channel: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) broadcastable against an ndim-D (N, C, ...) input."""
    return per_channel.view(1, -1, *([1] * (ndim - 2)))


def all_reduced(per_channel: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Sums over the group's ranks, in one all-reduce of the concatenated tensors. The reduction
    runs in float64: the element count stays exact past float32's 2^24."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in per_channel])
    dist.all_reduce(flat, group=group)
    return list(flat.split([t.numel() for t in per_channel]))


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps: float, momentum: float, group):
        x = input.to(stats_dtype(input.dtype))
        dims = [0, *range(2, input.dim())]  # every dim but the channels
        count = torch.tensor([input.numel() // input.shape[1]], dtype=torch.float64, device=x.device)
        total, total_sq, count = all_reduced([x.sum(dims), (x * x).sum(dims), count], group)
        n = count.item()
        if n <= 1:  # every rank sees the same count, so every rank raises
            raise ValueError(f"expected more than 1 value per channel when training, got {n:.0f} over the group")
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_(min=0.0)  # biased: what normalises the batch

        if running_mean is not None:
            unbiased_var = var * (n / (n - 1))
            running_mean.copy_(momentum * mean + (1 - momentum) * running_mean)
            running_var.copy_(momentum * unbiased_var + (1 - momentum) * running_var)

        mean, invstd = mean.to(x.dtype), torch.rsqrt(var + eps).to(x.dtype)
        scale = invstd if weight is None else invstd * weight.to(x.dtype)
        shift = -mean * scale if bias is None else bias.to(x.dtype) - mean * scale
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.group, ctx.count, ctx.bias_dtype = group, n, None if bias is None else bias.dtype
        return (x * channel_view(scale, x.dim()) + channel_view(shift, x.dim())).to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, mean, invstd = ctx.saved_tensors
        ndim = input.dim()
        dims = [0, *range(2, ndim)]
        dy = grad_output.to(mean.dtype)
        x_centred = input.to(mean.dtype) - channel_view(mean, ndim)
        sum_dy, sum_dy_xc = dy.sum(dims), (dy * x_centred).sum(dims)

        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # d/dx of global BatchNorm: gamma·invstd·(dy − mean(dy) − x̂·mean(dy·x̂)), means global
            global_sum_dy, global_sum_dy_xc = (t.to(mean.dtype) for t in all_reduced([sum_dy, sum_dy_xc], ctx.group))
            scale = invstd if weight is None else invstd * weight.to(mean.dtype)
            grad_input = (dy - channel_view(global_sum_dy / ctx.count, ndim)
                          - x_centred * channel_view(invstd * invstd * global_sum_dy_xc / ctx.count, ndim))
            grad_input = (grad_input * channel_view(scale, ndim)).to(input.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_dy_xc * invstd).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch over
    ``process_group`` (default: the whole world), for (N, C) and (N, C, ...) inputs. In eval
    mode, without an initialised process group, or in a group of one rank it is plain BatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _sync_group(self):
        """The group to synchronise over, or None when there is nothing to synchronise."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self._sync_group()
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        # the momentum logic of torch's _BatchNorm.forward, training branch
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / self.num_batches_tracked.item()
        running_mean, running_var = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean, running_var,
                                            self.eps, momentum, group)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """``module`` with every BatchNorm1d/2d/3d replaced by a synchronised one: torch.nn.SyncBatchNorm
    on CUDA (fused kernels, NCCL), which refuses CPU inputs, and this module's SyncBatchNorm on any
    other device (CPU under gloo). The new layers share the old ones' parameters and buffers, so
    weights, running statistics and num_batches_tracked carry over, as do eps, momentum, affine,
    track_running_stats and the train/eval mode. Returns the new module when ``module`` is itself
    a BatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert_to_own(module, process_group)


def _convert_to_own(module: nn.Module, process_group) -> nn.Module:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, process_group)
        converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_to_own(child, process_group))
    return module
