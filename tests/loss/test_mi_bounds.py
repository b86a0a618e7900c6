"""MI bounds: hand values, the correlated-Gaussian benchmark of LOSSES.md with the exact critic,
InfoNCE <= log K, and a trained critic approaching the exact one."""

import math

import pytest
import torch

from fmicl_engine.loss import BilinearCritic, ConcatCritic, MIBoundLoss, SeparableCritic, mi_bound

K = 64
DIM = 20

# LOSSES.md: true MI -> {bound: (mean, std)} over 2,000 batches of K = 64 with the exact critic.
TABLE = {
    2: {"infonce": (1.82, 0.19), "nwj": (2.01, 0.25), "dv": (2.01, 0.25)},
    4: {"infonce": (3.08, 0.19), "nwj": (4.00, 0.55), "dv": (4.06, 0.44)},
    6: {"infonce": (3.74, 0.13), "nwj": (5.92, 2.19), "dv": (6.20, 0.72)},
    8: {"infonce": (4.03, 0.07), "nwj": (8.04, 3.20), "dv": (8.62, 0.99)},
    10: {"infonce": (4.12, 0.04), "nwj": (9.99, 11.6), "dv": (11.31, 1.35)},
}


def rho_of(mi):
    return math.sqrt(1 - math.exp(-mi / 10))


def sample(mi, batch_shape, generator, dtype=torch.float32):
    """(x, y), each (*batch_shape, DIM): y = rho x + sqrt(1 - rho^2) e."""
    rho = rho_of(mi)
    x = torch.randn(*batch_shape, DIM, generator=generator, dtype=dtype)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(*batch_shape, DIM, generator=generator, dtype=dtype)


def exact_log_ratio(x, y, mi):
    """T_ij = log r(x_i, y_j) = -10 log(1 - rho^2) - |y_j - rho x_i|^2 / (2(1 - rho^2)) + |y_j|^2 / 2."""
    rho = rho_of(mi)
    x2, y2 = x.square().sum(-1), y.square().sum(-1)
    dist = y2.unsqueeze(-2) - 2 * rho * x @ y.transpose(-1, -2) + rho**2 * x2.unsqueeze(-1)  # ... x K x K
    return -10 * math.log(1 - rho**2) - dist / (2 * (1 - rho**2)) + y2.unsqueeze(-2) / 2


def test_bounds_match_hand_computation():
    scores = torch.tensor([[1.0, -0.5, 0.3], [0.2, 2.0, -1.0], [0.7, 0.1, 0.4]], dtype=torch.float64)
    t = scores.tolist()
    k = 3
    diag = sum(t[i][i] for i in range(k)) / k
    off = [math.exp(t[i][j]) for i in range(k) for j in range(k) if i != j]
    infonce = sum(t[i][i] - math.log(sum(math.exp(v) for v in t[i]) / k) for i in range(k)) / k
    assert mi_bound(scores, "infonce").item() == pytest.approx(infonce, rel=1e-12)
    assert mi_bound(scores, "nwj").item() == pytest.approx(diag - math.exp(-1) * sum(off) / len(off), rel=1e-12)
    assert mi_bound(scores, "dv").item() == pytest.approx(diag - math.log(sum(off) / len(off)), rel=1e-12)
    # Leading dimensions are independent batches.
    stacked = torch.stack([scores, 2 * scores])
    for bound in ("infonce", "nwj", "dv"):
        torch.testing.assert_close(mi_bound(stacked, bound), torch.stack([mi_bound(scores, bound),
                                                                          mi_bound(2 * scores, bound)]))


@pytest.mark.parametrize("mi", sorted(TABLE))
def test_exact_critic_reproduces_the_benchmark_table(mi):
    batches = 2000
    g = torch.Generator().manual_seed(mi)
    x, y = sample(mi, (batches, K), g, dtype=torch.float64)
    log_ratio = exact_log_ratio(x, y, mi)
    estimates = {"infonce": mi_bound(log_ratio, "infonce"), "nwj": mi_bound(1 + log_ratio, "nwj"),
                 "dv": mi_bound(log_ratio, "dv")}
    assert (estimates["infonce"] <= math.log(K) + 1e-12).all()
    for bound, values in estimates.items():
        mean, std = TABLE[mi][bound]
        # Both means are sample means over 2,000 batches; 4 standard errors plus the table's rounding.
        tolerance = 4 * math.sqrt((std**2 + values.std().item() ** 2) / batches) + 0.005
        assert values.mean().item() == pytest.approx(mean, abs=tolerance), bound
        # Spreads, where they are estimable: NWJ's variance grows exponentially with MI (heavy tails).
        if bound != "nwj" or mi == 2:
            assert values.std().item() == pytest.approx(std, rel=0.12), bound


def test_infonce_never_exceeds_log_k():
    g = torch.Generator().manual_seed(3)
    for scale in (1.0, 30.0, 1e3):
        scores = scale * torch.randn(50, K, K, generator=g, dtype=torch.float64)
        scores.diagonal(dim1=-2, dim2=-1).add_(scale * 10)  # positives far above every negative
        assert (mi_bound(scores, "infonce") <= math.log(K) + 1e-12).all()
    assert mi_bound(scores, "infonce").mean().item() == pytest.approx(math.log(K), rel=1e-9)


@pytest.mark.parametrize("critic_class", [BilinearCritic, SeparableCritic, ConcatCritic])
def test_critics_score_every_pair(critic_class):
    torch.manual_seed(0)
    critic = critic_class(5)
    torch.nn.init.normal_(next(critic.parameters()))  # bilinear starts at zero
    x, y = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    scores = critic(x, y)
    assert scores.shape == (2, 4, 4)
    pairwise = torch.stack([torch.stack([critic(x[:, i:i + 1], y[:, j:j + 1])[:, 0, 0] for j in range(4)], -1)
                            for i in range(4)], -2)
    torch.testing.assert_close(scores, pairwise)
    if critic_class is ConcatCritic:  # one MLP on [u, v]
        u_v = torch.cat([x[0, 1], y[0, 2]])
        direct = critic.layer2(torch.relu(critic.layer1(u_v)))
        torch.testing.assert_close(scores[0, 1, 2], direct[0])
    if critic_class is SeparableCritic:  # two different MLPs, phi1 on x and phi2 on y
        direct = critic.phi1(x[0, 1]) @ critic.phi2(y[0, 2])
        torch.testing.assert_close(scores[0, 1, 2], direct)
        torch.testing.assert_close(scores[0, 2, 1], critic.phi1(x[0, 2]) @ critic.phi2(y[0, 1]))
    if critic_class is BilinearCritic:  # u^T W v with u from x, v from y
        torch.testing.assert_close(scores[0, 1, 2], x[0, 1] @ critic.weight @ y[0, 2])


def test_half_precision_scores_are_computed_in_float32():
    scores = torch.randn(6, 6, dtype=torch.float64)
    for bound in ("infonce", "nwj", "dv"):
        got = mi_bound(scores.to(torch.bfloat16), bound)
        assert got.dtype == torch.float32
        want = mi_bound(scores.to(torch.bfloat16).double(), bound)
        assert abs(got.item() - want.item()) < 1e-5


@pytest.fixture
def one_thread():
    # Hundreds of tiny steps: a second intra-op thread only adds synchronisation, and on a busy
    # machine waiting for it dominates.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_separable_critic_approaches_the_exact_critic(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    mi = 2
    loss_fn = MIBoundLoss("infonce", "separable", DIM)
    optimiser = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
    for _ in range(600):
        x, y = sample(mi, (K,), g)
        loss = loss_fn(x, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        x, y = sample(mi, (200, K), g)
        trained = mi_bound(loss_fn.critic(x, y), "infonce").mean().item()
        exact = mi_bound(exact_log_ratio(x, y, mi), "infonce").mean().item()
    assert exact == pytest.approx(TABLE[mi]["infonce"][0], abs=0.05)
    assert exact - 0.35 <= trained <= exact + 0.05
