"""The ops torch.ops.fmicl.* themselves (contract: cpp/bindings/ops.cpp): anchor subsets add up
to the full loss, opcheck (schema, fake tensors, torch.compile's AOT dispatch), the op's own input
checks, and the fused backend raising the same errors as the reference for bad arguments."""

import os

import pytest
import torch

from fmicl_engine.loss import LossArgumentError, fused
from fmicl_engine.loss.functional import align_uniform_loss, fmicl_loss, infonce_loss

OPS = torch.ops.fmicl


def fresh_z(rows=18, d=5, dtype=torch.float64):
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=dtype), seed


def fmicl_args(divergence="js", similarity="gaussian"):
    # divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize
    return (divergence, similarity, 0.7, 0.4, 1.2, 0.9, 1.5, True)


CASES = [
    ("fmicl_fwd_bwd", fmicl_args("js", "gaussian")),
    ("fmicl_fwd_bwd", fmicl_args("tsallis", "cosine")),
    ("infonce_fwd_bwd", (0.3,)),
    ("uniformity_fwd_bwd", (2.0,)),
]


def random_partition(rows, parts, seed):
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    return [p.sort().values for p in order.chunk(parts)]


@pytest.mark.parametrize("op_name,args", CASES)
def test_anchor_subsets_add_up_to_the_full_loss(op_name, args):
    z, seed = fresh_z()
    op = getattr(OPS, op_name)
    full_value, full_grad = op(z, None, *args, 4)
    pieces = [op(z, anchors, *args, 4) for anchors in random_partition(z.shape[0], 3, seed)]
    torch.testing.assert_close(sum(v for v, _ in pieces), full_value, rtol=1e-12, atol=0, msg=f"seed={seed}")
    torch.testing.assert_close(sum(g for _, g in pieces), full_grad, rtol=1e-10, atol=1e-14, msg=f"seed={seed}")
    # every anchor listed: the same as None; an empty list: nothing
    all_value, _ = op(z, torch.arange(z.shape[0]), *args, 4)
    torch.testing.assert_close(all_value, full_value, rtol=1e-14, atol=0)
    empty_value, empty_grad = op(z, torch.empty(0, dtype=torch.long), *args, 4)
    assert not empty_value.any() and not empty_grad.any()


def test_contiguous_rank_blocks_skip_work_but_not_terms():
    """A distributed rank's anchors (its z1 rows and its z2 rows) are two blocks."""
    z, seed = fresh_z(rows=40)
    n = 20
    anchors = torch.cat([torch.arange(5, 10), torch.arange(n + 5, n + 10)])
    rest = torch.tensor([i for i in range(40) if i not in set(anchors.tolist())])
    for op_name, args in CASES:
        op = getattr(OPS, op_name)
        full_value, full_grad = op(z, None, *args, 4)
        value = op(z, anchors, *args, 4)[0] + op(z, rest, *args, 4)[0]
        torch.testing.assert_close(value, full_value, rtol=1e-12, atol=0, msg=f"{op_name} seed={seed}")


@pytest.mark.parametrize("op_name,args", CASES)
def test_outputs_dtype_and_shape(op_name, args):
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        z, _ = fresh_z(dtype=dtype)
        value, grad = getattr(OPS, op_name)(z, None, *args)
        assert value.dtype == torch.float64
        assert value.shape == ((2,) if op_name == "uniformity_fwd_bwd" else ())
        assert grad.dtype == dtype and grad.shape == z.shape


@pytest.mark.parametrize("op_name,args", CASES)
def test_opcheck(op_name, args):
    z, _ = fresh_z(rows=8, d=3)
    torch.library.opcheck(getattr(OPS, op_name), (z, None, *args, 3))
    torch.library.opcheck(getattr(OPS, op_name), (z.float(), torch.tensor([0, 5, 6]), *args, 0))


def test_compiled_function_matches_eager():
    z1, z2 = (t.float().requires_grad_(True) for t in fresh_z(rows=12)[0].chunk(2))
    hp = dict(divergence="kl", similarity="gaussian", sigma=0.5, tau=0.5, mu=1.0, alpha=1.0,
              tsallis_alpha=1.5, normalize=True)

    def loss_of(a, b):
        z = torch.cat([a, b])
        return fused._FusedAdditiveLoss.apply(z, "fmicl_fwd_bwd", tuple(hp.values()) + (0,), "fmicl", "sigma")

    eager = loss_of(z1, z2)
    eager_grads = torch.autograd.grad(eager, (z1, z2))
    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)(z1, z2)
    compiled_grads = torch.autograd.grad(compiled, (z1, z2))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


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
        ((z, torch.tensor([[0]])), "1 dims"),
    ]
    for (tensor, anchors), message in bad:
        with pytest.raises(RuntimeError, match=message) as info:
            op(tensor, anchors, *fmicl_args())
        assert "fmicl_fwd_bwd" in str(info.value)
    with pytest.raises(RuntimeError, match="unknown divergence 'kll'"):
        op(z, None, *(("kll",) + fmicl_args()[1:]))
    with pytest.raises(RuntimeError, match="sigma must be a finite number > 0"):
        op(z, None, "kl", "gaussian", 0.0, 0.5, 1.0, 1.0, 1.5, True)
    with pytest.raises(RuntimeError, match="tile must be >= 0"):
        op(z, None, *fmicl_args(), -1)
    with pytest.raises(RuntimeError, match="t must be a finite number > 0"):
        OPS.uniformity_fwd_bwd(z, None, float("nan"))


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
    assert _error_of(lambda: fused.pairwise_loss("fmicl", z1, z2, **hp)) == expected
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
