"""Variational MI estimates between the two views' embeddings: InfoNCE, NWJ and DV with a trained critic.

Protocol (``MI_PROTOCOL``), on N pairs (z1_i, z2_i) of held-out embeddings (row i of both from the
same image):

1. Split (seeded): ``train_fraction`` (default 1/2) of the pairs train the critics, the rest is held
   out for the estimate; ``validation_fraction`` (default 1/5) of the training part is set aside to
   choose the training step. With ``standardize`` (default) each dimension of z1 and of z2 is
   standardised by the training part's mean and std: an invertible map of each variable, so the MI
   is unchanged, and the critic sees well-scaled inputs. ``normalize=True`` L2-normalises the rows
   first (the MI is then that of the normalised embeddings).
2. Critics: one per bound, built by ``loss.mi_bounds`` (``MIBoundLoss`` / ``build_critic``; default
   ``separable``: T(u, v) = phi1(u)^T phi2(v), two one-hidden-layer MLPs of 100 ReLU units; or
   ``bilinear`` / ``concat``) plus a learnable scalar offset (start: 1 for NWJ, whose optimum is
   T = 1 + log r, 0 for the others, which are invariant to it). Each critic is trained to maximise
   its own bound with Adam (lr 1e-3) for up to ``steps`` (default 300) steps on batches of
   K = ``batch_size`` (default 128) pairs drawn without replacement from the training part
   (reshuffled each pass). Every ``eval_every`` (default 25) steps, at the last step and at step 0
   (the untrained critic; a bilinear one, constant at start, scores exactly 0 nats), the bound is
   evaluated on the validation part and the best-scoring critic is kept (early stopping: a trained
   critic overfits a few thousand pairs within hundreds of steps; ``validation_fraction=0`` keeps
   the last step's critic). Initialisation and batches derive from ``seed``.
3. Estimate: the held-out pairs, in a seeded random order, are cut into floor(N_held / K) batches
   of K pairs; each bound (``loss.mi_bounds.mi_bound``, LOSSES.md) is evaluated on its critic's K x K
   score matrix of every batch, and the estimate is the mean over the batches, in nats:

       InfoNCE = mean_i [T_ii - log((1/K) sum_j exp T_ij)]   (<= log K: it cannot report more)
       NWJ     = mean_i T_ii - e^-1 mean_{i != j} exp T_ij   (a lower bound of the MI in expectation)
       DV      = mean_i T_ii - log mean_{i != j} exp T_ij    (biased upward for small K at high MI)

   The critic is fixed by then and was never fitted or selected on the held-out pairs, so the
   held-out InfoNCE and NWJ are (in expectation) lower bounds of the true MI; a critic that
   trained badly gives a loose bound, not an inflated one.

The estimates depend on K (``result.k``); compare runs at the same K. If a critic's training
overflows (exp of a large score; NWJ is the usual one), its training stops there, the best
validated critic so far is used and the bound is listed in ``result.diverged``; a non-finite
held-out estimate is reported as NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fmicl_engine.loss.mi_bounds import MIBoundLoss, mi_bound
from fmicl_engine.loss.validation import BOUNDS, CRITICS, NonFiniteLossError

MI_PROTOCOL = (
    "MI estimates (nats) between the two views' embeddings: one {critic} critic (+ a learnable offset) per bound, "
    "trained up to {steps} Adam steps (lr {lr}) to maximise that bound on batches of K={k} pairs of a "
    "{train_percent}% training split, keeping the step (every {eval_every}) best on its {val_percent}% validation "
    "part; "
    "InfoNCE (<= log K), NWJ and DV averaged over {batches} held-out batches of K pairs"
)


class _OffsetCritic(torch.nn.Module):
    """T(u, v) = critic(u, v) + c, c a learnable scalar (0 at start). InfoNCE and DV are invariant to
    c; NWJ's optimum is T = 1 + log r, whose constant a bilinear critic could not represent alone."""

    def __init__(self, critic: torch.nn.Module):
        super().__init__()
        self.inner = critic
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner(x, y) + self.offset


@dataclass(frozen=True)
class MIEstimates:
    """infonce, nwj, dv: held-out estimates in nats (NaN if that critic's training diverged);
    *_std: their standard deviation over the held-out batches; k: the batch size K."""

    infonce: float
    nwj: float
    dv: float
    k: int
    num_batches: int
    critic: str
    steps: int
    lr: float
    train_fraction: float
    validation_fraction: float
    eval_every: int
    std: dict = field(default_factory=dict)
    best_step: dict = field(default_factory=dict)
    diverged: tuple = ()

    @property
    def log_k(self) -> float:
        return math.log(self.k)

    @property
    def protocol(self) -> str:
        return MI_PROTOCOL.format(critic=self.critic, steps=self.steps, lr=self.lr, k=self.k,
                                  train_percent=round(100 * self.train_fraction),
                                  val_percent=round(100 * self.validation_fraction), eval_every=self.eval_every,
                                  batches=self.num_batches)

    def as_dict(self) -> dict:
        return {"mi_infonce": self.infonce, "mi_nwj": self.nwj, "mi_dv": self.dv, "k": self.k, "log_k": self.log_k,
                "num_batches": self.num_batches, "std": dict(self.std), "best_step": dict(self.best_step),
                "diverged": list(self.diverged),
                "protocol": self.protocol}


def _batched(indices: torch.Tensor, k: int) -> torch.Tensor:
    """(floor(len / k), k): consecutive batches of k indices; the remainder is dropped."""
    return indices[: (len(indices) // k) * k].view(-1, k)


@torch.no_grad()
def _bound_values(critic: torch.nn.Module, z1: torch.Tensor, z2: torch.Tensor, batches: torch.Tensor,
                  bound: str) -> torch.Tensor:
    """The bound of every batch of pairs (float64), 16 batches at a time (concat: K^2 x hidden each)."""
    return torch.cat([mi_bound(critic(z1[group], z2[group]), bound).double() for group in batches.split(16)])


def estimate_mi(z1: torch.Tensor, z2: torch.Tensor, *, critic: str = "separable", hidden: int | None = None,
                steps: int = 300, batch_size: int = 128, lr: float = 1e-3, train_fraction: float = 0.5,
                validation_fraction: float = 0.2, eval_every: int = 25, standardize: bool = True,
                normalize: bool = False, seed: int = 0, device: torch.device | str | None = None) -> MIEstimates:
    """InfoNCE, NWJ and DV estimates of I(z1; z2) with trained critics (protocol: module docstring).

    z1, z2: (N, d) embeddings of the same N images (any device; computed on ``device``, default
    theirs, in float32; the caller's tensors are not modified). The training part (train_fraction
    of N) holds a validation part (validation_fraction of it) and every part needs at least K pairs.
    The global RNG is left untouched.
    """
    if critic not in CRITICS:
        raise ValueError(f"critic must be one of {CRITICS}, got {critic!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if batch_size < 2:
        raise ValueError("batch_size must be >= 2 (a batch needs negatives)")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if not (isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor)) or z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError("z1 and z2 must be tensors of the same (N, d) shape")
    device = torch.device(device) if device is not None else z1.device
    z1, z2 = z1.detach().to(device, torch.float32), z2.detach().to(device, torch.float32)
    n, dim = z1.shape
    n_train = int(round(n * train_fraction))
    n_val = int(round(n_train * validation_fraction))
    sizes = {"training": n_train - n_val, "validation": n_val, "held-out": n - n_train}
    small = {part: size for part, size in sizes.items() if size < batch_size and (part != "validation" or n_val)}
    if small:
        raise ValueError(f"{n} pairs leave parts with fewer than K={batch_size} pairs ({small}); pass more pairs or a "
                         f"smaller batch_size")
    if not bool(torch.isfinite(z1).all() and torch.isfinite(z2).all()):
        raise ValueError("z1 and z2 must be finite")
    if normalize:
        z1, z2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    fit_idx, val_idx, held_idx = order[: n_train - n_val], order[n_train - n_val : n_train], order[n_train:]
    if standardize:
        train_idx = order[:n_train]
        z1, z2 = (z.sub(z[train_idx].mean(0)).div(z[train_idx].std(0, unbiased=False).clamp_min(1e-6))
                  for z in (z1, z2))  # new tensors: the caller's embeddings are not modified
    val_batches, held_batches = _batched(val_idx, batch_size), _batched(held_idx, batch_size)
    n_fit = len(fit_idx)

    estimates, spreads, best_steps, diverged = {}, {}, {}, []
    for b_index, bound in enumerate(BOUNDS):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * len(BOUNDS) + b_index)
            loss_fn = MIBoundLoss(bound, critic, dim, hidden)
            loss_fn.critic = _OffsetCritic(loss_fn.critic)
        if bound == "nwj":
            with torch.no_grad():
                loss_fn.critic.offset.fill_(1.0)  # T = 1: NWJ's optimum for independent variables (0 nats)
        loss_fn = loss_fn.to(device)
        optimiser = torch.optim.Adam(loss_fn.parameters(), lr=lr)
        batch_gen = torch.Generator().manual_seed(seed * len(BOUNDS) + b_index)
        perm, used = torch.randperm(n_fit, generator=batch_gen), 0
        best_value, best_step, best_state = -math.inf, 0, None

        def consider(step: int) -> None:
            nonlocal best_value, best_step, best_state
            if not n_val:
                return
            value = float(_bound_values(loss_fn.critic, z1, z2, val_batches, bound).mean())
            if math.isfinite(value) and value > best_value:
                best_value, best_step = value, step
                best_state = {k: v.detach().clone() for k, v in loss_fn.critic.state_dict().items()}

        consider(0)
        step = 0
        try:
            for step in range(1, steps + 1):
                if used + batch_size > n_fit:
                    perm, used = torch.randperm(n_fit, generator=batch_gen), 0
                idx = fit_idx[perm[used : used + batch_size].to(device)]
                used += batch_size
                loss = loss_fn(z1[idx], z2[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if step % eval_every == 0 or step == steps:
                    consider(step)
        except NonFiniteLossError:
            diverged.append(bound)  # the step's loss overflowed; the best validated critic so far is used
            if not n_val:
                estimates[bound], spreads[bound], best_steps[bound] = math.nan, math.nan, step
                continue
        if best_state is not None:
            loss_fn.critic.load_state_dict(best_state)
        else:
            best_step = steps
        values = _bound_values(loss_fn.critic, z1, z2, held_batches, bound)
        if not bool(torch.isfinite(values).all()):
            estimates[bound], spreads[bound] = math.nan, math.nan
            if bound not in diverged:
                diverged.append(bound)
        else:
            estimates[bound] = float(values.mean())
            spreads[bound] = float(values.std(unbiased=False)) if len(values) > 1 else 0.0
        best_steps[bound] = best_step
    return MIEstimates(estimates["infonce"], estimates["nwj"], estimates["dv"], k=batch_size,
                       num_batches=held_batches.shape[0], critic=critic, steps=steps, lr=lr,
                       train_fraction=train_fraction, validation_fraction=validation_fraction, eval_every=eval_every,
                       std=spreads, best_step=best_steps, diverged=tuple(diverged))
