"""The ops torch.ops.fmicl.* and their wrappers in fmicl_engine.loss.ops (contract:
cpp/bindings/ops.cpp): anchor subsets add up to the full loss, opcheck (schema, fake tensors,
autograd registration, torch.compile's AOT dispatch), the gradient computed only when autograd
needs it, the op's own input checks, the names the C++ side accepts, and the fused backend's
errors: the same as the reference's for bad arguments, a clear one (or, with backend="auto", one
warning) on a device this build has no kernels for."""

import os
import warnings

import pytest
import torch

from fmicl_engine import _ext
from fmicl_engine.loss import LossArgumentError, fused, ops, validation
from fmicl_engine.loss import functional
from fmicl_engine.loss.functional import align_uniform_loss, fmicl_loss, infonce_loss

OPS = torch.ops.fmicl


def fresh_z(rows=18, d=5, dtype=torch.float64):
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=dtype), seed


def fmicl_kwargs(divergence="js", similarity="gaussian"):
    return dict(divergence=divergence, similarity=similarity, sigma=0.7, tau=0.4, mu=1.2, alpha=0.9,
                tsallis_alpha=1.5, normalize=True)


# (wrapper of fmicl_engine.loss.ops, its keywords)
CASES = [
    (ops.fmicl_fwd_bwd, fmicl_kwargs("js", "gaussian")),
    (ops.fmicl_fwd_bwd, fmicl_kwargs("tsallis", "cosine")),
    (ops.infonce_fwd_bwd, dict(tau=0.3)),
    (ops.uniformity_fwd_bwd, dict(t=2.0)),
]
CASE_IDS = ["fmicl-js-gaussian", "fmicl-tsallis-cosine", "infonce", "uniformity"]


def random_partition(rows, parts, seed):
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    return [p.sort().values for p in order.chunk(parts)]


@pytest.mark.parametrize("op,kwargs", CASES, ids=CASE_IDS)
def test_anchor_subsets_add_up_to_the_full_loss(op, kwargs):
    z, seed = fresh_z()
    full_value, full_grad = op(z, **kwargs, needs_grad=True, tile=4)
    pieces = [op(z, anchors, **kwargs, needs_grad=True, tile=4) for anchors in random_partition(z.shape[0], 3, seed)]
    torch.testing.assert_close(sum(v for v, _ in pieces), full_value, rtol=1e-12, atol=0, msg=f"seed={seed}")
    torch.testing.assert_close(sum(g for _, g in pieces), full_grad, rtol=1e-10, atol=1e-14, msg=f"seed={seed}")
    # every anchor listed: the same as None; an empty list: nothing
    all_value, _ = op(z, torch.arange(z.shape[0]), **kwargs, tile=4)
    torch.testing.assert_close(all_value, full_value, rtol=1e-14, atol=0)
    empty_value, empty_grad = op(z, torch.empty(0, dtype=torch.long), **kwargs, needs_grad=True, tile=4)
    assert not empty_value.any() and not empty_grad.any()


def test_contiguous_rank_blocks_skip_work_but_not_terms():
    """A distributed rank's anchors (its z1 rows and its z2 rows) are two blocks."""
    z, seed = fresh_z(rows=40)
    n = 20
    anchors = torch.cat([torch.arange(5, 10), torch.arange(n + 5, n + 10)])
    rest = torch.tensor([i for i in range(40) if i not in set(anchors.tolist())])
    for (op, kwargs), case in zip(CASES, CASE_IDS):
        full_value, full_grad = op(z, **kwargs, tile=4)
        value = op(z, anchors, **kwargs, tile=4)[0] + op(z, rest, **kwargs, tile=4)[0]
        torch.testing.assert_close(value, full_value, rtol=1e-12, atol=0, msg=f"{case} seed={seed}")


@pytest.mark.parametrize("op,kwargs", CASES, ids=CASE_IDS)
def test_outputs_dtype_and_shape(op, kwargs):
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        z, _ = fresh_z(dtype=dtype)
        value, grad = op(z, **kwargs, needs_grad=True)
        assert value.dtype == torch.float64
        assert value.shape == ((2,) if op is ops.uniformity_fwd_bwd else ())
        assert grad.dtype == dtype and grad.shape == z.shape


@pytest.mark.parametrize("op,kwargs", CASES, ids=CASE_IDS)
def test_gradient_only_when_autograd_needs_it(op, kwargs):
    z, _ = fresh_z()
    value, grad = op(z.requires_grad_(), **kwargs)
    assert grad.shape == z.shape
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            value_alone, no_grad = op(z, **kwargs)
        assert no_grad.shape == (0, z.shape[1])
        torch.testing.assert_close(value_alone, value, rtol=1e-14, atol=0)
    assert op(z.detach(), **kwargs)[1].shape == (0, z.shape[1])  # nothing requires a gradient


def test_public_loss_without_grad_skips_the_gradient(monkeypatch):
    gradients = []

    def spy(op):
        def run(*args, **kwargs):
            value, grad = op(*args, **kwargs)
            gradients.append(tuple(grad.shape))
            return value, grad
        return run

    for name in ("fmicl_fwd_bwd", "infonce_fwd_bwd", "uniformity_fwd_bwd"):
        monkeypatch.setattr(ops, name, spy(getattr(ops, name)))
    z1, z2 = fresh_z(dtype=torch.float32)[0].requires_grad_().chunk(2)
    for loss in (fmicl_loss, infonce_loss, align_uniform_loss):
        with torch.no_grad():
            loss(z1, z2, backend="fused")
        loss(z1, z2, backend="fused").backward()
    assert gradients == [(0, 5), (18, 5)] * 3


def test_backward_of_a_call_without_gradient_says_why():
    z, _ = fresh_z(rows=8, d=3)
    value, _ = OPS.infonce_fwd_bwd(z.requires_grad_(), tau=0.5, needs_grad=False)
    with pytest.raises(RuntimeError, match="needs_grad=False"):
        value.backward()


@pytest.mark.parametrize("op,kwargs", CASES, ids=CASE_IDS)
def test_opcheck(op, kwargs):
    z, _ = fresh_z(rows=8, d=3)
    op_overload = getattr(OPS, op.__name__)
    torch.library.opcheck(op_overload, (z, None), dict(kwargs, needs_grad=False, tile=3))
    torch.library.opcheck(op_overload, (z.float().requires_grad_(), torch.tensor([0, 5, 6])),
                          dict(kwargs, needs_grad=True, tile=0))


def test_compiled_loss_matches_eager():
    z1, z2 = (t.float().requires_grad_(True) for t in fresh_z(rows=12)[0].chunk(2))
    hp = fmicl_kwargs("kl", "gaussian")

    def loss_of(a, b):
        return ops.fmicl_fwd_bwd(torch.cat([a, b]), **hp)[0].float()

    eager = loss_of(z1, z2)
    eager_grads = torch.autograd.grad(eager, (z1, z2))
    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)(z1, z2)
    compiled_grads = torch.autograd.grad(compiled, (z1, z2))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_the_names_the_ops_accept_are_pythons():
    # C++ generates its enums, names and dispatch from one list each (fmicl/pairwise_math.h)
    assert _ext._C.divergences == validation.DIVERGENCES
    assert _ext._C.similarities == validation.SIMILARITIES
    z, _ = fresh_z()
    for divergence in validation.DIVERGENCES:
        for similarity in validation.SIMILARITIES:
            assert torch.isfinite(ops.fmicl_fwd_bwd(z, **dict(fmicl_kwargs(divergence, similarity)))[0])


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_op_rejects_bad_tensors_naming_the_op():
    z, _ = fresh_z()
    op = OPS.fmicl_fwd_bwd
    bad = [
        ((z.t(), None), "contiguous"),
        ((z[:, 0], None), "2 dims"),
        ((z[:5], None), "2N rows"),
        ((z.long(), None), "float16, bfloat16, float32 or float64"),
        ((z, torch.tensor([0, 1], dtype=torch.int32)), "Long"),
        ((z, torch.tensor([0, z.shape[0]])), "anchors must index rows"),
        ((z, torch.tensor([-1, 2])), "anchors must index rows"),
        ((z, torch.tensor([[0]])), "1 dims"),
        ((z, torch.tensor([0, 1], device="meta")), "anchors must be"),  # host-side indices only
    ]
    for (tensor, anchors), message in bad:
        with pytest.raises(RuntimeError, match=message) as info:
            op(tensor, anchors, **fmicl_kwargs())
        assert "fmicl_fwd_bwd" in str(info.value)
    with pytest.raises(RuntimeError, match="unknown divergence 'kll'; expected one of kl, js, pearson"):
        op(z, None, **dict(fmicl_kwargs(), divergence="kll"))
    with pytest.raises(RuntimeError, match="unknown similarity 'dot'; expected one of gaussian, cosine"):
        op(z, None, **dict(fmicl_kwargs(), similarity="dot"))
    with pytest.raises(RuntimeError, match="sigma must be a finite number > 0"):
        op(z, None, **dict(fmicl_kwargs(), sigma=0.0))
    with pytest.raises(RuntimeError, match="tile must be >= 0"):
        op(z, None, **fmicl_kwargs(), tile=-1)
    with pytest.raises(RuntimeError, match="t must be a finite number > 0"):
        OPS.uniformity_fwd_bwd(z, t=float("nan"))


def _error_of(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001  (the test compares whatever is raised)
        return type(err), getattr(err, "argument", None)
    return None


@pytest.mark.parametrize("bad", [
    dict(sigma=0.0), dict(sigma=-1.0), dict(tau=float("nan")), dict(mu=0.0), dict(alpha=-0.5),
    dict(tsallis_alpha=1.0), dict(divergence="kll"), dict(similarity="dot"), dict(normalize="yes"),
    dict(sigma=True),
])
def test_bad_hyperparameters_raise_like_the_reference(bad):
    z, _ = fresh_z(dtype=torch.float32)
    z1, z2 = z.chunk(2)
    hp = dict(divergence="kl", similarity="gaussian", sigma=0.5, tau=0.5, mu=1.0, alpha=1.0, tsallis_alpha=1.5,
              normalize=True)
    hp.update(bad)
    expected = _error_of(lambda: fmicl_loss(z1, z2, backend="reference", **hp))
    assert expected is not None and expected[0] is LossArgumentError
    assert _error_of(lambda: fmicl_loss(z1, z2, backend="fused", **hp)) == expected


@pytest.mark.parametrize("views", ["nan", "shape", "dtype", "one_row", "one_dim"])
def test_bad_embeddings_raise_like_the_reference(views):
    z, _ = fresh_z(dtype=torch.float32)
    z1, z2 = z.chunk(2)
    z1, z2 = {
        "nan": (z1, z2.clone().index_fill_(0, torch.tensor([2]), float("nan"))),
        "shape": (z1, z2[:-1]),
        "dtype": (z1, z2.double()),
        "one_row": (z1[:1], z2[:1]),
        "one_dim": (z1[:, 0], z2[:, 0]),
    }[views]
    for objective, public, hp in [("fmicl", fmicl_loss, {}), ("infonce", infonce_loss, {}),
                                  ("align_uniform", align_uniform_loss, {})]:
        expected = _error_of(lambda: public(z1, z2, backend="reference", **hp))
        assert expected is not None and expected[0] is LossArgumentError
        assert _error_of(lambda: public(z1, z2, backend="fused", **hp)) == expected


def test_supports():
    z, _ = fresh_z(dtype=torch.float32)
    z1, z2 = z.chunk(2)
    assert fused.supports("fmicl", z1, z2, divergence="kl")
    assert fused.supports("infonce", z1.half(), z2.half(), tau=0.5)
    assert fused.supports("align_uniform", z1, z2, t=2.0)
    assert not fused.supports("align_uniform", z1, z2, t=fused.MAX_UNIFORMITY_T + 1)
    assert not fused.supports("rpc", z1, z2)
    assert not fused.supports("fmicl", z1.long(), z2.long())
    assert not fused.supports("fmicl", z1[:1], z2[:1])
    assert not fused.supports("fmicl", z1, z2[:-1])


# ---------------------------------------------------------------------------------------------
# A device without kernels: "fused" refuses, "auto" warns once and takes the reference
# ---------------------------------------------------------------------------------------------


def test_missing_cuda_kernels_name_fmicl_cuda_and_the_rebuild(monkeypatch):
    assert fused.missing_kernels(torch.device("cpu")) is None
    assert (fused.missing_kernels(torch.device("cuda")) is None) == _ext._C.build_info["with_cuda"]
    monkeypatch.setattr(ops, "has_kernel", lambda device_type: device_type == "cpu")  # a CPU-only build
    assert "FMICL_CUDA=ON pip install --no-build-isolation -e ." in fused.missing_kernels(torch.device("cuda"))
    assert "no kernels for mps" in fused.missing_kernels(torch.device("mps"))


@pytest.fixture
def no_cpu_kernels(monkeypatch):
    """This build as if it had no CPU kernels, as a CPU-only build has no CUDA kernels."""
    has_kernel = ops.has_kernel
    monkeypatch.setattr(ops, "has_kernel", lambda device_type: device_type != "cpu" and has_kernel(device_type))
    monkeypatch.setattr(functional, "_WARNED_DEVICE_TYPES", set())


def test_fused_backend_refuses_a_device_without_kernels(no_cpu_kernels):
    z1, z2 = fresh_z(dtype=torch.float32)[0].chunk(2)
    for loss in (fmicl_loss, infonce_loss, align_uniform_loss):
        with pytest.raises(LossArgumentError, match="fused backend .* cannot run on cpu") as info:
            loss(z1, z2, backend="fused")
        assert info.value.argument == "backend"


def test_auto_warns_once_then_takes_the_reference(no_cpu_kernels):
    z1, z2 = fresh_z(dtype=torch.float32)[0].chunk(2)
    with pytest.warns(RuntimeWarning, match="backend='auto' computes fmicl on cpu tensors with the reference") as seen:
        got = fmicl_loss(z1, z2)
    assert len(seen) == 1 and seen[0].filename == __file__  # points at the caller
    torch.testing.assert_close(got, fmicl_loss(z1, z2, backend="reference"), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fmicl_loss(z1, z2)
        infonce_loss(z1, z2)


@pytest.mark.skipif(not torch.cuda.is_available() or _ext._C.build_info["with_cuda"],
                    reason="needs a GPU and a build without the CUDA kernels")
def test_cuda_tensors_without_the_cuda_kernels(monkeypatch):
    monkeypatch.setattr(functional, "_WARNED_DEVICE_TYPES", set())
    z1, z2 = fresh_z(dtype=torch.float32)[0].cuda().chunk(2)
    with pytest.raises(LossArgumentError, match="FMICL_CUDA=ON"):
        fmicl_loss(z1, z2, backend="fused")
    with pytest.warns(RuntimeWarning, match="FMICL_CUDA=ON"):
        fmicl_loss(z1, z2)
