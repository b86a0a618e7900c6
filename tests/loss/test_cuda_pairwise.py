"""The CUDA ops (cpp/cuda/pairwise_cuda.cu) against the CPU ops in float64, on a GPU.

Skipped without a GPU or in a build without the CUDA kernels (FMICL_CUDA=ON); see
docs/BENCHMARKS.md (CUDA section) for the command that runs them on a GPU server. The CPU op in float64 is the
reference (it is itself tested against the pure-PyTorch definition in test_fused_*.py).
Tolerances: float32 within 1e-5 of the reference (relative to the value, and to the largest
gradient entry), or within twice the CPU op's own float32 error where that is larger; float16 /
bfloat16 inputs are compared with the reference on the same rounded inputs (the op computes in
float32), their gradients, returned in the input dtype, within its rounding. Hard inputs (alpha = 0
with overflowing negatives, tiny sigma and tau, near-duplicate and far-apart rows, sizes that are
not a multiple of the tile) in float64, where an overflow must show in the same entries. And no
host-device sync: the ops and the public losses run under torch.cuda.set_sync_debug_mode("error").
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hard_inputs import HARD_CASES, assert_same_result, rank_block

from fmicl_engine import _ext
from fmicl_engine.loss import DeferredFiniteChecks, build_loss, functional
from fmicl_engine.loss import ops  # noqa: F401  (registers the ops' fake kernels and autograd, for opcheck)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not _ext._C.build_info["with_cuda"], reason="built without the CUDA kernels (FMICL_CUDA=ON)"),
]

OPS = torch.ops.fmicl
DIVERGENCES = ("kl", "js", "pearson", "sh", "tsallis", "vlc")


def fmicl_kwargs(divergence, similarity, normalize=True, **overrides):
    return dict(dict(divergence=divergence, similarity=similarity, sigma=0.8, tau=0.5, mu=1.2, alpha=0.9,
                     tsallis_alpha=1.7, normalize=normalize), **overrides)


# (op name, its keywords but anchors, needs_grad and tile): every objective of the ops.
CASES = (
    [("fmicl_fwd_bwd", fmicl_kwargs(d, s)) for d in DIVERGENCES for s in ("gaussian", "cosine")]
    + [("fmicl_fwd_bwd", fmicl_kwargs("pearson", "gaussian", normalize=False)),
       ("infonce_fwd_bwd", dict(tau=0.2)),
       ("uniformity_fwd_bwd", dict(t=2.0))]
)
CASE_IDS = [f"{d}-{s}" for d in DIVERGENCES for s in ("gaussian", "cosine")] + ["pearson-gaussian-raw", "infonce",
                                                                                  "uniformity"]


def sample_z(rows=70, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=torch.float64)


def anchor_choices(rows):
    """None (all), one rank's two blocks of a 2-rank split, and a repeated / unordered list: host
    tensors, as the ops take them whatever z's device."""
    half, quarter = rows // 2, rows // 4
    rank_block = torch.cat([torch.arange(quarter), torch.arange(half, half + quarter)])
    return {"all": None, "rank-block": rank_block, "repeats": torch.tensor([3, rows - 1, 3, 0, half])}


def run(op_name, z, anchors, kwargs, tile):
    value, grad = getattr(OPS, op_name)(z, anchors, **kwargs, needs_grad=True, tile=tile)
    return value.double().cpu(), grad.double().cpu()


def errors(got, want):
    """(relative error of the value, of the gradient relative to its largest entry)"""
    (v, g), (v_ref, g_ref) = got, want
    value_error = ((v - v_ref).abs() / v_ref.abs().clamp_min(1e-30)).max().item()
    grad_error = ((g - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-30)).item()
    return value_error, grad_error


@pytest.mark.parametrize("tile", [0, 16])
@pytest.mark.parametrize("anchor_name", ["all", "rank-block", "repeats"])
@pytest.mark.parametrize("op_name,args", CASES, ids=CASE_IDS)
def test_float32_matches_cpu_float64(op_name, args, anchor_name, tile):  # 70 rows: partial tiles of 16
    z = sample_z()
    anchors = anchor_choices(z.shape[0])[anchor_name]
    reference = run(op_name, z, anchors, args, 0)
    cuda_error = errors(run(op_name, z.float().cuda(), anchors, args, tile), reference)
    cpu_error = errors(run(op_name, z.float(), anchors, args, tile), reference)
    for name, got, cpu in zip(("value", "gradient"), cuda_error, cpu_error):
        assert got <= max(1e-5, 2 * cpu), f"{name}: relative error {got:.2e} (CPU float32: {cpu:.2e})"


@pytest.mark.parametrize("dtype,grad_tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("op_name,args", CASES, ids=CASE_IDS)
def test_half_inputs_compute_in_float32(op_name, args, dtype, grad_tol):
    z = sample_z().to(dtype)
    reference = run(op_name, z.double(), None, args, 0)  # the same rounded inputs, in float64
    value, grad = getattr(OPS, op_name)(z.cuda(), **args, needs_grad=True)
    assert grad.dtype == dtype and value.dtype == torch.float64
    cuda_error = errors((value.cpu(), grad.double().cpu()), reference)
    cpu_error = errors(run(op_name, z, None, args, 0), reference)
    for name, got, cpu, tol in zip(("value", "gradient"), cuda_error, cpu_error, (1e-5, grad_tol)):
        assert got <= max(tol, 2 * cpu), f"{name}: relative error {got:.2e} (CPU: {cpu:.2e})"


@pytest.mark.parametrize("op_name,args", CASES, ids=CASE_IDS)
def test_float64_matches_cpu_to_rounding(op_name, args):
    z = sample_z(rows=300, d=40, seed=1)  # more columns than threads per block: strided loops
    anchors = anchor_choices(z.shape[0])["rank-block"]
    reference = run(op_name, z, anchors, args, 0)
    value_error, grad_error = errors(run(op_name, z.cuda(), anchors, args, 64), reference)
    assert value_error <= 1e-11 and grad_error <= 1e-11


@pytest.mark.parametrize("op_name,args", CASES[:2] + CASES[-2:], ids=CASE_IDS[:2] + CASE_IDS[-2:])
def test_repeated_runs_are_bitwise_equal(op_name, args):
    z = sample_z().float().cuda()
    first = getattr(OPS, op_name)(z, **args, needs_grad=True, tile=16)
    second = getattr(OPS, op_name)(z, **args, needs_grad=True, tile=16)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_public_losses_on_cuda_match_the_reference():
    z1, z2 = sample_z(rows=64, d=16, seed=2).chunk(2)
    losses = {
        "fmicl": lambda a, b, **kw: functional.fmicl_loss(a, b, "js", "gaussian", sigma=0.7, **kw),
        "infonce": lambda a, b, **kw: functional.infonce_loss(a, b, tau=0.3, **kw),
        "align_uniform": lambda a, b, **kw: functional.align_uniform_loss(a, b, t=2.0, **kw),
    }
    for name, loss in losses.items():
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        want = loss(a, b, backend="reference")
        want.backward()
        c, d = z1.float().cuda().requires_grad_(), z2.float().cuda().requires_grad_()
        got = loss(c, d, backend="fused")
        got.backward()
        torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=1e-5, atol=1e-6, msg=name)
        for g, w in ((c.grad, a.grad), (d.grad, b.grad)):
            torch.testing.assert_close(g.double().cpu(), w, rtol=1e-4, atol=1e-5 * w.abs().max().item(), msg=name)


def test_opcheck_cuda():
    z = sample_z(rows=12, d=5).float().cuda()
    for op_name, args in (CASES[0], CASES[-2], CASES[-1]):
        torch.library.opcheck(getattr(OPS, op_name), (z.requires_grad_(), torch.tensor([0, 5, 7])),
                              dict(args, needs_grad=True, tile=4))
        torch.library.opcheck(getattr(OPS, op_name), (z.detach(), None), dict(args, needs_grad=False))


def test_bad_anchors_are_refused_with_the_op_name():
    z = sample_z(rows=12, d=5).float().cuda()
    with pytest.raises(RuntimeError, match="infonce_fwd_bwd: anchors must index rows"):
        OPS.infonce_fwd_bwd(z, torch.tensor([0, 12]), tau=0.5)
    with pytest.raises(RuntimeError, match="infonce_fwd_bwd: anchors must be on the CPU"):
        OPS.infonce_fwd_bwd(z, torch.tensor([0, 1], device="cuda"), tau=0.5)


def test_other_cuda_device_uses_its_own_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    z = sample_z(rows=12, d=5).float()
    value0, grad0 = OPS.fmicl_fwd_bwd(z.to("cuda:0"), torch.tensor([1, 3]), **CASES[0][1])
    value1, grad1 = OPS.fmicl_fwd_bwd(z.to("cuda:1"), torch.tensor([1, 3]), **CASES[0][1])
    assert grad1.device == torch.device("cuda:1")
    torch.testing.assert_close(value1.cpu(), value0.cpu())
    torch.testing.assert_close(grad1.cpu(), grad0.cpu())


# ---------------------------------------------------------------------------------------------
# Hard inputs (hard_inputs.py, as in test_cuda_emulated.py), float64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,tile", [(38, 16), (42, 5), (1030, 0)])
@pytest.mark.parametrize("case", HARD_CASES)
def test_hard_inputs_match_cpu_float64(case, rows, tile):
    op_name, kwargs, embeddings = HARD_CASES[case]
    z = embeddings(rows)
    for anchors in (None, rank_block(rows)):
        want = run(op_name, z, anchors, kwargs, 0)
        assert_same_result(run(op_name, z.cuda(), anchors, kwargs, tile), want, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# No host-device sync
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sync_is_an_error():
    """Within the block, any host-device synchronisation torch makes raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# id -> (loss name, keywords): the engine's pairwise objectives, built as the engine builds them
SYNC_FREE_LOSSES = {
    **{f"fmicl-{d}-{s}": ("fmicl", dict(divergence=d, similarity=s))
       for d in DIVERGENCES for s in ("gaussian", "cosine")},
    "fmicl-kl-cosine-alpha-0": ("fmicl", dict(divergence="kl", similarity="cosine", alpha=0.0)),
    "infonce": ("infonce", {}),
    "align_uniform": ("align_uniform", {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SYNC_FREE_LOSSES)
def test_losses_do_not_sync(case, dtype):
    name, keywords = SYNC_FREE_LOSSES[case]
    loss_fn = build_loss(name, **keywords, backend="fused")
    z1, z2 = (z.to("cuda", dtype).requires_grad_() for z in sample_z(rows=512, d=64, seed=3).chunk(2))
    with DeferredFiniteChecks() as checks:
        loss_fn(z1, z2).backward()  # warm-up: cuBLAS handles, the caching allocators, the check record
        with sync_is_an_error():
            for _ in range(2):
                loss_fn(z1, z2).backward()
            with torch.no_grad():
                loss_fn(z1, z2)
        checks.check()  # the one sync, at a logging step


@pytest.mark.parametrize("op_name,args", CASES[:2] + CASES[-2:], ids=CASE_IDS[:2] + CASE_IDS[-2:])
def test_ops_with_host_anchors_do_not_sync(op_name, args):
    z = sample_z(rows=512, d=64).float().cuda()
    op = getattr(OPS, op_name)
    op(z, torch.tensor([1, 2]), **args, tile=128)  # warm-up: cuBLAS handles, the caching allocators
    with sync_is_an_error():
        for anchors in [*anchor_choices(512).values(), torch.empty(0, dtype=torch.long)]:
            for needs_grad in (True, False):
                op(z, anchors, **args, needs_grad=needs_grad, tile=128)
