"""The fused backend (fused.pairwise_loss over torch.ops.fmicl.*) against the reference backend:
values and gradients, float64 (relative error <= 1e-10) and float32 (<= 1e-5 against float64),
every divergence x similarity, InfoNCE, alignment-uniformity, extreme inputs, half dtypes, and
both sets of CPU tile epilogues (AVX2 and the portable scalar one).

Tiles are small (`tile=`) and N is not a multiple of them, so every test crosses many tiles,
partial tiles and the diagonal/off-diagonal cases. Inputs are fresh random draws each run; the
seed is in every failure message.
"""

import os

import pytest
import torch

from fmicl_engine.loss import NonFiniteLossError, align_uniform_loss, fmicl_loss, fused, reference

DIVERGENCES = ["kl", "js", "pearson", "sh", "tsallis", "vlc"]
SIMILARITIES = ["gaussian", "cosine"]
TILE = 5  # rows per tile; the batches below have 2N = 22 or 26 rows


def fmicl_hp(divergence="kl", similarity="gaussian", **overrides):
    hp = dict(divergence=divergence, similarity=similarity, sigma=0.6, tau=0.4, mu=1.3, alpha=0.8,
              tsallis_alpha=1.5, normalize=True)
    hp.update(overrides)
    return hp


HP = {
    "infonce": dict(tau=0.3, normalize=True),
    "align_uniform": dict(align_alpha=2.0, t=2.0, lambda_uniform=0.7),
}


def fresh_views(n=11, d=6, dtype=torch.float64, noise=0.7):
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64)  # positives correlated
    return z1.to(dtype), z2.to(dtype), seed


def value_and_grads(fn, z1, z2):
    z1, z2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    loss = fn(z1, z2)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    return loss.detach(), torch.cat([g1, g2])


def fused_fn(objective, hp, tile=TILE):
    return lambda z1, z2: fused.pairwise_loss(objective, z1, z2, tile=tile, **hp)


def reference_fn(objective, hp):
    return lambda z1, z2: getattr(reference, objective)(z1, z2, **hp)


def gram_rounding_floor(objective, hp, dtype):
    """The absolute gradient error of forming pair terms from the Gram matrix G = Z Z^T (what the
    fused op does) instead of from differences (the reference): about eps per entry of G, times
    d log r / dG. It matters only where the loss saturates (tiny sigma) and the gradient is a
    millionth of its natural scale; elsewhere it is far below rtol * max|grad|."""
    if dtype != torch.float64:
        return 0.0
    if objective == "fmicl":
        scale = 1 / hp["sigma"] ** 2 if hp["similarity"] == "gaussian" else 1 / hp["tau"]
    else:
        scale = 1 / hp["tau"] if objective == "infonce" else 2 * hp["t"]
    return 1e-14 * scale


def assert_close_to_reference(objective, hp, z1, z2, seed, rtol, tile=TILE):
    """Fused on (z1, z2) in their dtype against the reference in float64 on the same values."""
    value, grad = value_and_grads(fused_fn(objective, hp, tile), z1, z2)
    ref_value, ref_grad = value_and_grads(reference_fn(objective, hp), z1.double(), z2.double())
    assert value.dtype == (torch.float32 if z1.dtype != torch.float64 else torch.float64)
    assert grad.dtype == z1.dtype
    value_err = abs(value.double() - ref_value).item() / max(abs(ref_value).item(), 1e-300)
    grad_scale = max(ref_grad.abs().max().item(), gram_rounding_floor(objective, hp, z1.dtype) / rtol)
    grad_err = (grad.double() - ref_grad).abs().max().item() / grad_scale
    where = f"{objective} {hp} {z1.dtype} seed={seed}: value {value.item()} vs {ref_value.item()}"
    assert value_err <= rtol, f"{where}: value rel err {value_err:.3g}"
    assert grad_err <= rtol, f"{where}: grad rel err {grad_err:.3g}"


@pytest.fixture(params=["avx2", "scalar"])
def tile_kernels(request, monkeypatch):
    """Both CPU epilogue sets (on a CPU without AVX2 both runs use the scalar one)."""
    if request.param == "scalar":
        monkeypatch.setenv("FMICL_CPU_TILES", "scalar")
    else:
        monkeypatch.delenv("FMICL_CPU_TILES", raising=False)
    return request.param


# ---------------------------------------------------------------------------------------------
# Every objective, float64 and float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_matches_reference(divergence, similarity, tile_kernels):
    z1, z2, seed = fresh_views()
    assert_close_to_reference("fmicl", fmicl_hp(divergence, similarity), z1, z2, seed, rtol=1e-10)
    z1, z2, seed = fresh_views(n=13, dtype=torch.float32)
    assert_close_to_reference("fmicl", fmicl_hp(divergence, similarity), z1, z2, seed, rtol=1e-5)


@pytest.mark.parametrize("objective", ["infonce", "align_uniform"])
def test_infonce_and_align_uniform_match_reference(objective, tile_kernels):
    z1, z2, seed = fresh_views()
    assert_close_to_reference(objective, HP[objective], z1, z2, seed, rtol=1e-10)
    z1, z2, seed = fresh_views(n=13, dtype=torch.float32)
    assert_close_to_reference(objective, HP[objective], z1, z2, seed, rtol=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_unnormalised_gaussian_and_alpha_zero(divergence):
    z1, z2, seed = fresh_views()
    scale = torch.exp(torch.empty(11, 1, dtype=torch.float64).uniform_(-1, 1))  # norms 0.4 .. 2.7
    hp = fmicl_hp(divergence, "gaussian", normalize=False, sigma=2.0)
    assert_close_to_reference("fmicl", hp, z1 * scale, z2 * scale, seed, rtol=1e-10)
    assert_close_to_reference("fmicl", fmicl_hp(divergence, "cosine", alpha=0.0), z1, z2, seed, rtol=1e-10)


@pytest.mark.parametrize("tile", [1, 2, 7, 0])
def test_tile_sizes_give_the_same_loss(tile):
    z1, z2, seed = fresh_views()
    for objective, hp in [("fmicl", fmicl_hp("js", "gaussian")), ("infonce", HP["infonce"]),
                          ("align_uniform", HP["align_uniform"])]:
        assert_close_to_reference(objective, hp, z1, z2, seed, rtol=1e-10, tile=tile)


# ---------------------------------------------------------------------------------------------
# Extreme inputs
# ---------------------------------------------------------------------------------------------


def near_duplicates(z1, z2):
    return z1, z1 + 1e-7 * torch.randn_like(z1)  # D ~ 1e-14: |a|^2 + |b|^2 - 2G rounds below 0


def antipodal(z1, z2):
    return z1, -z1


def mixed_norms(z1, z2):
    scale = torch.exp(torch.empty(z1.shape[0], 1, dtype=z1.dtype).uniform_(-7, 7))  # 1e-3 .. 1e3
    return z1 * scale, z2 * scale.flip(0)


@pytest.mark.parametrize("shape", [near_duplicates, antipodal, mixed_norms])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_extreme_embeddings(divergence, similarity, shape):
    z1, z2, seed = fresh_views()
    z1, z2 = shape(z1, z2)
    assert_close_to_reference("fmicl", fmicl_hp(divergence, similarity), z1, z2, seed, rtol=1e-10)


@pytest.mark.parametrize("shape", [near_duplicates, antipodal, mixed_norms])
@pytest.mark.parametrize("objective", ["infonce", "align_uniform"])
def test_baselines_extreme_embeddings(objective, shape):
    z1, z2, seed = fresh_views()
    z1, z2 = shape(z1, z2)
    assert_close_to_reference(objective, HP[objective], z1, z2, seed, rtol=1e-10)


@pytest.mark.parametrize("scale", [dict(sigma=0.08), dict(sigma=50.0), dict(tau=0.02), dict(tau=50.0)])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_small_and_large_scales(divergence, scale):
    z1, z2, seed = fresh_views()
    similarity = "gaussian" if "sigma" in scale else "cosine"
    hp = fmicl_hp(divergence, similarity, **scale)
    if torch.isfinite(reference.fmicl(z1, z2, **hp)):
        assert_close_to_reference("fmicl", hp, z1, z2, seed, rtol=1e-10)
    else:  # the term overflows float64: both backends must refuse it, naming the scale
        with pytest.raises(NonFiniteLossError) as info:
            fmicl_loss(z1, z2, backend="fused", **hp)
        assert info.value.argument == ("sigma" if similarity == "gaussian" else "tau")


# The op sums exp(C/tau - 1/tau) with a fixed shift while 2/tau fits the dtype's exponent range
# (80 in float32, 700 in float64) and keeps a running maximum per row beyond: both paths here.
@pytest.mark.parametrize("tau,dtype", [(0.01, torch.float64), (100.0, torch.float64), (0.002, torch.float64),
                                       (0.02, torch.float32), (0.3, torch.float32)])
def test_infonce_small_and_large_tau(tau, dtype):
    # weakly correlated views: with tiny tau and close positives the loss is LSE - C_pos/tau with
    # both ~1/tau and their difference ~1e-5 of that, ill-conditioned in any implementation
    z1, z2, seed = fresh_views(dtype=dtype, noise=3.0)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_close_to_reference("infonce", dict(tau=tau, normalize=True), z1, z2, seed, rtol=rtol)


@pytest.mark.parametrize("t", [0.01, 15.0])
def test_uniformity_small_and_large_t(t):
    z1, z2, seed = fresh_views()
    assert_close_to_reference("align_uniform", dict(align_alpha=2.0, t=t, lambda_uniform=1.0), z1, z2, seed,
                              rtol=1e-10)


def test_overflow_raises_non_finite_error_naming_the_scale():
    z1, z2, _ = fresh_views(dtype=torch.float32)
    with pytest.raises(NonFiniteLossError, match="sigma") as info:  # SH: r^(-1/2) = e^(D / 4 sigma^2)
        fmicl_loss(z1, -z1, backend="fused", **fmicl_hp("sh", "gaussian", sigma=0.05))
    assert info.value.argument == "sigma"
    with pytest.raises(NonFiniteLossError, match="tau") as info:  # Pearson: r^2 = e^(2 C / tau)
        fmicl_loss(z1, z1, backend="fused", **fmicl_hp("pearson", "cosine", tau=0.01))
    assert info.value.argument == "tau"


# ---------------------------------------------------------------------------------------------
# Half types: computed in float32, loss in float32, gradient in the input dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("objective", ["fmicl", "infonce", "align_uniform"])
def test_half_inputs_accumulate_in_float32(objective, dtype):
    z1, z2, seed = fresh_views(dtype=dtype)
    hp = fmicl_hp("js", "gaussian") if objective == "fmicl" else HP[objective]
    value, grad = value_and_grads(fused_fn(objective, hp), z1, z2)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    # the same half values, widened: float32 arithmetic matches float64 to float32 accuracy of
    # the O(1) terms (the absolute part: JS's positive and negative terms can cancel to ~1e-4) ...
    ref_value, ref_grad = value_and_grads(reference_fn(objective, hp), z1.double(), z2.double())
    assert abs(value.double() - ref_value) <= 1e-5 * abs(ref_value) + 1e-6, f"seed={seed}"
    # ... and the gradient is only rounded to the half type at the end
    half_eps = torch.finfo(dtype).eps
    assert (grad.double() - ref_grad).abs().max() <= half_eps * ref_grad.abs().max(), f"seed={seed}"


# ---------------------------------------------------------------------------------------------
# Autograd: gradcheck through the Function, second use of the graph, no grad needed
# ---------------------------------------------------------------------------------------------


def test_gradcheck_through_the_autograd_function():
    z1, z2, _ = fresh_views(n=4, d=3)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    for objective, hp in [("fmicl", fmicl_hp("vlc", "gaussian")), ("infonce", HP["infonce"]),
                          ("align_uniform", HP["align_uniform"])]:
        assert torch.autograd.gradcheck(lambda a, b: fused.pairwise_loss(objective, a, b, tile=3, **hp), (z1, z2))


def test_backward_scales_by_the_incoming_gradient_and_no_grad_works():
    z1, z2, _ = fresh_views()
    hp = fmicl_hp("tsallis", "cosine")
    value, grad = value_and_grads(lambda a, b: 3.0 * fused.pairwise_loss("fmicl", a, b, **hp), z1, z2)
    _, grad1 = value_and_grads(lambda a, b: fused.pairwise_loss("fmicl", a, b, **hp), z1, z2)
    torch.testing.assert_close(grad, 3.0 * grad1, rtol=1e-14, atol=0)
    with torch.no_grad():
        assert fused.pairwise_loss("fmicl", z1, z2, **hp).item() == pytest.approx(value.item() / 3, rel=1e-14)


def test_repeated_runs_are_bitwise_identical():
    z1, z2, _ = fresh_views(n=40, d=16, dtype=torch.float32)
    hp = fmicl_hp("js", "gaussian")
    first = value_and_grads(fused_fn("fmicl", hp, tile=16), z1, z2)
    second = value_and_grads(fused_fn("fmicl", hp, tile=16), z1, z2)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_align_term_has_finite_gradients_for_identical_views_below_alpha_2():
    # |u1 - u2|^align_alpha at u1 == u2: the squared norm to the power alpha/2 would give 0 * inf.
    z1 = torch.randn(8, 5, dtype=torch.float64)
    z2 = z1.clone()
    z2[3:] += 0.3 * torch.randn(5, 5, dtype=torch.float64)
    grads = []
    for backend in ("fused", "reference"):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        align_uniform_loss(a, b, align_alpha=1.5, backend=backend).backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), backend
        grads.append(torch.cat([a.grad, b.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
