"""Edges of the public loss API: every input either gives a loss that matches the float64 reference
or raises LossArgumentError / NonFiniteLossError naming the argument; never a bare RuntimeError,
IndexError or a silent inf/NaN.

Covers: the MI-bound function and module (one validation path), the fused InfoNCE at tiny tau
against the float64 reference (values and gradients), overflow errors naming the argument that
overflows, meta tensors, and a sweep of bad and awkward embeddings and hyperparameters.
"""

import math

import pytest
import torch

from fmicl_engine.loss import (DeferredFiniteChecks, LossArgumentError, MIBoundLoss, NonFiniteLossError,
                               align_uniform_loss, emmi_loss, fmicl_loss, infonce_loss, mi_bound, rpc_loss)

PAIRWISE = {"fmicl": fmicl_loss, "infonce": infonce_loss, "align_uniform": align_uniform_loss}
REFERENCE_ONLY = {"rpc": rpc_loss, "emmi": emmi_loss}
BACKENDS = ["reference", "fused"]


def views(n=6, d=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), (z1 + torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)


def every_loss():
    """(name, loss(z1, z2, **kw)) for each public entry point taking two views, each backend."""
    for name, fn in PAIRWISE.items():
        for backend in BACKENDS:
            yield pytest.param(lambda z1, z2, fn=fn, backend=backend, **kw: fn(z1, z2, backend=backend, **kw),
                               id=f"{name}-{backend}")
    for name, fn in REFERENCE_ONLY.items():
        yield pytest.param(fn, id=name)
    yield pytest.param(lambda z1, z2: MIBoundLoss("nwj", "separable", 5)(z1, z2), id="mi_bound-module")  # views' d


def gradients(loss_fn, z1, z2, **kw):
    a, b = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    loss = loss_fn(a, b, **kw)
    loss.backward()
    return loss.detach(), a.grad, b.grad


# ---------------------------------------------------------------------------------------------
# mi_bound and MIBoundLoss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["infonce", "nwj", "dv"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_mi_bound_refuses_non_finite_scores(bound, bad):
    scores = torch.randn(2, 4, 4)
    scores[1, 2, 0] = bad
    with pytest.raises(LossArgumentError, match="scores contain inf or NaN") as info:
        mi_bound(scores, bound)
    assert info.value.argument == "scores"


def test_mi_bound_nwj_overflow_is_an_error_naming_scores():
    # NWJ = E_p[T] - E_q[e^(T - 1)]: at T ~ 1e4 the true value is about -e^1e4, beyond every dtype.
    scores = torch.full((4, 4), 1e4)
    with pytest.raises(NonFiniteLossError, match=r"nwj estimate is -inf.*e\^\(T - 1\).*bound='dv'") as info:
        mi_bound(scores, "nwj")
    assert info.value.argument == "scores"
    # the log-sum-exp bounds are finite there, and exact
    for bound in ("infonce", "dv"):
        torch.testing.assert_close(mi_bound(scores, bound).double(), mi_bound(scores.double(), bound))


def test_mi_bound_overflow_in_one_batch_of_many_is_reported():
    scores = torch.zeros(3, 4, 4)
    scores[2] = 200.0  # e^199 overflows float32, not float64
    with pytest.raises(NonFiniteLossError, match="nwj estimate is -inf"):
        mi_bound(scores, "nwj")
    assert torch.isfinite(mi_bound(scores.double(), "nwj")).all()


def test_mi_bound_checks_are_deferred_like_every_value_check():
    with pytest.raises(LossArgumentError, match="deferred check") as info:
        with DeferredFiniteChecks():
            estimate = mi_bound(torch.full((4, 4), math.nan), "dv")  # no raise here: recorded on the device
            assert estimate.shape == ()
    assert info.value.argument == "scores"


@pytest.mark.parametrize("bound", ["infonce", "nwj", "dv"])
def test_mi_bound_empty_batch_and_half_scores(bound):
    assert mi_bound(torch.zeros(0, 3, 3), bound).shape == (0,)
    scores = torch.randn(5, 4, 4)
    half = mi_bound(scores.half(), bound)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), mi_bound(scores.half().double(), bound), rtol=1e-5, atol=1e-6)


def test_mi_bound_module_reports_diverged_critic_scores_as_a_non_finite_loss():
    # the module's scores are its critic's output, not an argument: a diverged critic is a
    # NonFiniteLossError (the MI-estimate loop catches it), not a LossArgumentError
    loss_fn = MIBoundLoss("dv", "bilinear", 3)
    with torch.no_grad():
        loss_fn.critic.weight.fill_(1e30)
    z = torch.ones(4, 3) * 1e10
    with pytest.raises(NonFiniteLossError, match="critic's scores contain inf or NaN") as info:
        loss_fn(z, z)
    assert not isinstance(info.value, LossArgumentError) and info.value.argument is None


def test_mi_bound_module_reports_nwj_overflow():
    loss_fn = MIBoundLoss("nwj", "bilinear", 2)
    with torch.no_grad():
        loss_fn.critic.weight.copy_(torch.eye(2) * 100.0)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # T up to 200: e^199 overflows float32
    with pytest.raises(NonFiniteLossError, match="nwj estimate"):
        loss_fn(z, z)


# ---------------------------------------------------------------------------------------------
# Fused InfoNCE at tiny tau: no false overflow, values and gradients of the float64 reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiles", ["default", "scalar"])
@pytest.mark.parametrize("n", [8, 300])  # 300: several tiles, the transposed orientation in pass 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-10, 1e-6, 0.5])
def test_fused_infonce_tiny_tau_matches_the_float64_reference(tau, dtype, n, tiles, monkeypatch):
    if tiles == "scalar":
        monkeypatch.setenv("FMICL_CPU_TILES", "scalar")  # the portable epilogues (read on every call)
    z1, z2 = views(n, 16, seed=1)
    value, g1, g2 = gradients(infonce_loss, z1.to(dtype), z2.to(dtype), tau=tau, backend="fused")
    want, w1, w2 = gradients(infonce_loss, z1.double(), z2.double(), tau=tau, backend="reference")
    assert torch.isfinite(value) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(value.double(), want, rtol=rtol, atol=0)
    got, expected = torch.cat([g1, g2]).double(), torch.cat([w1, w2])
    assert (got - expected).norm() <= rtol * expected.norm()


def test_fused_infonce_tiny_tau_with_duplicate_rows():
    # ties: each row's maximum is shared by its positive and two copies, the softmax splits
    # between them: loss log 3. In float64 only: in float32 an ulp of C is worth ~600 nats at
    # tau = 1e-10, so LSE - C_pos/tau of a positive at the maximum is rounding noise in any
    # implementation (the reference's too).
    z1, _ = views(6, 4, seed=2, dtype=torch.float64)
    z = torch.cat([z1, z1])
    value, g, _ = gradients(infonce_loss, z, z, tau=1e-10, backend="fused")
    want, w, _ = gradients(infonce_loss, z, z, tau=1e-10, backend="reference")
    torch.testing.assert_close(value, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(value.item(), math.log(3), rtol=1e-6, atol=0)
    # the true gradient cancels to 0; each of its terms is ~1/tau, so float64 leaves ~1e-16/tau
    assert (g - w).abs().max() <= 1e-16 / 1e-10


# ---------------------------------------------------------------------------------------------
# Overflow errors name the argument that overflows, and what to do
# ---------------------------------------------------------------------------------------------

OVERFLOWS = [  # (loss, keywords, the argument named, the advice)
    ("fmicl", dict(divergence="tsallis", mu=1e300), "mu", "bring mu closer to 1"),
    ("fmicl", dict(divergence="kl", mu=1e300), "mu", "bring mu closer to 1"),
    ("fmicl", dict(divergence="tsallis", alpha=1e300), "alpha", "decrease alpha"),
    ("fmicl", dict(divergence="pearson", alpha=1e300), "alpha", "decrease alpha"),
    ("fmicl", dict(divergence="tsallis", tsallis_alpha=1e300), "tsallis_alpha", "bring tsallis_alpha closer to 1"),
    ("fmicl", dict(divergence="sh", sigma=1e-3), "sigma", "increase sigma"),
    ("fmicl", dict(divergence="kl", similarity="cosine", tau=1e-3), "tau", "increase tau"),
    ("align_uniform", dict(align_alpha=1e300), "align_alpha", "decrease align_alpha"),
    ("align_uniform", dict(lambda_uniform=1e300), "lambda_uniform", "decrease lambda_uniform"),
    ("align_uniform", dict(t=1e300), "t", "decrease t"),
    ("rpc", dict(alpha=1e300), "alpha", "decrease alpha"),
    ("rpc", dict(beta=1e300), "beta", "decrease beta"),
    ("rpc", dict(gamma=1e300), "gamma", "decrease gamma"),
    ("rpc", dict(tau=1e-300), "tau", "increase tau"),
    ("infonce", dict(tau=1e-300), "tau", "increase tau"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs,argument,advice", OVERFLOWS, ids=[f"{o[0]}-{o[2]}" for o in OVERFLOWS])
def test_overflow_names_the_argument_that_overflows(name, kwargs, argument, advice, backend):
    if name in REFERENCE_ONLY:
        if backend == "fused":
            pytest.skip("reference only")
        loss_fn = REFERENCE_ONLY[name]
    else:
        loss_fn = lambda *z, **kw: PAIRWISE[name](*z, backend=backend, **kw)  # noqa: E731
    z1, z2 = views()
    with pytest.raises(NonFiniteLossError) as info:
        loss_fn(z1, z2, **kwargs)
    assert info.value.argument == argument
    assert f"{argument}={kwargs[argument]!r}" in str(info.value) and advice in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deferred_overflow_names_the_argument_too(backend):
    z1, z2 = views()
    with pytest.raises(NonFiniteLossError, match=r"bring mu closer to 1 \(mu=1e\+300\).*deferred check") as info:
        with DeferredFiniteChecks():
            fmicl_loss(z1, z2, "kl", mu=1e300, backend=backend)  # recorded, raised on leaving the block
    assert info.value.argument == "mu"


def test_overflow_in_float32_only_is_finite_in_float64():
    # alpha * the negative term: 1e300 overflows float32 only; the error says to pass float64
    z1, z2 = views()
    with pytest.raises(NonFiniteLossError, match="or pass float64 embeddings"):
        fmicl_loss(z1, z2, "tsallis", alpha=1e300, backend="reference")
    for backend in BACKENDS:
        assert torch.isfinite(fmicl_loss(z1.double(), z2.double(), "tsallis", alpha=1e300, backend=backend))


# ---------------------------------------------------------------------------------------------
# Meta tensors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", list(every_loss()))
@pytest.mark.parametrize("which", ["z1", "z2", "both"])
def test_meta_tensors_are_refused_naming_the_problem(loss_fn, which):
    z1, z2 = views()
    meta = torch.empty(6, 5, device="meta")
    args = {"z1": (meta, z2), "z2": (z1, meta), "both": (meta, meta)}[which]
    with pytest.raises(LossArgumentError, match="meta tensors have no values") as info:
        loss_fn(*args)
    assert info.value.argument == ("z2" if which == "z2" else "z1")


def test_meta_scores_are_refused():
    with pytest.raises(LossArgumentError, match="meta tensors have no values") as info:
        mi_bound(torch.empty(4, 4, device="meta"), "nwj")
    assert info.value.argument == "scores"


# ---------------------------------------------------------------------------------------------
# Embeddings: bad ones name the argument, awkward ones give the float64 reference's loss
# ---------------------------------------------------------------------------------------------

z1_, z2_ = views()
BAD_EMBEDDINGS = {  # case -> (z1, z2, the argument named, part of the message)
    "int": (z1_.long(), z2_.long(), "z1", "floating-point dtype"),
    "bool": (z1_ > 0, z2_ > 0, "z1", "floating-point dtype"),
    "complex": (z1_.to(torch.complex64), z2_.to(torch.complex64), "z1", "floating-point dtype"),
    "empty-batch": (z1_[:0], z2_[:0], "z1", "at least 2 rows"),
    "one-pair": (z1_[:1], z2_[:1], "z1", "at least 2 rows"),
    "no-columns": (z1_[:, :0], z2_[:, :0], "z1", "at least 2 rows and 1 column"),
    "1-D": (z1_[0], z2_[0], "z1", "must be 2-D"),
    "3-D": (z1_[None], z2_[None], "z1", "must be 2-D"),
    "list": (z1_.tolist(), z2_.tolist(), "z1", "must be a torch.Tensor"),
    "shapes": (z1_, z2_[:5], "z2", "same shape"),
    "dtypes": (z1_, z2_.double(), "z2", "same dtype"),
    "nan": (z1_ * math.nan, z2_, "z1", "inf or NaN"),
    "inf": (z1_, z2_ * math.inf, "z2", "inf or NaN"),
}


@pytest.mark.parametrize("loss_fn", list(every_loss()))
@pytest.mark.parametrize("case", list(BAD_EMBEDDINGS))
def test_bad_embeddings_name_the_argument(loss_fn, case):
    z1, z2, argument, message = BAD_EMBEDDINGS[case]
    with pytest.raises(LossArgumentError, match=message) as info:
        loss_fn(z1, z2)
    assert info.value.argument == argument


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("loss_fn", list(every_loss()))
def test_views_on_different_devices_name_z2(loss_fn):
    z1, z2 = views()
    with pytest.raises(LossArgumentError, match="same device") as info:
        loss_fn(z1, z2.cuda())
    assert info.value.argument == "z2"


def _float64_reference(name, z1, z2):
    fn = PAIRWISE.get(name) or REFERENCE_ONLY[name]
    kw = dict(backend="reference") if name in PAIRWISE else {}
    return gradients(fn, z1.double(), z2.double(), **kw)


AWKWARD = {  # case -> (z1, z2) built from views(); each must give the float64 reference's loss
    "two-pairs": lambda z1, z2: (z1[:2], z2[:2]),
    "transposed": lambda z1, z2: (z1.t().contiguous().t(), z2.t().contiguous().t()),
    "strided": lambda z1, z2: (torch.cat([z1, z1], 1)[:, ::2], torch.cat([z2, z2], 1)[:, ::2]),
    "expanded": lambda z1, z2: (z1[:1].expand(6, 5), z2[:1].expand(6, 5)),
    "float64": lambda z1, z2: (z1.double(), z2.double()),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PAIRWISE) + list(REFERENCE_ONLY))
@pytest.mark.parametrize("case", list(AWKWARD))
def test_awkward_embeddings_match_the_float64_reference(name, case, backend):
    if name in REFERENCE_ONLY and backend == "fused":
        pytest.skip("reference only")
    z1, z2 = AWKWARD[case](*views())
    kw = dict(backend=backend) if name in PAIRWISE else {}
    fn = PAIRWISE.get(name) or REFERENCE_ONLY[name]
    if name == "emmi":  # covariances of rank < d (6 pairs or fewer, d = 5): float32 needs a larger eps
        kw["eps"] = 1e-1
    value, g1, g2 = gradients(fn, z1, z2, **kw)
    want, w1, w2 = gradients(fn, z1.double(), z2.double(), **({**kw, "backend": "reference"} if name in PAIRWISE
                                                                else kw))
    assert value.dtype == z1.dtype
    rtol = 1e-12 if z1.dtype == torch.float64 else 2e-4
    torch.testing.assert_close(value.double(), want, rtol=rtol, atol=rtol)
    torch.testing.assert_close(torch.cat([g1, g2]).double(), torch.cat([w1, w2]), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PAIRWISE) + list(REFERENCE_ONLY))
def test_half_embeddings_give_a_float32_loss_near_the_float64_reference(name, backend, dtype):
    if name in REFERENCE_ONLY and backend == "fused":
        pytest.skip("reference only")
    z1, z2 = (z.to(dtype) for z in views())
    fn = PAIRWISE.get(name) or REFERENCE_ONLY[name]
    kw = dict(backend=backend) if name in PAIRWISE else {}
    value, g1, g2 = gradients(fn, z1, z2, **kw)
    assert value.dtype == torch.float32 and g1.dtype == dtype
    want, _, _ = gradients(fn, z1.double(), z2.double(), **({**kw, "backend": "reference"} if name in PAIRWISE
                                                             else kw))
    torch.testing.assert_close(value.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss_fn", list(every_loss()))
def test_embeddings_without_grad_give_the_same_value(loss_fn):
    z1, z2 = views()
    torch.manual_seed(0)
    plain = loss_fn(z1, z2)
    with torch.no_grad():
        torch.manual_seed(0)  # the same critic initialisation for the module
        assert torch.equal(loss_fn(z1, z2), plain)


# ---------------------------------------------------------------------------------------------
# Hyperparameters: invalid ones name themselves; extreme valid ones give a finite loss or an
# error naming an argument
# ---------------------------------------------------------------------------------------------

HYPERPARAMETERS = {  # loss -> (its keywords that must be > 0, those that must be >= 0)
    "fmicl": (["sigma", "tau", "mu", "tsallis_alpha"], ["alpha"]),
    "infonce": (["tau"], []),
    "align_uniform": (["align_alpha", "t"], ["lambda_uniform"]),
    "rpc": (["tau"], ["alpha", "beta", "gamma"]),
    "emmi": (["eps"], []),
}
INVALID = [0, -1.0, math.nan, math.inf, -math.inf, True, "0.5", None]


def _call(name, backend, **kw):
    z1, z2 = views()
    if name in REFERENCE_ONLY:
        return REFERENCE_ONLY[name](z1, z2, **kw)
    if name == "fmicl" and "tau" in kw:
        kw["similarity"] = "cosine"
    return PAIRWISE[name](z1, z2, backend=backend, **kw)


def _keywords():
    for name, (positive, nonnegative) in HYPERPARAMETERS.items():
        for key in positive + nonnegative:
            for backend in BACKENDS if name in PAIRWISE else ["reference"]:
                yield pytest.param(name, key, key in positive, backend, id=f"{name}-{key}-{backend}")


@pytest.mark.parametrize("name,key,positive,backend", list(_keywords()))
def test_invalid_hyperparameters_name_themselves(name, key, positive, backend):
    for value in INVALID:
        if value == 0 and not positive:
            continue  # a weight of 0 drops its term
        with pytest.raises(LossArgumentError) as info:
            _call(name, backend, **{key: value})
        assert info.value.argument == key, value


@pytest.mark.parametrize("name,key,positive,backend", list(_keywords()))
def test_extreme_hyperparameters_give_a_finite_loss_or_name_an_argument(name, key, positive, backend):
    values = [1e-300, 1e-30, 1e30, 1e300] + ([] if positive else [0.0])
    for value in values:
        try:
            loss = _call(name, backend, **{key: value})
        except NonFiniteLossError as err:
            assert err.argument is not None and f"{err.argument}=" in str(err), (value, str(err))
        else:
            assert torch.isfinite(loss), value
