"""The tensor ops ``torch.ops.fmicl.*`` in Python: one wrapper per op, with its fake kernel and its
autograd registration beside it. No other module calls the ops.

The schemas and the full contract are in cpp/bindings/ops.cpp. In short: ``z`` (M, d) is
[z1; z2] of the global batch; ``anchors`` an optional int64 CPU tensor of the rows whose terms are
summed (None: all M); every other argument is keyword-only. Each op returns its value and the
gradient of that value with respect to z, computed in the same tiled pass.

Autograd: the value is differentiable in z; its backward scales the gradient the op returned (no
second pass). The gradient is computed only when autograd will ask for it (``needs_grad``, by
default: grad mode is on and z requires grad), so under ``torch.no_grad()``,
``torch.inference_mode()`` or on embeddings that need no gradient the op computes the value alone.
A caller that differentiates by hand (distributed.py) passes ``needs_grad`` itself.

Fake kernels (torch.compile, FakeTensor) check what the shapes and dtypes allow to check and
give the outputs' shapes. Nothing here reads a tensor's value on the host.
"""

from __future__ import annotations

import torch

from fmicl_engine import _ext  # noqa: F401  (loads _C, which registers torch.ops.fmicl)

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def has_kernel(device_type: str) -> bool:
    """Whether this build of the extension registered the ops for ``device_type`` ("cpu", "cuda")."""
    key = _DISPATCH_KEYS.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("fmicl::fmicl_fwd_bwd", key)


def _needs_grad(z: torch.Tensor, needs_grad: bool | None) -> bool:
    return (torch.is_grad_enabled() and z.requires_grad) if needs_grad is None else needs_grad


# ---------------------------------------------------------------------------------------------
# The wrappers
# ---------------------------------------------------------------------------------------------


def fmicl_fwd_bwd(z: torch.Tensor, anchors: torch.Tensor | None = None, *, divergence: str, similarity: str,
                  sigma: float, tau: float, mu: float, alpha: float, tsallis_alpha: float, normalize: bool,
                  needs_grad: bool | None = None, tile: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """f-MICL: (the sum of the anchors' terms, 0-dim float64; its gradient, like z or (0, d))."""
    return torch.ops.fmicl.fmicl_fwd_bwd(
        z, anchors, divergence=divergence, similarity=similarity, sigma=sigma, tau=tau, mu=mu, alpha=alpha,
        tsallis_alpha=tsallis_alpha, normalize=normalize, needs_grad=_needs_grad(z, needs_grad), tile=tile)


def infonce_fwd_bwd(z: torch.Tensor, anchors: torch.Tensor | None = None, *, tau: float,
                    needs_grad: bool | None = None, tile: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE: (the sum of the anchors' terms, 0-dim float64; its gradient, like z or (0, d))."""
    return torch.ops.fmicl.infonce_fwd_bwd(z, anchors, tau=tau, needs_grad=_needs_grad(z, needs_grad), tile=tile)


def uniformity_fwd_bwd(z: torch.Tensor, anchors: torch.Tensor | None = None, *, t: float,
                       needs_grad: bool | None = None, tile: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniformity's pair sums: (sum_exp (2,) float64, one per view; d(sum_exp[0] + sum_exp[1])/dz)."""
    return torch.ops.fmicl.uniformity_fwd_bwd(z, anchors, t=t, needs_grad=_needs_grad(z, needs_grad), tile=tile)


def uniformity_from_sums(sum_exp: torch.Tensor, rows_per_view: int) -> torch.Tensor:
    """L_uniform = ½ Σ_v log(S_v / (n (n - 1) / 2)) from uniformity_fwd_bwd's sums S over all anchors."""
    pairs = rows_per_view * (rows_per_view - 1) / 2
    return 0.5 * (torch.log(sum_exp[0] / pairs) + torch.log(sum_exp[1] / pairs))


# ---------------------------------------------------------------------------------------------
# Fake kernels: the checks that need no value, and the outputs' shapes
# ---------------------------------------------------------------------------------------------


def _fake_gradient(op: str, z: torch.Tensor, anchors: torch.Tensor | None, needs_grad: bool) -> torch.Tensor:
    torch._check(z.dim() == 2, lambda: f"{op}: z must have 2 dims, got shape {tuple(z.shape)}")
    torch._check(z.shape[0] % 2 == 0 and z.shape[0] >= 4 and z.shape[1] >= 1,
                 lambda: f"{op}: z must hold 2N rows [z1; z2] with N >= 2, got shape {tuple(z.shape)}")
    torch._check(z.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 lambda: f"{op}: z must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if anchors is not None:
        torch._check(anchors.device.type == "cpu" and anchors.dim() == 1 and anchors.dtype == torch.int64,
                     lambda: f"{op}: anchors must be a 1-dim int64 CPU tensor, got {anchors.dim()} dims, "
                             f"{anchors.dtype} on {anchors.device}")
    return torch.empty_like(z) if needs_grad else z.new_empty((0, z.shape[1]))


@torch.library.register_fake("fmicl::fmicl_fwd_bwd")
def _fmicl_fwd_bwd_fake(z, anchors=None, *, divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize,
                        needs_grad=True, tile=0):
    return z.new_empty((), dtype=torch.float64), _fake_gradient("fmicl_fwd_bwd", z, anchors, needs_grad)


@torch.library.register_fake("fmicl::infonce_fwd_bwd")
def _infonce_fwd_bwd_fake(z, anchors=None, *, tau, needs_grad=True, tile=0):
    return z.new_empty((), dtype=torch.float64), _fake_gradient("infonce_fwd_bwd", z, anchors, needs_grad)


@torch.library.register_fake("fmicl::uniformity_fwd_bwd")
def _uniformity_fwd_bwd_fake(z, anchors=None, *, t, needs_grad=True, tile=0):
    return z.new_empty((2,), dtype=torch.float64), _fake_gradient("uniformity_fwd_bwd", z, anchors, needs_grad)


# ---------------------------------------------------------------------------------------------
# Autograd: the value's backward scales the gradient the op already computed
# ---------------------------------------------------------------------------------------------


def _save_gradient(ctx, inputs, keyword_only_inputs, output):
    _, grad_z = output
    ctx.mark_non_differentiable(grad_z)
    ctx.computed_gradient = keyword_only_inputs["needs_grad"]
    ctx.save_for_backward(grad_z)


def _saved_gradient(ctx, op: str) -> torch.Tensor:
    if not ctx.computed_gradient:
        raise RuntimeError(f"fmicl::{op} ran with needs_grad=False, so it has no gradient to give: call it through "
                           f"fmicl_engine.loss.ops, which sets needs_grad when autograd needs one")
    (grad_z,) = ctx.saved_tensors
    return grad_z


def _scaled_by_value_gradient(op: str):
    def backward(ctx, grad_value, _grad_of_grad_z):
        grad_z = _saved_gradient(ctx, op)
        return grad_z * grad_value.to(grad_z.dtype), None

    return backward


def _uniformity_backward(ctx, grad_sum_exp, _grad_of_grad_z):
    # the rows of view v enter sum_exp[v] only: scale each view's rows by its entry
    grad_z = _saved_gradient(ctx, "uniformity_fwd_bwd")
    rows_per_view = grad_z.shape[0] // 2
    view_scale = grad_sum_exp.to(grad_z.dtype)[:, None, None].expand(2, rows_per_view, 1).reshape(-1, 1)
    return grad_z * view_scale, None


torch.library.register_autograd("fmicl::fmicl_fwd_bwd", _scaled_by_value_gradient("fmicl_fwd_bwd"),
                                setup_context=_save_gradient)
torch.library.register_autograd("fmicl::infonce_fwd_bwd", _scaled_by_value_gradient("infonce_fwd_bwd"),
                                setup_context=_save_gradient)
torch.library.register_autograd("fmicl::uniformity_fwd_bwd", _uniformity_backward, setup_context=_save_gradient)

__all__ = ["has_kernel", "fmicl_fwd_bwd", "infonce_fwd_bwd", "uniformity_fwd_bwd", "uniformity_from_sums"]
