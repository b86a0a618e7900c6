"""Pure-PyTorch reference of the objectives of LOSSES.md; autograd provides the gradients.

These functions take validated keywords (see validation.py) and compute in ``compute_dtype`` of the
input (float32 for float16/bfloat16). They are the definition the fused backends are tested
against, so they favour exactness over speed: squared distances are formed from differences
(``cdist`` without the matmul expansion), never as ``|a|^2 + |b|^2 - 2a.b``, and every f-term is
evaluated from s = log r without forming r first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fmicl_engine.loss.validation import Failure, NonFiniteLossError, compute_dtype, raise_if

LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# The f-terms of LOSSES.md, as functions of s = log r
# ---------------------------------------------------------------------------------------------


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x). F.softplus returns x above ``threshold``; at 40, e^-40 is below float64's
    resolution (the default 20 is tuned for float32) and e^40 still fits in float32."""
    return F.softplus(x, threshold=40.0)


def positive_term(divergence: str, s: torch.Tensor, tsallis_alpha: float) -> torch.Tensor:
    """f'(r) for s = log r."""
    if divergence == "kl":
        return s + 1
    if divergence == "js":
        return LOG2 - _softplus(-s)  # log 2 + log r - log(1 + r)
    if divergence == "pearson":
        return 2 * torch.expm1(s)  # 2(r - 1)
    if divergence == "sh":
        return -torch.expm1(-0.5 * s)  # 1 - r^(-1/2)
    if divergence == "tsallis":
        a = tsallis_alpha
        return (a * torch.exp((a - 1) * s) - 1) / (a - 1)
    if divergence == "vlc":
        return 1 - 4 * torch.sigmoid(-s).square()  # 1/(1 + r) = sigmoid(-s)
    raise AssertionError(divergence)  # validated upstream


def negative_term(divergence: str, s: torch.Tensor, tsallis_alpha: float) -> torch.Tensor:
    """f*(f'(r)) = r f'(r) - f(r) for s = log r."""
    if divergence == "kl":
        return torch.exp(s)
    if divergence == "js":
        return _softplus(s) - LOG2
    if divergence == "pearson":
        return torch.expm1(2 * s)  # r^2 - 1
    if divergence == "sh":
        return torch.expm1(0.5 * s)  # r^(1/2) - 1
    if divergence == "tsallis":
        return torch.exp(tsallis_alpha * s)
    if divergence == "vlc":
        # (3r + 1)(r - 1)/(r + 1)^2 = (1 + 2 sigmoid(s)) tanh(s/2): bounded, no inf/inf at large r.
        return (1 + 2 * torch.sigmoid(s)) * torch.tanh(0.5 * s)
    raise AssertionError(divergence)


# ---------------------------------------------------------------------------------------------
# Batch layout: Z = [z1; z2], anchor a, positive p(a) = (a + N) mod 2N, negatives the rest
# ---------------------------------------------------------------------------------------------


def stack_views(z1: torch.Tensor, z2: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Z = [z1; z2] (2N x d) in the compute dtype, rows L2-normalised if asked."""
    z = torch.cat([z1, z2]).to(compute_dtype(z1.dtype))
    return F.normalize(z, dim=1) if normalize else z


def other_index(two_n: int, device) -> torch.Tensor:
    """(2N x 2N-1) column indices b != a for each anchor row a, ascending."""
    rows = torch.arange(two_n, device=device)[:, None]
    cols = torch.arange(two_n - 1, device=device)[None, :]
    return cols + (cols >= rows)


def negative_index(two_n: int, device) -> torch.Tensor:
    """(2N x 2N-2) column indices b not in {a, p(a)} for each anchor row a, ascending.

    Arithmetic rather than a boolean mask: column j skips lo = min(a, p(a)), then hi = max(a, p(a)).
    """
    rows = torch.arange(two_n, device=device)[:, None]
    partner = (rows + two_n // 2) % two_n
    lo, hi = torch.minimum(rows, partner), torch.maximum(rows, partner)
    cols = torch.arange(two_n - 2, device=device)[None, :]
    cols = cols + (cols >= lo)
    return cols + (cols >= hi)


def log_similarities(z1, z2, *, similarity: str, sigma: float, tau: float, mu: float, normalize: bool):
    """s = log r for the N positive pairs (N,) and every anchor's negatives (2N x 2N-2).

    Each positive pair appears twice among the 2N anchors with the same r, so the mean over
    positives is the mean over these N values.
    """
    n = z1.shape[0]
    # The cosine is scale-free, so rows are always normalised for it; normalize only acts on D.
    z = stack_views(z1, z2, normalize or similarity == "cosine")
    negatives = negative_index(2 * n, z.device)
    if similarity == "gaussian":
        scale = -0.5 / sigma / sigma  # sigma**2 would underflow to 0 (ZeroDivisionError) or raise OverflowError
        d_pos = (z[:n] - z[n:]).square().sum(1)
        d_all = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
        return math.log(mu) + scale * d_pos, math.log(mu) + scale * d_all.gather(1, negatives).square()
    c_pos = (z[:n] * z[n:]).sum(1)
    c_all = z @ z.T
    return math.log(mu) + c_pos / tau, math.log(mu) + c_all.gather(1, negatives) / tau


# ---------------------------------------------------------------------------------------------
# Objectives (each returns the loss = minus the objective, a 0-dim tensor in the compute dtype)
# ---------------------------------------------------------------------------------------------


def fmicl(z1, z2, *, divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize):
    s_pos, s_neg = log_similarities(z1, z2, similarity=similarity, sigma=sigma, tau=tau, mu=mu, normalize=normalize)
    objective = positive_term(divergence, s_pos, tsallis_alpha).mean()
    if alpha != 0:  # skipped, not multiplied by 0: 0 * inf would turn a finite loss into NaN
        objective = objective - alpha * negative_term(divergence, s_neg, tsallis_alpha).mean()
    return -objective


def infonce(z1, z2, *, tau, normalize):
    # C is the cosine whatever normalize says (LOSSES.md), so rows are normalised unconditionally.
    del normalize
    n = z1.shape[0]
    z = stack_views(z1, z2, True)
    logits = (z @ z.T / tau).gather(1, other_index(2 * n, z.device))
    positive = (z[:n] * z[n:]).sum(1) / tau
    return torch.logsumexp(logits, dim=1).mean() - positive.mean()


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=0) - math.log(x.numel())


def align_uniform(z1, z2, *, align_alpha, t, lambda_uniform):
    dtype = compute_dtype(z1.dtype)
    z1 = F.normalize(z1.to(dtype), dim=1)
    z2 = F.normalize(z2.to(dtype), dim=1)
    # norm().pow(), as Wang & Isola's code: the norm's gradient at a zero difference is 0, where
    # (|d|^2)^(alpha/2) would give 0 * inf for alpha < 2.
    align = torch.linalg.vector_norm(z1 - z2, dim=1).pow(align_alpha).mean()
    # pdist: the i < j pairs, by differences (exact for near-duplicates).
    uniform = 0.5 * (_log_mean_exp(-t * torch.pdist(z1).square()) + _log_mean_exp(-t * torch.pdist(z2).square()))
    return align + lambda_uniform * uniform


def rpc(z1, z2, *, tau, alpha, beta, gamma, normalize):
    n = z1.shape[0]
    z = stack_views(z1, z2, normalize)
    s_pos = (z[:n] * z[n:]).sum(1) / tau
    s_neg = (z @ z.T / tau).gather(1, negative_index(2 * n, z.device))
    objective = (
        s_pos.mean() - alpha * s_neg.mean() - beta / 2 * s_pos.square().mean() - gamma / 2 * s_neg.square().mean()
    )
    return -objective


def _cholesky_logdet(matrix: torch.Tensor, name: str, eps: float) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(matrix)  # info: the order of the first non-positive leading minor, or 0
    raise_if(info != 0, Failure(
        NonFiniteLossError, "eps",
        f"emmi: {name} is not positive definite in {matrix.dtype} at eps={eps} (its leading minor "
        f"of order {{value}} is not); increase eps or pass float64 embeddings"), value=info)
    return 2 * torch.log(torch.diagonal(chol)).sum()


def emmi(z1, z2, *, eps):
    n, d = z1.shape
    z = torch.cat([z1, z2], dim=1).to(compute_dtype(z1.dtype))  # N x 2d
    z = z - z.mean(0)
    joint = z.T @ z / (n - 1) + eps * torch.eye(2 * d, dtype=z.dtype, device=z.device)  # 2d x 2d
    mi = 0.5 * (_cholesky_logdet(joint[:d, :d], "the covariance of z1", eps)
                + _cholesky_logdet(joint[d:, d:], "the covariance of z2", eps)
                - _cholesky_logdet(joint, "the joint covariance of [z1, z2]", eps))
    return -mi


# ---------------------------------------------------------------------------------------------
# Which hyperparameter a non-finite loss is owed to: the terms at the extreme similarities
# ---------------------------------------------------------------------------------------------


def overflow_argument(objective: str, hp: dict, dtype: torch.dtype) -> str | None:
    """The hyperparameter to change first when ``objective``'s loss or gradient is inf/NaN in ``dtype``.

    The objective's terms are evaluated, as above, at the extreme similarities of unit rows (D in
    [0, 4], C in [-1, 1]); if they overflow, the first candidate (_OVERFLOW_PROBES) whose default
    alone makes them finite is named (mu=1e300 overflows r = mu e^(...) whatever sigma is).
    Otherwise the objective's scale: the data's spread overflowed (unnormalised rows), or the scale
    and another argument together. Called when the error is raised (validation.Failure): a few
    CPU scalars, never on the loss's path.
    """
    from fmicl_engine.loss.registry import loss_keywords  # here: the registry imports the losses, which import this

    scale = ("sigma" if hp["similarity"] == "gaussian" else "tau") if objective == "fmicl" else _SCALE.get(objective)
    if objective not in _OVERFLOW_PROBES:
        return scale
    overflows, candidates = _OVERFLOW_PROBES[objective]
    if overflows(hp, dtype):
        defaults = loss_keywords(objective)
        for name in candidates(hp):
            if not overflows({**hp, name: defaults[name]}, dtype):
                return name
    return scale


def overflows_at_extremes(objective: str, hp: dict, dtype: torch.dtype) -> str | None:
    """The argument to change first when ``objective``'s terms with hyperparameters ``hp`` overflow
    ``dtype`` at the extreme similarities of unit rows (which training reaches: duplicates and
    opposite rows); None when they stay finite, or when the objective has no such probe. What the
    config loader refuses before a run starts."""
    probe = _OVERFLOW_PROBES.get(objective)
    if probe is None or not probe[0](hp, dtype):
        return None
    return overflow_argument(objective, hp, dtype)


def _finite(*terms: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(term).all()) for term in terms)


def _fmicl_overflows(hp: dict, dtype: torch.dtype) -> bool:
    if hp["similarity"] == "gaussian":  # log_similarities' arithmetic at D = 4 and D = 0
        s = math.log(hp["mu"]) + (-0.5 / hp["sigma"] / hp["sigma"]) * torch.tensor([4.0, 0.0], dtype=dtype)
    else:
        s = math.log(hp["mu"]) + torch.tensor([-1.0, 1.0], dtype=dtype) / hp["tau"]
    positive = positive_term(hp["divergence"], s, hp["tsallis_alpha"])
    objective = positive[:, None]
    if hp["alpha"] != 0:
        objective = objective - hp["alpha"] * negative_term(hp["divergence"], s, hp["tsallis_alpha"])[None, :]
    return not _finite(objective)


def _align_uniform_overflows(hp: dict, dtype: torch.dtype) -> bool:
    align = torch.tensor(2.0, dtype=dtype).pow(hp["align_alpha"])  # |u1 - u2| <= 2
    uniform = hp["lambda_uniform"] * (-hp["t"] * torch.tensor(4.0, dtype=dtype))  # L_uniform in [-4t, 0]
    return not _finite(align + uniform)


def _rpc_overflows(hp: dict, dtype: torch.dtype) -> bool:
    s = torch.tensor([-1.0, 1.0], dtype=dtype) / hp["tau"]
    objective = (s[:, None] - hp["alpha"] * s[None, :] - hp["beta"] / 2 * s.square()[:, None]
                 - hp["gamma"] / 2 * s.square()[None, :])
    return not _finite(objective)


def _fmicl_candidates(hp: dict) -> list[str]:
    # the scale before tsallis_alpha: at a tiny sigma, r^(tsallis_alpha - 1) overflows for any
    # tsallis_alpha < 1, and the default 1.5 only hides that sigma is the extreme one
    tsallis = ["tsallis_alpha"] if hp["divergence"] == "tsallis" else []
    return ["mu", "alpha", "sigma" if hp["similarity"] == "gaussian" else "tau", *tsallis]


# objective -> (whether its terms overflow at the extremes, the candidates in the order they are tried)
_OVERFLOW_PROBES = {
    "fmicl": (_fmicl_overflows, _fmicl_candidates),
    "align_uniform": (_align_uniform_overflows, lambda hp: ["align_alpha", "lambda_uniform", "t"]),
    "rpc": (_rpc_overflows, lambda hp: ["alpha", "beta", "gamma", "tau"]),
}
_SCALE = {"infonce": "tau", "align_uniform": "t", "rpc": "tau", "emmi": "eps"}
