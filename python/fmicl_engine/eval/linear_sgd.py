"""Linear probes trained with SGD: offline on precomputed (streamed) features, and online during pretraining.

Offline probe (``train_linear_probe``, protocol ``LINEAR_PROTOCOL``):

- Features: frozen-encoder features, precomputed. Batch-norm-free: when ``standardize`` (default)
  every feature dimension is standardised with the training set's mean and standard deviation,
  computed in one streaming pass in float64, x' = (x - mean) / sqrt(var + 1e-5) (population
  variance); the same map is applied to the held-out features. This is the map of a non-affine
  BatchNorm1d evaluated at the whole training set's statistics, fixed before training, so nothing
  depends on the mini-batch composition. With ``standardize=False`` the raw features are used.
- Classifier: one ``nn.Linear(d, C)``; weight ~ N(0, 0.01^2), bias 0, drawn from ``seed``.
- Training: cross-entropy (mean over the mini-batch), SGD with momentum (default 0.9, not
  Nesterov), weight decay on the weight only (default 0), ``epochs`` epochs (default 100) of
  mini-batches of ``batch_size`` (default 256; the epoch's last batch may be smaller). Cosine
  schedule per epoch: the learning rate of epoch e (0-based) is lr * (1 + cos(pi e / epochs)) / 2.
- Order: each epoch visits the training chunks in a seeded random order (in-memory or memory-mapped
  features: blocks of ``block_rows`` rows; a loader: the loader's own order), shuffles the rows of each
  chunk with the seeded generator and cuts consecutive mini-batches across chunk boundaries. One
  block holding all rows is a full shuffle. Everything random derives from ``seed``: two runs on the
  same data and device give the same probe.
- Report: top-1 / top-5 accuracy on the held-out features after the LAST epoch (not the best
  epoch: no model selection on the held-out set), plus the mean training loss of every epoch.

Streaming: the training and held-out features are sources of (features, labels) chunks: a pair of
tensors or numpy arrays (in memory or memory-mapped: ``np.load(path, mmap_mode="r")``,
``torch.from_file``), a ``TensorFeatures`` / ``ChunkedFeatures``, or a re-iterable loader of chunks.
Only one mini-batch (and the small classifier) is on the device at a time; a memory-mapped source
reads one block of rows into host memory at a time.

Online probe (``OnlineLinearProbe``): a ``nn.Linear`` on detached features with its own optimiser,
updated at every pretraining step on the batch's labelled samples (label -1: unlabelled, ignored),
reporting the running top-1 of the epoch (``ONLINE_PROTOCOL``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LINEAR_PROTOCOL = (
    "linear probe: {standardize}; nn.Linear on frozen features, cross-entropy, SGD momentum {momentum}, "
    "weight decay {weight_decay} (weight only), batch {batch_size}, lr {lr} with a per-epoch cosine schedule to 0 "
    "over {epochs} epochs, seed {seed}; top-1/top-5 on the held-out features after the last epoch (not the best)"
)
ONLINE_PROTOCOL = (
    "online linear probe: nn.Linear on detached features trained alongside pretraining with its own optimiser "
    "({optimizer}, lr {lr}); top-1 over the epoch's labelled training samples, predicted before each update"
)
STANDARDIZE_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# Feature sources
# ---------------------------------------------------------------------------------------------


def _to_tensor(x) -> torch.Tensor:
    """A tensor sharing ``x``'s memory where possible: a numpy memmap (even read-only) stays mapped,
    and rows are read from it only when a mini-batch gathers them. Never written to."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(x)
    return torch.as_tensor(x)


class TensorFeatures:
    """Random-access features (N, d) and labels (N,): torch tensors or numpy arrays, in memory or
    memory-mapped (never copied whole: mini-batches gather their rows). Iterated in blocks of
    ``block_rows`` rows (default: all rows, one block, i.e. a full shuffle each epoch); a training
    epoch takes the blocks in a seeded random order and shuffles within each. For a memory-mapped
    set larger than the page cache, a block size (e.g. 65536 rows) keeps the reads local to a block."""

    def __init__(self, features, labels, *, block_rows: int | None = None):
        if len(features.shape) != 2:
            raise ValueError(f"features must be (rows, dim), got shape {tuple(features.shape)}")
        if tuple(labels.shape) != (features.shape[0],):
            raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
        if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, int)
                                       or block_rows < 1):
            raise ValueError(f"block_rows must be a positive int or None, got {block_rows!r}")
        self.features, self.labels = features, labels
        self.block_rows = block_rows or max(int(features.shape[0]), 1)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def chunks(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = torch.arange(0, len(self), self.block_rows)
        if generator is not None and len(starts) > 1:  # one block: no draw (= a loader of that one chunk)
            starts = starts[torch.randperm(len(starts), generator=generator)]
        for start in starts.tolist():
            stop = min(start + self.block_rows, len(self))
            yield _to_tensor(self.features[start:stop]), _to_tensor(self.labels[start:stop])


class ChunkedFeatures:
    """A loader of (features, labels) chunks: a re-iterable (list, DataLoader) or a callable returning
    a fresh iterator; it is iterated once per pass (statistics, every epoch, evaluation), in its own
    order. A one-shot iterator (generator) is refused: it would be empty from the second pass on."""

    def __init__(self, loader: Iterable | Callable[[], Iterable]):
        if isinstance(loader, Iterator):
            raise TypeError("a one-shot iterator cannot be read once per epoch; pass a re-iterable (a list, a "
                            "DataLoader) or a callable returning a fresh iterator")
        self.loader = loader

    def chunks(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        del generator  # the loader decides the chunk order
        fresh = callable(self.loader) and not isinstance(self.loader, Iterable)
        for chunk in self.loader() if fresh else self.loader:
            x, y = chunk
            yield _to_tensor(x), _to_tensor(y)


def as_feature_source(data) -> TensorFeatures | ChunkedFeatures:
    """A (features, labels) pair -> TensorFeatures; a source -> itself; a loader -> ChunkedFeatures."""
    if isinstance(data, (TensorFeatures, ChunkedFeatures)):
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, (torch.Tensor, np.ndarray)) for a in data):
        return TensorFeatures(*data)
    return ChunkedFeatures(data)


def _checked_chunk(x: torch.Tensor, y: torch.Tensor, dim: int | None) -> None:
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"a chunk must be features (rows, dim) and labels (rows,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"a chunk has feature dimension {x.shape[1]}, expected {dim}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")


def _minibatches(source, batch_size: int, generator: torch.Generator | None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches (on the source's device) of ``batch_size`` rows cut across chunk boundaries; with a
    generator, chunks in a seeded order (TensorFeatures) and rows shuffled within each chunk."""
    carry_x = carry_y = None
    for x, y in source.chunks(generator):
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator) if generator is not None else None
        take = (lambda t, a, b: t[perm[a:b].to(t.device)]) if perm is not None else (lambda t, a, b: t[a:b])
        start = 0
        if carry_x is not None:
            need = batch_size - carry_x.shape[0]
            if n < need:
                carry_x, carry_y = torch.cat([carry_x, take(x, 0, n)]), torch.cat([carry_y, take(y, 0, n)])
                continue
            yield torch.cat([carry_x, take(x, 0, need)]), torch.cat([carry_y, take(y, 0, need)])
            carry_x = carry_y = None
            start = need
        while n - start >= batch_size:
            yield take(x, start, start + batch_size), take(y, start, start + batch_size)
            start += batch_size
        if start < n:
            carry_x, carry_y = take(x, start, n), take(y, start, n)
    if carry_x is not None:
        yield carry_x, carry_y


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStatistics:
    """Per-dimension mean and population variance (float64), row count, largest label."""

    mean: torch.Tensor
    var: torch.Tensor
    count: int
    max_label: int
    min_label: int

    def scale(self, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
        return torch.rsqrt(self.var + eps)


@torch.no_grad()
def feature_statistics(data, *, device: torch.device | str | None = None,
                       rows_per_step: int = 8192) -> FeatureStatistics:
    """Mean and variance of every feature dimension over all rows, in one streaming pass.

    Chunks are reduced ``rows_per_step`` rows at a time in float64 on ``device`` (default: each
    chunk's device) and merged with Chan et al.'s pairwise update, which is exact up to rounding
    whatever the chunking."""
    source = as_feature_source(data)
    count, mean, m2 = 0, None, None
    max_label, min_label = None, None
    for x, y in source.chunks(None):
        _checked_chunk(x, y, None if mean is None else mean.shape[0])
        if y.numel():
            lo, hi = int(y.min()), int(y.max())
            max_label = hi if max_label is None else max(max_label, hi)
            min_label = lo if min_label is None else min(min_label, lo)
        for start in range(0, x.shape[0], rows_per_step):
            part = x[start : start + rows_per_step].to(device or x.device, torch.float64)
            n_b = part.shape[0]
            mean_b = part.mean(0)
            m2_b = (part - mean_b).square().sum(0)
            if mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
                continue
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta.square() * (count * n_b / total)
            count = total
    if mean is None:
        raise ValueError("no features: the source yielded no rows")
    return FeatureStatistics(mean, m2 / count, count, max_label, min_label)


# ---------------------------------------------------------------------------------------------
# Offline probe
# ---------------------------------------------------------------------------------------------


@dataclass
class LinearProbeResult:
    """top1 / top5: held-out accuracies in [0, 1] after the last epoch; train_loss: the mean training
    cross-entropy of every epoch; test_top1: the held-out top-1 after every epoch, if asked for
    (for curves only; the reported figure is still the last epoch's)."""

    top1: float
    top5: float
    train_loss: list[float]
    hyperparameters: dict
    test_top1: list[float] = field(default_factory=list)
    weight: torch.Tensor | None = None  # (C, d), on the CPU, acting on standardised features
    bias: torch.Tensor | None = None
    mean: torch.Tensor | None = None  # standardisation, None without it
    scale: torch.Tensor | None = None

    @property
    def protocol(self) -> str:
        h = self.hyperparameters
        standardize = ("features standardised by the training set's per-dimension mean and std (batch-norm-free)"
                       if h["standardize"] else "raw features (no standardisation, no batch norm)")
        return LINEAR_PROTOCOL.format(standardize=standardize, **{k: v for k, v in h.items() if k != "standardize"})

    def as_dict(self) -> dict:
        return {"linear_top1": self.top1, "linear_top5": self.top5, "train_loss": list(self.train_loss),
                **({"test_top1_per_epoch": list(self.test_top1)} if self.test_top1 else {}),
                "hyperparameters": dict(self.hyperparameters), "protocol": self.protocol}


def _check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "int" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


@torch.no_grad()
def _evaluate(linear: nn.Linear, source, transform, batch_size: int, device) -> tuple[float, float]:
    correct1 = correct5 = total = 0
    top = min(5, linear.out_features)
    for x, y in _minibatches(source, batch_size, None):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= linear.out_features):
            raise ValueError(f"a held-out label is outside [0, {linear.out_features})")
        logits = linear(transform(x.to(device, non_blocking=True)))
        y = y.to(device).long()
        ranked = logits.topk(top, dim=1).indices
        hit = ranked == y[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
        total += y.numel()
    if total == 0:
        raise ValueError("no held-out features: the test source yielded no rows")
    return correct1 / total, correct5 / total


def train_linear_probe(train, test, *, num_classes: int | None = None, epochs: int = 100, lr: float = 0.1,
                       batch_size: int = 256, weight_decay: float = 0.0, momentum: float = 0.9,
                       standardize: bool = True, seed: int = 0, device: torch.device | str | None = None,
                       eval_batch_size: int = 4096, eval_every_epoch: bool = False) -> LinearProbeResult:
    """Train the SGD linear probe on ``train`` and report it on ``test`` (protocol: module docstring).

    train, test: (features, labels) tensors/arrays (memory-mapped or not), TensorFeatures,
    ChunkedFeatures or a re-iterable loader of (features, labels) chunks. Labels are ints in
    [0, num_classes) (default: 1 + the largest training label). ``device``: where the classifier and
    each mini-batch live (default: the device of the first training chunk). One host sync per
    epoch (the loss), one per held-out batch.
    """
    _check_positive("epochs", epochs, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("eval_batch_size", eval_batch_size, integer=True)
    _check_positive("lr", lr)
    _check_positive("weight_decay", weight_decay, allow_zero=True)
    _check_positive("momentum", momentum, allow_zero=True)
    train, test = as_feature_source(train), as_feature_source(test)

    if device is None:
        first = next(iter(train.chunks(None)), None)
        if first is None:
            raise ValueError("no training features: the train source yielded no rows")
        device = first[0].device
    device = torch.device(device)
    stats = feature_statistics(train, device=device)  # one pass: count, dimension, labels (+ mean/var)
    if stats.min_label is None or stats.min_label < 0:
        raise ValueError(f"training labels must be >= 0, got {stats.min_label}")
    if num_classes is None:
        num_classes = stats.max_label + 1
    elif stats.max_label >= num_classes:
        raise ValueError(f"a training label ({stats.max_label}) is >= num_classes ({num_classes})")
    dim = stats.mean.shape[0]
    if standardize:
        mean, scale = stats.mean.float().to(device), stats.scale().float().to(device)

        def transform(x):
            return (x.float() - mean) * scale
    else:
        mean = scale = None

        def transform(x):
            return x.float()

    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(dim, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(num_classes, dim, generator=generator) * 0.01)
        linear.bias.zero_()
    linear = linear.to(device)
    optimiser = torch.optim.SGD([{"params": [linear.weight], "weight_decay": weight_decay},
                                 {"params": [linear.bias], "weight_decay": 0.0}], lr=lr, momentum=momentum)
    losses, test_top1 = [], []
    for epoch in range(epochs):
        epoch_lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for group in optimiser.param_groups:
            group["lr"] = epoch_lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for x, y in _minibatches(train, batch_size, generator):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()
            loss = F.cross_entropy(linear(transform(x)), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.detach().double() * y.shape[0]
            seen += y.shape[0]
        losses.append(float(loss_sum) / seen)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"linear probe: the training loss is {losses[-1]} in epoch {epoch}; lower lr "
                                     f"(now {lr}) or standardise the features")
        if eval_every_epoch and epoch < epochs - 1:
            test_top1.append(_evaluate(linear, test, transform, eval_batch_size, device)[0])
    top1, top5 = _evaluate(linear, test, transform, eval_batch_size, device)
    if eval_every_epoch:
        test_top1.append(top1)
    hyperparameters = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                       "momentum": momentum, "standardize": bool(standardize), "seed": seed,
                       "num_classes": num_classes, "num_train": stats.count}
    return LinearProbeResult(top1, top5, losses, hyperparameters, test_top1,
                             weight=linear.weight.detach().cpu(), bias=linear.bias.detach().cpu(),
                             mean=None if mean is None else mean.cpu(), scale=None if scale is None else scale.cpu())


# ---------------------------------------------------------------------------------------------
# Online probe
# ---------------------------------------------------------------------------------------------


class OnlineLinearProbe(nn.Module):
    """A linear classifier trained alongside pretraining on detached features, for a running top-1.

    ``step(features, labels)`` (call it every training step, inside or outside autocast): detaches
    and casts the features to float32, predicts (the accuracy counts these predictions, made
    before the update), and takes one optimiser step on the cross-entropy of the labelled rows;
    label -1 marks an unlabelled row, ignored by the loss and the accuracy. No host sync: the counts
    stay on the device until ``compute()``, called once per epoch, returns
    {"online_top1", "online_loss", "online_labelled"} over the steps since the last ``reset()``
    (``compute(reset=True)`` resets). The pretraining gradient is untouched (the features are
    detached) and the probe's parameters are not the model's: give the probe its own optimiser
    (built here) and save ``state_dict()`` / ``optimizer.state_dict()`` with the checkpoint.

    Distributed (``torch.distributed`` initialised, ``distributed=True``): each step all-reduces the
    summed gradients and the labelled count, so every rank takes the same update (the mean over all
    ranks' labelled rows) and the replicas stay identical; ``compute()`` sums the counts across ranks.
    Every rank must then call ``step`` the same number of times.
    """

    def __init__(self, dim: int, num_classes: int, *, optimizer: str = "adam", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, distributed: bool = True):
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        _check_positive("lr", lr)
        self.linear = nn.Linear(dim, num_classes)
        self.optimizer_name, self.lr = optimizer, lr
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=momentum,
                                             weight_decay=weight_decay)
        self.distributed = distributed
        self.register_buffer("correct", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("labelled", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("loss_sum", torch.zeros((), dtype=torch.float64), persistent=False)

    @property
    def protocol(self) -> str:
        return ONLINE_PROTOCOL.format(optimizer=self.optimizer_name, lr=self.lr)

    def _world(self) -> bool:
        import torch.distributed as dist

        return self.distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update on a batch; returns the detached summed loss of its labelled rows (a 0-dim tensor)."""
        if features.dim() != 2 or labels.shape != (features.shape[0],):
            raise ValueError(f"features must be (rows, dim) and labels (rows,), got {tuple(features.shape)} and "
                             f"{tuple(labels.shape)}")
        self.train()
        labels = labels.to(features.device).long()
        with torch.enable_grad(), torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.linear(features.detach().float())
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            self.optimizer.zero_grad(set_to_none=False)
            loss_sum.backward()
        labelled_mask = labels >= 0
        count = labelled_mask.sum()
        if self._world():
            import torch.distributed as dist

            count = count.clone()
            dist.all_reduce(count)
            for p in self.linear.parameters():
                dist.all_reduce(p.grad)
        with torch.no_grad():
            for p in self.linear.parameters():
                p.grad.div_(count.clamp_min(1).to(p.grad.dtype))
        self.optimizer.step()
        with torch.no_grad():
            self.correct += ((logits.argmax(1) == labels) & labelled_mask).sum()
            self.labelled += labelled_mask.sum()
            self.loss_sum += loss_sum.detach().double()
        return loss_sum.detach()

    def reset(self) -> None:
        self.correct.zero_()
        self.labelled.zero_()
        self.loss_sum.zero_()

    @torch.no_grad()
    def compute(self, reset: bool = True) -> dict[str, float]:
        """{"online_top1": fraction in [0, 1] (NaN if no labelled row), "online_loss": mean cross-entropy,
        "online_labelled": number of labelled rows} since the last reset (one host sync)."""
        totals = torch.stack([self.correct.double(), self.labelled.double(), self.loss_sum])
        if self._world():
            import torch.distributed as dist

            dist.all_reduce(totals)
        correct, labelled, loss_sum = totals.tolist()
        if reset:
            self.reset()
        nan = float("nan")
        return {"online_top1": correct / labelled if labelled else nan,
                "online_loss": loss_sum / labelled if labelled else nan, "online_labelled": int(labelled)}
