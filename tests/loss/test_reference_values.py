"""Reference objectives against LOSSES.md computed by hand (Python loops, ``math``), its identities,
and numerical extremes (float32 against float64, overflow handling)."""

import math

import pytest
import torch

from fmicl_engine.loss import (NonFiniteLossError, align_uniform_loss, emmi_loss, fmicl_loss, infonce_loss,
                               rpc_loss)

DIVERGENCES = ["kl", "js", "pearson", "sh", "tsallis", "vlc"]
SIMILARITIES = ["gaussian", "cosine"]


def ref(*args, **kwargs):
    return fmicl_loss(*args, backend="reference", **kwargs)


# ---------------------------------------------------------------------------------------------
# Hand computation: the table of LOSSES.md, f(u) and f'(u); f*(f'(r)) = r f'(r) - f(r)
# ---------------------------------------------------------------------------------------------


def f_and_derivative(divergence, a):
    """(f, f') of LOSSES.md's table; a = tsallis_alpha."""
    return {
        "kl": (lambda u: u * math.log(u), lambda u: math.log(u) + 1),
        "js": (lambda u: u * math.log(u) - (u + 1) * math.log((u + 1) / 2),
               lambda u: math.log(2) + math.log(u) - math.log(1 + u)),
        "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
        "sh": (lambda u: (math.sqrt(u) - 1) ** 2, lambda u: 1 - u ** -0.5),
        "tsallis": (lambda u: (u**a - u) / (a - 1), lambda u: (a * u ** (a - 1) - 1) / (a - 1)),
        "vlc": (lambda u: (u - 1) ** 2 / (u + 1), lambda u: 1 - 4 / (1 + u) ** 2),
    }[divergence]


def rows(z):
    return [[float(x) for x in row] for row in z.tolist()]


def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def dot(u, v):
    return sum(x * y for x, y in zip(u, v))


def sqdist(u, v):
    return sum((x - y) ** 2 for x, y in zip(u, v))


def anchors(z1, z2, normalize):
    """Z = [z1; z2] as lists, the positive index p(a) and the negatives of each anchor."""
    zs = rows(z1) + rows(z2)
    if normalize:
        zs = [unit(v) for v in zs]
    two_n = len(zs)
    positive = [(a + two_n // 2) % two_n for a in range(two_n)]
    negatives = [[b for b in range(two_n) if b not in (a, positive[a])] for a in range(two_n)]
    return zs, positive, negatives


def conjugate_column(divergence, a):
    """The table's closed form of f*(f'(r)), evaluated on r."""
    return {
        "kl": lambda r: r,
        "js": lambda r: math.log(1 + r) - math.log(2),
        "pearson": lambda r: r * r - 1,
        "sh": lambda r: math.sqrt(r) - 1,
        "tsallis": lambda r: r**a,
        "vlc": lambda r: (3 * r + 1) * (r - 1) / (r + 1) ** 2,
    }[divergence]


def hand_fmicl(z1, z2, divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize,
               conjugate="definition"):
    """-I_f by loops. conjugate="definition": f*(f'(r)) as r f'(r) - f(r), which checks the table's
    closed forms but cancels catastrophically at large r; "table": the closed forms themselves."""
    zs, positive, negatives = anchors(z1, z2, normalize)
    f, fprime = f_and_derivative(divergence, tsallis_alpha)
    if conjugate == "definition":
        conjugate_of = lambda u: u * fprime(u) - f(u)  # noqa: E731
    else:
        conjugate_of = conjugate_column(divergence, tsallis_alpha)

    def r(a, b):
        if similarity == "gaussian":
            return mu * math.exp(-sqdist(zs[a], zs[b]) / (2 * sigma**2))
        return mu * math.exp(dot(unit(zs[a]), unit(zs[b])) / tau)

    two_n = len(zs)
    pos = sum(fprime(r(a, positive[a])) for a in range(two_n)) / two_n
    neg_terms = [conjugate_of(r(a, b)) for a in range(two_n) for b in negatives[a]]
    return -(pos - alpha * sum(neg_terms) / len(neg_terms))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_table_derivatives_are_derivatives_of_f(divergence):
    # Checks the transcription of the table used by the hand computation below.
    f, fprime = f_and_derivative(divergence, 1.5)
    for u in (0.3, 1.0, 2.7):
        h = 1e-6
        assert fprime(u) == pytest.approx((f(u + h) - f(u - h)) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_matches_hand_computation(divergence, similarity, normalize):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.6
    z2 = torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.6
    hp = dict(sigma=0.8, tau=0.7, mu=1.3, alpha=0.7, tsallis_alpha=1.5, normalize=normalize)
    for tsallis_alpha in ([1.5, 0.6] if divergence == "tsallis" else [1.5]):
        hp["tsallis_alpha"] = tsallis_alpha
        expected = hand_fmicl(z1, z2, divergence, similarity, **hp)
        got = ref(z1, z2, divergence, similarity, **hp)
        assert got.dtype == torch.float64 and got.dim() == 0
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)



@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fmicl_matches_hand_computation_at_large_log_similarity(divergence):
    # s = C/tau up to ~22: log(1 + r) - log r = e^-22 is still resolved in float64, so a softplus
    # that switches to the identity early (torch's default threshold, 20) is caught.
    g = torch.Generator().manual_seed(16)
    centre = torch.randn(1, 4, generator=g, dtype=torch.float64)  # every row near one direction
    z1 = centre + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    z2 = centre + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    hp = dict(sigma=0.8, tau=0.045, mu=1.0, alpha=0.7, tsallis_alpha=1.5, normalize=True)
    expected = hand_fmicl(z1, z2, divergence, "cosine", **hp, conjugate="table")
    got = ref(z1, z2, divergence, "cosine", **hp)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)

def test_infonce_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    tau = 0.3
    zs, positive, _ = anchors(z1, z2, normalize=True)
    terms = []
    for a in range(6):
        denominator = sum(math.exp(dot(zs[a], zs[b]) / tau) for b in range(6) if b != a)
        terms.append(-math.log(math.exp(dot(zs[a], zs[positive[a]]) / tau) / denominator))
    expected = sum(terms) / 6
    for normalize in (True, False):  # the cosine normalises either way
        got = infonce_loss(z1 * 3, z2 * 3, tau=tau, normalize=normalize, backend="reference")
        assert got.item() == pytest.approx(expected, rel=1e-12)


def test_align_uniform_matches_hand_computation():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    a, b = [unit(v) for v in rows(z1)], [unit(v) for v in rows(z2)]
    for align_alpha, t, lam in [(2.0, 2.0, 1.0), (1.5, 0.7, 0.3)]:
        align = sum(sqdist(u, v) ** (align_alpha / 2) for u, v in zip(a, b)) / 4

        def log_mean_exp_pairs(vs):
            pairs = [math.exp(-t * sqdist(vs[i], vs[j])) for i in range(4) for j in range(i + 1, 4)]
            return math.log(sum(pairs) / len(pairs))

        expected = align + lam * 0.5 * (log_mean_exp_pairs(a) + log_mean_exp_pairs(b))
        got = align_uniform_loss(z1, z2, align_alpha=align_alpha, t=t, lambda_uniform=lam, backend="reference")
        assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_rpc_matches_hand_computation(normalize):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    tau, alpha, beta, gamma = 0.4, 0.3, 0.01, 0.1
    zs, positive, negatives = anchors(z1, z2, normalize)
    pos = [dot(zs[a], zs[positive[a]]) / tau for a in range(6)]
    neg = [dot(zs[a], zs[b]) / tau for a in range(6) for b in negatives[a]]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    j = mean(pos) - alpha * mean(neg) - beta / 2 * mean([s * s for s in pos]) - gamma / 2 * mean([s * s for s in neg])
    got = rpc_loss(z1, z2, tau=tau, alpha=alpha, beta=beta, gamma=gamma, normalize=normalize)
    assert got.item() == pytest.approx(-j, rel=1e-12)


def hand_logdet(m):
    """log det of a symmetric positive-definite list-of-lists matrix by Gaussian elimination."""
    m = [row[:] for row in m]
    total = 0.0
    for k in range(len(m)):
        total += math.log(m[k][k])
        for i in range(k + 1, len(m)):
            factor = m[i][k] / m[k][k]
            for j in range(k, len(m)):
                m[i][j] -= factor * m[k][j]
    return total


def test_emmi_matches_hand_computation():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(7, 2, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(7, 2, generator=g, dtype=torch.float64)
    eps = 1e-3
    joint_rows = [u + v for u, v in zip(rows(z1), rows(z2))]  # N x 2d
    n, width = len(joint_rows), 4
    means = [sum(r[k] for r in joint_rows) / n for k in range(width)]
    cov = [[sum((r[i] - means[i]) * (r[j] - means[j]) for r in joint_rows) / (n - 1) + (eps if i == j else 0.0)
            for j in range(width)] for i in range(width)]
    block = lambda lo: [row[lo:lo + 2] for row in cov[lo:lo + 2]]  # noqa: E731
    mi = 0.5 * (hand_logdet(block(0)) + hand_logdet(block(2)) - hand_logdet(cov))
    assert emmi_loss(z1, z2, eps=eps).item() == pytest.approx(-mi, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Identities of LOSSES.md
# ---------------------------------------------------------------------------------------------


def pair64(seed, n=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("tsallis_alpha,same_as", [(2.0, "pearson"), (0.5, "sh")])
def test_tsallis_special_cases(tsallis_alpha, same_as, similarity):
    z1, z2 = pair64(5)
    hp = dict(sigma=0.7, tau=0.6, mu=1.2)
    tsallis = ref(z1, z2, "tsallis", similarity, tsallis_alpha=tsallis_alpha, alpha=1.0, **hp)
    other = ref(z1, z2, same_as, similarity, alpha=1.0, **hp)
    assert tsallis.item() == pytest.approx(other.item(), rel=1e-12, abs=1e-12)
    # Other alpha: I differs by the constant 1 - alpha, so the gradients agree.
    tsallis = ref(z1, z2, "tsallis", similarity, tsallis_alpha=tsallis_alpha, alpha=0.3, **hp)
    other = ref(z1, z2, same_as, similarity, alpha=0.3, **hp)
    assert (tsallis - other).item() == pytest.approx(-(1 - 0.3), rel=1e-10)
    g_tsallis = torch.autograd.grad(tsallis, (z1, z2))
    g_other = torch.autograd.grad(other, (z1, z2))
    for a, b in zip(g_tsallis, g_other):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_kl_gaussian_positive_term_is_cosine_over_sigma_squared():
    z1, z2 = pair64(6)
    sigma, mu = 0.6, 1.7
    cos = torch.nn.functional.cosine_similarity(z1, z2).mean()
    loss = ref(z1, z2, "kl", "gaussian", sigma=sigma, mu=mu, alpha=0.0)
    # D = 2 - 2C on the unit sphere: f'(r) = log mu - (1 - C)/sigma^2 + 1.
    assert loss.item() == pytest.approx(-(cos.item() / sigma**2 + math.log(mu) + 1 - 1 / sigma**2), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Extremes: float32 against float64 on the same inputs, overflow reported, not returned
# ---------------------------------------------------------------------------------------------


def assert_matches_float64(z1, z2, divergence, similarity, rtol, **hp):
    z1, z2 = z1.float(), z2.float()
    got = ref(z1, z2, divergence, similarity, **hp)
    want = ref(z1.double(), z2.double(), divergence, similarity, **hp)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(want.item(), rel=rtol, abs=rtol)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_near_duplicate_positives(divergence):
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 1e-6 * torch.randn(8, 16, generator=g)
    for similarity in SIMILARITIES:
        assert_matches_float64(z1, z2, divergence, similarity, rtol=2e-5, sigma=0.05, tau=0.1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_close_points_far_from_origin_use_exact_distances(divergence):
    # Rows 1e3 from the origin, 1e-2 apart: |a|^2 + |b|^2 - 2ab loses D to cancellation in float32
    # (absolute error ~1e-1 against D ~ 1e-3); differences keep it to float32's relative precision.
    g = torch.Generator().manual_seed(8)
    centre = 1e3 * torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1)
    z1 = centre + 1e-2 * torch.randn(6, 8, generator=g)
    z2 = centre + 1e-2 * torch.randn(6, 8, generator=g)
    assert_matches_float64(z1, z2, divergence, "gaussian", rtol=1e-4, sigma=0.02, normalize=False)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_antipodal_views(divergence):
    g = torch.Generator().manual_seed(9)
    z1 = torch.randn(6, 8, generator=g)
    for similarity in SIMILARITIES:
        assert_matches_float64(z1, -z1, divergence, similarity, rtol=1e-5, sigma=0.5, tau=0.2)


@pytest.mark.parametrize("divergence", ["kl", "js", "pearson", "tsallis", "vlc"])
def test_far_apart_unnormalised(divergence):
    g = torch.Generator().manual_seed(10)
    z1, z2 = 100 * torch.randn(6, 8, generator=g), 100 * torch.randn(6, 8, generator=g)
    assert_matches_float64(z1, z2, divergence, "gaussian", rtol=1e-5, sigma=0.5, normalize=False)


def test_far_apart_unnormalised_sh_reports_sigma():
    # f'(r) = 1 - r^(-1/2) = 1 - exp(D/(4 sigma^2)) with D ~ 1e5: beyond float64 too.
    g = torch.Generator().manual_seed(10)
    z1, z2 = 100 * torch.randn(6, 8, generator=g), 100 * torch.randn(6, 8, generator=g)
    with pytest.raises(NonFiniteLossError) as info:
        ref(z1.double(), z2.double(), "sh", "gaussian", sigma=0.5, normalize=False)
    assert info.value.argument == "sigma"
    assert "divergence='sh'" in str(info.value) and "sigma=0.5" in str(info.value)


@pytest.mark.parametrize("divergence", ["js", "vlc"])
def test_small_tau_does_not_overflow_where_the_naive_formula_does(divergence):
    g = torch.Generator().manual_seed(11)
    z1 = torch.randn(6, 8, generator=g)
    z2 = z1 + 0.01 * torch.randn(6, 8, generator=g)
    tau = 0.01  # r = exp(C/tau) ~ e^100: inf in float32
    # The formulas of the table evaluated on r itself: inf - inf and inf/inf.
    c = torch.nn.functional.cosine_similarity(z1, z2)
    r = torch.exp(c / tau)
    assert torch.isinf(r).any()
    if divergence == "js":
        naive = math.log(2) + torch.log(r) - torch.log1p(r)
    else:
        naive = 1 - 4 / (1 + r) ** 2 - (3 * r + 1) * (r - 1) / (r + 1) ** 2
    assert not torch.isfinite(naive).all()
    assert_matches_float64(z1, z2, divergence, "cosine", rtol=1e-5, tau=tau)


def test_small_sigma_is_accurate_where_the_loss_is_representable():
    g = torch.Generator().manual_seed(12)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 0.05 * torch.randn(8, 16, generator=g)
    for divergence in ["kl", "js", "pearson", "vlc"]:  # terms bounded or linear in s = -D/(2 sigma^2)
        assert_matches_float64(z1, z2, divergence, "gaussian", rtol=1e-5, sigma=1e-3)


@pytest.mark.parametrize("divergence,similarity,scale,value", [
    ("sh", "gaussian", "sigma", 1e-3),       # 1 - r^(-1/2) = 1 - exp(D / (4 sigma^2))
    ("tsallis", "gaussian", "sigma", 1e-3),  # r^(alpha - 1) with tsallis_alpha = 0.5
    ("kl", "cosine", "tau", 1e-3),           # f*(f'(r)) = r = exp(C / tau)
])
def test_overflow_raises_naming_the_scale(divergence, similarity, scale, value):
    g = torch.Generator().manual_seed(13)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    with pytest.raises(NonFiniteLossError) as info:
        ref(z1, z2, divergence, similarity, tsallis_alpha=0.5, **{scale: value})
    assert info.value.argument == scale
    assert f"{scale}={value}" in str(info.value) and f"divergence={divergence!r}" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    g = torch.Generator().manual_seed(14)
    z1 = torch.randn(6, 8, generator=g).to(dtype).requires_grad_()
    z2 = torch.randn(6, 8, generator=g).to(dtype).requires_grad_()
    for loss_fn in [lambda a, b: ref(a, b, "js", "gaussian"),
                    lambda a, b: infonce_loss(a, b, backend="reference"),
                    lambda a, b: align_uniform_loss(a, b, backend="reference"),
                    rpc_loss, emmi_loss]:
        loss = loss_fn(z1, z2)
        assert loss.dtype == torch.float32
        assert loss.item() == loss_fn(z1.detach().float(), z2.detach().float()).item()
        loss.backward()
        assert z1.grad.dtype == dtype and torch.isfinite(z1.grad).all()
        z1.grad = z2.grad = None


def test_duplicate_rows_give_finite_gradients():
    # Zero distances (identical views, identical images in a batch) sit where |d| and sqrt have
    # infinite slope; the losses are smooth there and their gradients must stay finite.
    g = torch.Generator().manual_seed(15)
    z1 = torch.randn(4, 3, generator=g)
    z1[1] = z1[0]
    z1.requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    losses = [ref(z1, z2, d, s) for d in DIVERGENCES for s in SIMILARITIES]
    losses += [align_uniform_loss(z1, z2, align_alpha=a, backend="reference") for a in (2.0, 1.5, 1.0)]
    losses += [infonce_loss(z1, z2, backend="reference"), rpc_loss(z1, z2)]
    for loss in losses:
        grads = torch.autograd.grad(loss, (z1, z2))
        assert all(torch.isfinite(grad).all() for grad in grads)
