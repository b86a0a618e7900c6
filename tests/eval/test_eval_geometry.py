"""Alignment, uniformity and similarity histograms: hand-computed values, the loss definition, chunking."""

import math

import pytest
import torch

from fmicl_engine.eval.geometry import alignment, alignment_uniformity, similarity_histograms, uniformity
from fmicl_engine.loss.reference import align_uniform

# Unit rows with exact coordinates; z1 is given rescaled (rows are L2-normalised first).
Z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
Z2 = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
SCALED_Z1 = Z1 * torch.tensor([[2.0], [0.5], [7.0]], dtype=torch.float64)


def test_alignment_by_hand():
    # |z1_i - z2_i|^2: (0.4^2 + 0.8^2) = 0.8, 0, (1 + 1) = 2.
    assert alignment(SCALED_Z1, Z2) == pytest.approx((0.8 + 0.0 + 2.0) / 3, rel=1e-12)
    # alpha = 1: the mean distance.
    assert alignment(SCALED_Z1, Z2, alpha=1) == pytest.approx((math.sqrt(0.8) + 0 + math.sqrt(2)) / 3, rel=1e-12)


def test_uniformity_by_hand():
    # z1 pairs: (e0, e1) d^2 = 2, (e0, -e0) 4, (e1, -e0) 2; t = 2.
    u1 = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    # z2 pairs: d^2 = 0.36 + 0.04 = 0.4, 0.36 + 3.24 = 3.6, 4.
    u2 = math.log((math.exp(-0.8) + math.exp(-7.2) + math.exp(-8)) / 3)
    assert uniformity(SCALED_Z1) == pytest.approx(u1, rel=1e-12)
    assert uniformity(Z2, t=1.0) == pytest.approx(math.log((math.exp(-0.4) + math.exp(-3.6) + math.exp(-4)) / 3),
                                                  rel=1e-12)
    for chunk in (1, 2, 3, 100):
        geometry = alignment_uniformity(SCALED_Z1, Z2, chunk=chunk)
        assert geometry.uniformity == pytest.approx((u1 + u2) / 2, rel=1e-12)
        assert geometry.alignment == pytest.approx(2.8 / 3, rel=1e-12)
    assert geometry.as_dict()["num_pairs"] == 3 and "alpha=2" in geometry.protocol
    # Two antipodal points: the only pair is at distance^2 4.
    assert uniformity(torch.tensor([[0.0, 3.0], [0.0, -1.0]])) == pytest.approx(-8.0, abs=1e-6)


def test_matches_the_loss_definition_and_chunking():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(37, 5, generator=g, dtype=torch.float64), torch.randn(37, 5, generator=g, dtype=torch.float64)
    # LOSSES.md: loss = L_align + lambda L_uniform, L_uniform the mean of the two views'.
    loss = align_uniform(z1, z2, align_alpha=2.0, t=2.0, lambda_uniform=1.0).item()
    only_align = align_uniform(z1, z2, align_alpha=2.0, t=2.0, lambda_uniform=0.0).item()
    for chunk in (1, 5, 36, 37, 1000):
        geometry = alignment_uniformity(z1, z2, chunk=chunk)
        assert geometry.alignment == pytest.approx(only_align, rel=1e-10)
        assert geometry.alignment + geometry.uniformity == pytest.approx(loss, rel=1e-10)
    # float32 inputs: same figures up to float32 rounding.
    low = alignment_uniformity(z1.float(), z2.float(), chunk=8)
    assert low.uniformity == pytest.approx(geometry.uniformity, abs=1e-5)


def test_histograms_by_hand():
    hist = similarity_histograms(SCALED_Z1, Z2, bins=4)  # edges -1, -0.5, 0, 0.5, 1
    assert hist.edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    # Positives: 0.6, 1 (the last bin holds 1), 0 (bins are closed on the left).
    assert hist.positive.tolist() == [0, 0, 1, 2]
    # Negatives cos(z1_i, z2_j), i != j: 0, 0 | 0.8, -1 | -0.6, 0.
    assert hist.negative.tolist() == [2, 0, 3, 1]
    for chunk in (1, 2):
        assert torch.equal(similarity_histograms(SCALED_Z1, Z2, bins=4, chunk=chunk).negative, hist.negative)
    assert hist.as_dict()["negative"] == [2, 0, 3, 1] and "all ordered pairs" in hist.protocol


def test_histograms_all_and_sampled_pairs():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    hist = similarity_histograms(z1, z2, bins=20, chunk=7)
    assert int(hist.positive.sum()) == 50 and int(hist.negative.sum()) == 50 * 49
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    cos = (u1 @ u2.T)[~torch.eye(50, dtype=torch.bool)]
    direct = torch.bincount(((cos.double() + 1) * 10).floor().long().clamp(0, 19), minlength=20)
    assert torch.equal(hist.negative, direct)
    # Sampled negatives never pair a row with itself: orthonormal views, every negative cosine is 0.
    eye = torch.eye(6)
    sampled = similarity_histograms(eye, eye, bins=10, num_negatives=1000, seed=3, chunk=64)
    assert sampled.negative.tolist() == [0] * 5 + [1000] + [0] * 4
    assert sampled.positive.tolist() == [0] * 9 + [6]
    again = similarity_histograms(z1, z2, bins=20, num_negatives=500, seed=3)
    assert torch.equal(again.negative, similarity_histograms(z1, z2, bins=20, num_negatives=500, seed=3).negative)


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.randn(1, 3))
    with pytest.raises(ValueError, match="bins"):
        similarity_histograms(Z1, Z2, bins=0)
