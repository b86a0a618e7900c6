"""Hard inputs for the pairwise ops, shared by test_cuda_emulated.py (the CUDA kernels emulated on
the CPU) and test_cuda_pairwise.py (on a GPU), both against the CPU op in float64.

HARD_CASES: alpha = 0 with negative terms that overflow (0 * inf would be NaN: the kernels must
skip them), tiny sigma and tau, a large t, near-duplicate and far-apart rows. The tests run them
at sizes that are not a multiple of the tile.
"""

from __future__ import annotations

import torch


def sample_z(dtype=torch.float64, rows=40, d=6, seed=0):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def fmicl_kwargs(divergence, similarity, normalize=True, **overrides):
    return dict(dict(divergence=divergence, similarity=similarity, sigma=0.8, tau=0.5, mu=1.2, alpha=0.9,
                     tsallis_alpha=1.7, normalize=normalize), **overrides)


def near_duplicates(rows):  # D ~ 1e-14: |a|^2 + |b|^2 - 2G rounds below 0, the positive's r ~ mu
    z1 = sample_z(rows=rows // 2, seed=1)
    return torch.cat([z1, z1 + 1e-7 * sample_z(rows=rows // 2, seed=2)])


def far_apart(rows):  # unnormalised rows of norm ~1e3: every r of the Gaussian similarity underflows
    return 1e3 * sample_z(rows=rows, seed=3)


def antipodal(rows):  # every positive at cosine -1
    z1 = sample_z(rows=rows // 2, seed=4)
    return torch.cat([z1, -z1])


def correlated(rows):
    z1 = sample_z(rows=rows // 2, seed=5)
    return torch.cat([z1, z1 + 0.3 * sample_z(rows=rows // 2, seed=6)])


def weakly_correlated(rows):  # InfoNCE with a tiny tau: close positives would make every loss term 0
    z1 = sample_z(rows=rows // 2, seed=7)
    return torch.cat([z1, z1 + 3.0 * sample_z(rows=rows // 2, seed=8)])


# name -> (op name, keywords but anchors, needs_grad and tile; embeddings (rows) -> (rows, d))
HARD_CASES = {
    "kl-cosine-tiny-tau-alpha-0": ("fmicl_fwd_bwd", fmicl_kwargs("kl", "cosine", tau=1e-3, alpha=0.0), correlated),
    "pearson-cosine-tiny-tau-alpha-0": ("fmicl_fwd_bwd", fmicl_kwargs("pearson", "cosine", tau=1e-3, alpha=0.0),
                                        antipodal),
    "tsallis-gaussian-raw-alpha-0": ("fmicl_fwd_bwd", fmicl_kwargs("tsallis", "gaussian", normalize=False,
                                                                   mu=1e300, alpha=0.0), correlated),
    "js-gaussian-tiny-sigma": ("fmicl_fwd_bwd", fmicl_kwargs("js", "gaussian", sigma=1e-3), correlated),
    "vlc-gaussian-tiny-sigma-alpha-0": ("fmicl_fwd_bwd", fmicl_kwargs("vlc", "gaussian", sigma=1e-3, alpha=0.0),
                                        correlated),
    "sh-gaussian-tiny-sigma": ("fmicl_fwd_bwd", fmicl_kwargs("sh", "gaussian", sigma=0.02), correlated),  # overflows
    "kl-gaussian-near-duplicates": ("fmicl_fwd_bwd", fmicl_kwargs("kl", "gaussian", sigma=1e-3), near_duplicates),
    "sh-gaussian-near-duplicates": ("fmicl_fwd_bwd", fmicl_kwargs("sh", "gaussian", sigma=0.1), near_duplicates),
    "js-cosine-near-duplicates": ("fmicl_fwd_bwd", fmicl_kwargs("js", "cosine", tau=0.01), near_duplicates),
    "kl-gaussian-far-apart": ("fmicl_fwd_bwd", fmicl_kwargs("kl", "gaussian", normalize=False), far_apart),
    "vlc-gaussian-far-apart": ("fmicl_fwd_bwd", fmicl_kwargs("vlc", "gaussian", normalize=False), far_apart),
    "pearson-gaussian-far-apart": ("fmicl_fwd_bwd", fmicl_kwargs("pearson", "gaussian", normalize=False), far_apart),
    "tsallis-cosine-antipodal": ("fmicl_fwd_bwd", fmicl_kwargs("tsallis", "cosine", tau=0.05), antipodal),
    "infonce-tiny-tau": ("infonce_fwd_bwd", dict(tau=1e-3), weakly_correlated),
    "infonce-near-duplicates": ("infonce_fwd_bwd", dict(tau=0.05), near_duplicates),
    "infonce-antipodal": ("infonce_fwd_bwd", dict(tau=0.01), antipodal),
    "uniformity-large-t": ("uniformity_fwd_bwd", dict(t=20.0), correlated),
    "uniformity-near-duplicates": ("uniformity_fwd_bwd", dict(t=2.0), near_duplicates),
}




def rank_block(rows: int) -> torch.Tensor:
    """Some of one rank's anchors (a block of z1 rows and their z2 rows), on the host."""
    half = rows // 2
    return torch.cat([torch.arange(3, half // 2), torch.arange(half + 3, half + half // 2)])


def assert_same_result(got, want, rtol):
    """Equal where the CPU op is finite (the gradient relative to its largest finite entry), and
    non-finite in the same entries where it overflows. got, want: (value, gradient)."""
    for name, g, w in zip(("value", "gradient"), got, want):
        finite = torch.isfinite(w)
        assert torch.equal(torch.isfinite(g), finite), f"{name}: non-finite entries differ"
        scale = w[finite].abs().max().item() if finite.any() else 0.0
        torch.testing.assert_close(g[finite], w[finite], rtol=rtol, atol=rtol * scale, msg=name)
