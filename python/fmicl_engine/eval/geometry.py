"""Feature geometry of held-out positive pairs: alignment, uniformity (Wang & Isola, ICML 2020) and the
histograms of positive- and negative-pair cosine similarities.

Inputs are the two views' embeddings z1, z2 (N, d) of N held-out images, row i of both from the
same image; every row is L2-normalised first (the definitions are on the unit sphere).

- alignment (alpha = 2): L_align = (1/N) sum_i ||z1_i - z2_i||^alpha.
- uniformity (t = 2) of one set z (N, d): L_uniform(z) = log( mean over the N(N-1)/2 distinct
  pairs i < j of exp(-t ||z_i - z_j||^2) ). The reported uniformity of a pair of views is
  (L_uniform(z1) + L_uniform(z2)) / 2, as in the align-uniform loss of LOSSES.md (each view's
  embeddings are a sample of the same feature distribution). Lower is more uniform; the minimum
  for t = 2 on a high-dimensional sphere tends to -4.
- histograms: counts over ``bins`` equal-width bins of [-1, 1] (bin b holds cosines in
  [-1 + 2b/bins, -1 + 2(b+1)/bins), the last bin also holds 1) of the N positive-pair cosines
  cos(z1_i, z2_i) and of the negative-pair cosines cos(z1_i, z2_j), i != j (one view of each of two
  different images): all N(N-1) ordered pairs, or ``num_negatives`` of them drawn uniformly with a
  seeded generator.

Everything is computed in chunks of ``chunk`` rows (memory O(chunk x N)); squared distances of
unit vectors are taken as 2 - 2 cos, clamped at 0, accumulated in float64 (float32 inputs are
multiplied in float32, float64 in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GEOMETRY_PROTOCOL = (
    "alignment (Wang & Isola, alpha={alpha}): mean over held-out positive pairs of ||z1_i - z2_i||^{alpha}; "
    "uniformity (t={t}): log of the mean over distinct pairs i<j of exp(-t ||z_i - z_j||^2), averaged over the two "
    "views; embeddings L2-normalised"
)
HISTOGRAM_PROTOCOL = (
    "counts over {bins} equal bins of [-1, 1] of the cosine similarity of positive pairs (z1_i, z2_i) and of "
    "negative pairs (z1_i, z2_j), i != j ({negatives})"
)


def _unit(z: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"{name} must be a (rows, dim) tensor, got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {z.dtype}")
    z = z.double() if z.dtype == torch.float64 else z.float()
    return F.normalize(z, dim=1)


def _pair(z1, z2) -> tuple[torch.Tensor, torch.Tensor]:
    z1, z2 = _unit(z1, "z1"), _unit(z2, "z2")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    return z1, z2.to(z1.device, z1.dtype)


def _check_chunk(chunk) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, *, alpha: float = 2.0) -> float:
    """L_align = (1/N) sum_i ||z1_i - z2_i||^alpha on L2-normalised rows."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    z1, z2 = _pair(z1, z2)
    return float(torch.linalg.vector_norm(z1 - z2, dim=1).double().pow(alpha).mean())


@torch.no_grad()
def uniformity(z: torch.Tensor, *, t: float = 2.0, chunk: int = 4096) -> float:
    """L_uniform = log mean_{i<j} exp(-t ||z_i - z_j||^2) on L2-normalised rows (N >= 2).

    Row blocks [a, b) are compared with columns [a, N), keeping the pairs j > i, and the block
    log-sum-exps are combined in float64: O(chunk x N) memory, no N x N matrix."""
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    _check_chunk(chunk)
    z = _unit(z, "z")
    n = z.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least 2 embeddings")
    parts = []
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        sq = (2.0 - 2.0 * (z[a:b] @ z[a:].T)).clamp_min(0).double()  # (b-a) x (N-a)
        keep = torch.arange(a, n, device=z.device)[None, :] > torch.arange(a, b, device=z.device)[:, None]
        parts.append(torch.logsumexp((-t * sq).masked_fill(~keep, -math.inf).flatten(), dim=0))
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(n * (n - 1) / 2))


@dataclass(frozen=True)
class Geometry:
    alignment: float
    uniformity: float
    alpha: float
    t: float
    num_pairs: int

    @property
    def protocol(self) -> str:
        return GEOMETRY_PROTOCOL.format(alpha=self.alpha, t=self.t)

    def as_dict(self) -> dict:
        return {"alignment": self.alignment, "uniformity": self.uniformity, "alpha": self.alpha, "t": self.t,
                "num_pairs": self.num_pairs, "protocol": self.protocol}


def alignment_uniformity(z1: torch.Tensor, z2: torch.Tensor, *, alpha: float = 2.0, t: float = 2.0,
                         chunk: int = 4096) -> Geometry:
    """Alignment of the pairs (z1_i, z2_i) and the uniformity (U(z1) + U(z2)) / 2 (module docstring)."""
    z1, z2 = _pair(z1, z2)
    return Geometry(alignment(z1, z2, alpha=alpha),
                    0.5 * (uniformity(z1, t=t, chunk=chunk) + uniformity(z2, t=t, chunk=chunk)),
                    float(alpha), float(t), int(z1.shape[0]))


@dataclass(frozen=True)
class SimilarityHistograms:
    """edges: (bins + 1,) float64; positive, negative: (bins,) int64 counts on the CPU."""

    edges: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    negatives: str  # "all" or "sampled"

    @property
    def protocol(self) -> str:
        which = "all ordered pairs" if self.negatives == "all" else f"{int(self.negative.sum())} sampled pairs"
        return HISTOGRAM_PROTOCOL.format(bins=len(self.positive), negatives=which)

    def as_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "positive": self.positive.tolist(), "negative": self.negative.tolist(),
                "protocol": self.protocol}


def _bin_counts(cosines: torch.Tensor, bins: int) -> torch.Tensor:
    index = ((cosines.double() + 1.0) * (bins / 2.0)).floor().long().clamp_(0, bins - 1)
    return torch.bincount(index, minlength=bins).cpu()


@torch.no_grad()
def similarity_histograms(z1: torch.Tensor, z2: torch.Tensor, *, bins: int = 100, num_negatives: int | None = None,
                          seed: int = 0, chunk: int = 4096) -> SimilarityHistograms:
    """Histograms of positive- and negative-pair cosine similarities (module docstring).

    ``num_negatives=None``: all N(N-1) pairs (z1_i, z2_j), i != j, in row chunks; otherwise that
    many pairs drawn with replacement: i uniform, j uniform among the other N - 1 rows (seeded)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    _check_chunk(chunk)
    z1, z2 = _pair(z1, z2)
    n = z1.shape[0]
    if n < 2:
        raise ValueError("similarity_histograms needs at least 2 pairs")
    positive = _bin_counts((z1 * z2).sum(1), bins)
    negative = torch.zeros(bins, dtype=torch.long)
    if num_negatives is None:
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            cos = z1[a:b] @ z2.T
            keep = torch.arange(n, device=z1.device)[None, :] != torch.arange(a, b, device=z1.device)[:, None]
            negative += _bin_counts(cos[keep], bins)
        which = "all"
    else:
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive int or None, got {num_negatives!r}")
        g = torch.Generator().manual_seed(seed)
        for a in range(0, num_negatives, chunk):
            m = min(chunk, num_negatives - a)
            i = torch.randint(0, n, (m,), generator=g)
            j = (i + 1 + torch.randint(0, n - 1, (m,), generator=g)) % n
            i, j = i.to(z1.device), j.to(z1.device)
            negative += _bin_counts((z1[i] * z2[j]).sum(1), bins)
        which = "sampled"
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)
    return SimilarityHistograms(edges, positive, negative, which)
