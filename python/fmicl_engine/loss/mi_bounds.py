"""Variational MI lower bounds on a critic's score matrix, and the critics (LOSSES.md, Tschannen et al.).

Shapes: a batch of K pairs (x_i, y_i) gives scores T (..., K x K) with T_ij = T(x_i, y_j); the
diagonal holds the positive pairs. Leading dimensions are independent batches (the benchmark of
LOSSES.md evaluates 2,000 batches at once).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fmicl_engine.loss.validation import (BOUNDS, CRITICS, Failure, LossArgumentError, NonFiniteLossError,
                                          check_choice, check_not_meta, check_pair, raise_if)


def _off_diagonal(scores: torch.Tensor) -> torch.Tensor:
    """(..., K x K) -> (..., K(K-1)): the entries T_ij, i != j."""
    k = scores.shape[-1]
    flat = scores.flatten(-2)[..., 1:]  # drop T_00; the diagonal then recurs every K+1 entries
    return flat.unflatten(-1, (k - 1, k + 1))[..., :-1].flatten(-2)


def mi_bound(scores: torch.Tensor, bound: str = "infonce") -> torch.Tensor:
    """The bound (an MI estimate in nats, not negated) for scores (..., K x K); returns shape (...).

    infonce: mean_i [T_ii - log((1/K) sum_j exp T_ij)]   (<= log K)
    nwj:     mean_i T_ii - e^-1 mean_{i != j} exp T_ij
    dv:      mean_i T_ii - log mean_{i != j} exp T_ij

    Scores with inf/NaN raise LossArgumentError (argument "scores"); an estimate that overflows
    (NWJ's e^(T - 1) beyond ~88 in float32) raises NonFiniteLossError. Both checks read a device
    value (validation.raise_if: at once, or deferred inside DeferredFiniteChecks).
    """
    bound = check_choice("bound", bound, BOUNDS)
    return _checked_bound(scores, bound, Failure(LossArgumentError, "scores", "scores contain inf or NaN"),
                         argument="scores")


def _checked_bound(scores, bound: str, non_finite_scores: Failure, argument: str | None) -> torch.Tensor:
    """The one path of mi_bound and MIBoundLoss: check the scores' layout, that they are finite
    (``non_finite_scores``: the caller's scores are an argument, the module's its critic's output),
    compute the bound, and refuse an estimate that overflows (NonFiniteLossError naming ``argument``)."""
    if not isinstance(scores, torch.Tensor):
        raise LossArgumentError("scores", f"scores must be a (..., K, K) tensor, got {type(scores).__name__}")
    check_not_meta("scores", scores)
    if scores.dim() < 2 or scores.shape[-1] != scores.shape[-2]:
        raise LossArgumentError("scores", f"scores must be a (..., K, K) tensor, got {tuple(scores.shape)}")
    k = scores.shape[-1]
    if k < 2:
        raise LossArgumentError("scores", f"scores need K >= 2 pairs, got K={k}")
    if not scores.is_floating_point():
        raise LossArgumentError("scores", f"scores must have a floating-point dtype, got {scores.dtype}")
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # as every loss here: half inputs are computed and returned in float32
    if scores.numel() == 0:  # no batch: an empty estimate, nothing to check
        return _bound(scores, bound)
    raise_if(~torch.isfinite(scores).all(), non_finite_scores)
    estimate = _bound(scores, bound)
    not_finite = ~torch.isfinite(estimate)
    # NWJ's mean of e^(T - 1) is the term that overflows (its true value is that far below zero
    # too); infonce and dv are log-sum-exps, finite unless a mean of the scores themselves overflows.
    cause = ("e^(T - 1) of the off-diagonal scores" if bound == "nwj" else "a mean of the scores") + " overflows"
    remedy = "scale the scores down" + (", or use bound='dv' or 'infonce' (log-sum-exps)" if bound == "nwj" else "")
    raise_if(not_finite.any(), Failure(
        NonFiniteLossError, argument,
        f"mi_bound: the {bound} estimate is {{value}} in {scores.dtype}: {cause} this dtype; {remedy}, or pass "
        f"float64 scores"), value=torch.take(estimate, not_finite.flatten().to(torch.uint8).argmax()))  # the first
    return estimate


def _bound(scores: torch.Tensor, bound: str) -> torch.Tensor:
    k = scores.shape[-1]
    if bound == "infonce":
        # log_softmax subtracts the row max, so each diagonal term is <= 0 in floating point too:
        # the estimate never exceeds log K, even for scores of 1e4.
        return torch.diagonal(torch.log_softmax(scores, dim=-1), dim1=-2, dim2=-1).mean(-1) + math.log(k)
    positive = torch.diagonal(scores, dim1=-2, dim2=-1).mean(-1)
    off = _off_diagonal(scores)
    if bound == "nwj":
        return positive - torch.exp(off - 1).mean(-1)
    return positive - (torch.logsumexp(off, dim=-1) - math.log(off.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Critics: forward(x (..., K x dim), y (..., K x dim)) -> scores (..., K x K)
# ---------------------------------------------------------------------------------------------


class BilinearCritic(nn.Module):
    """T(u, v) = u^T W v, W = 0 at start (every bound then starts at its value for independent
    variables, and exp(T) cannot overflow on unnormalised inputs)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ self.weight @ y.transpose(-1, -2)


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out))


class SeparableCritic(nn.Module):
    """T(u, v) = phi1(u)^T phi2(v), each phi an MLP dim -> hidden -> hidden (one ReLU hidden layer)."""

    def __init__(self, dim: int, hidden: int = 100):
        super().__init__()
        self.phi1 = _mlp(dim, hidden, hidden)
        self.phi2 = _mlp(dim, hidden, hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.phi1(x) @ self.phi2(y).transpose(-1, -2)


class ConcatCritic(nn.Module):
    """T(u, v) = phi([u, v]), phi an MLP 2 dim -> hidden -> 1, evaluated on all K^2 pairs.

    The first layer is applied to u and v separately and summed (W[u; v] = W_u u + W_v v), which is
    the same function as concatenating, without materialising the K^2 x 2dim pair tensor.
    """

    def __init__(self, dim: int, hidden: int = 200):
        super().__init__()
        self.dim = dim
        self.layer1 = nn.Linear(2 * dim, hidden)
        self.layer2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_u, w_v = self.layer1.weight[:, : self.dim], self.layer1.weight[:, self.dim :]
        hx = x @ w_u.T + self.layer1.bias  # ... x K x hidden
        hy = y @ w_v.T
        hidden = torch.relu(hx.unsqueeze(-2) + hy.unsqueeze(-3))  # ... x K(i) x K(j) x hidden
        return self.layer2(hidden).squeeze(-1)


CRITIC_CLASSES = {"bilinear": BilinearCritic, "separable": SeparableCritic, "concat": ConcatCritic}
assert tuple(CRITIC_CLASSES) == CRITICS


def build_critic(critic: str, dim: int, hidden: int | None = None) -> nn.Module:
    critic = check_choice("critic", critic, CRITICS)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise LossArgumentError("dim", f"dim must be a positive int, got {dim!r}")
    if hidden is None:
        return CRITIC_CLASSES[critic](dim)
    if critic == "bilinear":
        raise LossArgumentError("hidden", "hidden does not apply to the bilinear critic (it has no hidden layer)")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise LossArgumentError("hidden", f"hidden must be a positive int, got {hidden!r}")
    return CRITIC_CLASSES[critic](dim, hidden)


class MIBoundLoss(nn.Module):
    """loss = -bound(critic(z1, z2)): z1 the x's, z2 the y's of a batch of K = N pairs.

    The critic is a trainable submodule: its parameters must be given to the optimiser.
    Embeddings in float16/bfloat16 are cast to the critic's dtype.
    """

    def __init__(self, bound: str, critic: str, dim: int, hidden: int | None = None):
        super().__init__()
        self.bound = check_choice("bound", bound, BOUNDS)
        self.critic = build_critic(critic, dim, hidden)
        self.dim = dim

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_pair(z1, z2)
        if z1.shape[1] != self.dim:
            raise LossArgumentError("z1", f"z1 and z2 must be (K, {self.dim}) for this critic, got {tuple(z1.shape)}")
        dtype = next(self.critic.parameters()).dtype
        scores = self.critic(z1.to(dtype), z2.to(dtype))
        return -_checked_bound(scores, self.bound, Failure(
            NonFiniteLossError, None, f"mi_bound ({self.bound}): the critic's scores contain inf or NaN in {dtype} "
                                      f"(its weights diverged, or they overflow on these embeddings); lower the "
                                      f"learning rate, or scale the embeddings down"), argument=None)

    def extra_repr(self) -> str:
        return f"bound={self.bound!r}, dim={self.dim}"
