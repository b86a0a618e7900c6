"""MI estimates with trained critics on the correlated Gaussians of LOSSES.md (known MI)."""

import math

import pytest
import torch

from fmicl_engine.eval.mi_estimates import estimate_mi

DIM = 20



def correlated_gaussians(mi, n, seed):
    """LOSSES.md's ground truth: x, y in R^20, y = rho x + sqrt(1 - rho^2) e, MI = -10 log(1 - rho^2) nats."""
    g = torch.Generator().manual_seed(seed)
    rho = math.sqrt(1 - math.exp(-mi / 10))
    x = torch.randn(n, DIM, generator=g)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, DIM, generator=g)


def test_estimates_are_close_to_the_true_mi_and_below_it():
    mi, k = 2, 64
    x, y = correlated_gaussians(mi, 8192, seed=0)
    # Scaled and shifted views: the standardisation makes this the same problem (MI is invariant).
    result = estimate_mi(3.0 * x + 1.0, y, steps=300, batch_size=k, seed=0)
    assert result.k == k and result.num_batches == 4096 // k and not result.diverged
    # InfoNCE: <= log K, and at most the exact critic's value at K = 64 (1.82, LOSSES.md) up to noise.
    assert result.infonce <= math.log(k)
    assert 1.82 - 0.45 <= result.infonce <= 1.82 + 0.1
    # NWJ with a critic fixed before the held-out pairs is a lower bound in expectation; DV's upward
    # bias is small at MI = 2, K = 64 (LOSSES.md: 2.01 with the exact critic).
    for bound in ("nwj", "dv"):
        value = getattr(result, bound)
        stderr = result.std[bound] / math.sqrt(result.num_batches)
        assert mi - 0.7 <= value <= mi + 3 * stderr + 0.05, (bound, value)
    assert all(0 < step <= 300 for step in result.best_step.values())
    assert "InfoNCE (<= log K)" in result.protocol and result.as_dict()["mi_infonce"] == result.infonce


def test_infonce_is_capped_at_log_k_where_dv_is_not():
    mi, k = 6, 16
    x, y = correlated_gaussians(mi, 2048, seed=1)
    result = estimate_mi(x, y, steps=200, batch_size=k, seed=1)
    assert result.infonce <= math.log(k) and result.infonce > math.log(k) - 0.8
    assert result.dv > result.infonce + 0.2
    for bound in ("infonce", "nwj", "dv"):
        assert getattr(result, bound) < mi + 0.5, bound


def test_independent_views_give_zero():
    x, _ = correlated_gaussians(0.0, 2048, seed=2)
    _, y = correlated_gaussians(0.0, 2048, seed=3)
    # Bilinear critic: constant at start (0 nats); validation keeps it unless training generalises.
    result = estimate_mi(x, y, steps=150, batch_size=64, critic="bilinear", seed=2)
    for bound in ("infonce", "nwj", "dv"):
        assert abs(getattr(result, bound)) < 0.05, bound


def test_determinism_inputs_untouched_and_errors():
    x, y = correlated_gaussians(2, 512, seed=4)
    before = x.clone()
    state = torch.random.get_rng_state()
    a = estimate_mi(x, y, steps=20, batch_size=32, critic="bilinear", seed=5)
    b = estimate_mi(x, y, steps=20, batch_size=32, critic="bilinear", seed=5)
    assert (a.infonce, a.nwj, a.dv) == (b.infonce, b.nwj, b.dv)
    assert torch.equal(x, before) and torch.equal(torch.random.get_rng_state(), state)
    last = estimate_mi(x, y, steps=20, batch_size=32, critic="bilinear", seed=5, validation_fraction=0.0)
    assert last.best_step == {"infonce": 20, "nwj": 20, "dv": 20}
    with pytest.raises(ValueError, match="fewer than K"):
        estimate_mi(x[:100], y[:100], batch_size=64)
    with pytest.raises(ValueError, match="critic"):
        estimate_mi(x, y, critic="mlp")
