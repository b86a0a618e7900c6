"""Weighted k-nearest-neighbour classifier on frozen features (Wu et al. 2018, instance discrimination).

Protocol (``KNN_PROTOCOL``): every training ("bank") and held-out ("query") feature is
L2-normalised; the similarity is the cosine s = q . b. Each query takes its k = 200 most similar
training features (ties broken by the lower training index, so the result is deterministic);
neighbour j votes for its label with weight exp(s_j / T), T = 0.1; a class's score is the sum of
its neighbours' weights. The prediction is the class ranking by score (ties: the lower class
index first); top-1 / top-5 accuracy is the fraction of queries whose label is first / among the
first five (among all classes when there are fewer than five). With fewer than k training
features every one of them votes.

Scale: the similarity matrix is never formed whole. Queries are processed ``query_chunk`` at a
time against the bank, or against ``bank_chunk`` rows of it at a time, keeping a running top-k per
query, so the working memory is O(query_chunk x bank_chunk) (O(query_chunk x N_train) without bank
chunks) plus O(N_query x k) for the running neighbours. Each bank chunk is moved to ``device`` and
normalised once; features may live on the CPU or be memory-mapped (numpy memmap / torch.from_file).

Distributed use (bank sharded across ranks, each rank holding its shard and every query)::

    part = knn_neighbours(queries, shard_features, shard_labels, k=k, bank_offset=shard_start)
    gathered = [all_gather each of part.similarities, part.labels, part.indices]   # world x (Q x k)
    merged = merge_neighbours([Neighbours(s, l, i) for s, l, i in zip(*gathered)], k)
    result = knn_accuracy(merged, query_labels, num_classes=C, temperature=T)

``bank_offset`` makes the indices global, so ties between ranks break exactly as on one process:
the merged neighbours, and hence the accuracies, equal those of ``knn_neighbours`` on the whole bank.
Queries may be sharded instead (each rank classifying its queries against an all-gathered or
chunk-broadcast bank); then the counts of correct queries are summed across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

KNN_PROTOCOL = (
    "weighted kNN (Wu et al. 2018): cosine similarity of L2-normalised features, the k={k} most similar "
    "training features (ties: lower training index) vote for their label with weight exp(sim/{temperature}); "
    "top-1/top-5 accuracy of the class ranking by summed weight (ties: lower class index)"
)


@dataclass(frozen=True)
class Neighbours:
    """Each query's nearest training features, most similar first (ties: the lower index first).

    similarities: (Q, k) cosine similarities; labels: (Q, k) int64 training labels; indices: (Q, k)
    int64 global training indices (``bank_offset`` + the row in the shard).
    """

    similarities: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


@dataclass(frozen=True)
class KNNResult:
    """top1, top5: accuracies in [0, 1]; predictions: (Q, min(5, C)) class ranking, if asked for."""

    top1: float
    top5: float
    k: int
    temperature: float
    num_queries: int
    num_train: int
    predictions: torch.Tensor | None = None

    @property
    def protocol(self) -> str:
        return KNN_PROTOCOL.format(k=self.k, temperature=self.temperature)

    def as_dict(self) -> dict:
        return {"knn_top1": self.top1, "knn_top5": self.top5, "k": self.k, "temperature": self.temperature,
                "num_queries": self.num_queries, "num_train": self.num_train, "protocol": self.protocol}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _as_tensor(x, name: str) -> torch.Tensor:
    """A tensor view of ``x`` (numpy arrays and memmaps are wrapped; slices are read lazily)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return x  # kept as numpy: a memmap is sliced (read) chunk by chunk, see _rows
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _rows(x, start: int, stop: int, device, dtype=None) -> torch.Tensor:
    """Rows [start, stop) of a tensor or numpy array (memmap) on ``device``."""
    block = x[start:stop]
    if isinstance(block, np.ndarray):
        block = torch.from_numpy(np.ascontiguousarray(block) if block.flags.writeable else np.array(block))
    block = block.to(device, non_blocking=True)
    if dtype is not None:
        return block.to(dtype)
    return block.float() if block.dtype in (torch.float16, torch.bfloat16) else block


def _check_features(name: str, x, dim: int | None = None) -> None:
    if len(x.shape) != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a (rows, dim) array with at least one row, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the queries {dim}")


def _check_chunk(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _canonical_order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (value descending, index ascending); indices within a row are distinct."""
    order = indices.argsort(dim=1)
    values, indices = values.gather(1, order), indices.gather(1, order)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def deterministic_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``scores`` (R x M, k <= M) and their column indices,
    ordered by (value descending, column ascending): among equal values the lower column wins,
    also at the k-th place, where ``torch.topk`` may pick any of them."""
    if k == scores.shape[1]:  # every column: only the order is to fix
        return _canonical_order(scores, torch.arange(k, device=scores.device).expand_as(scores))
    values, indices = scores.topk(k + 1, dim=1)
    ambiguous = values[:, k] == values[:, k - 1]  # ties straddle the k-th place: topk's pick is arbitrary
    values, indices = values[:, :k], indices[:, :k]
    kth = values[:, -1:]
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        sub, sub_kth = scores[rows], kth[rows]
        greater, equal = sub > sub_kth, sub == sub_kth
        need = k - greater.sum(1, keepdim=True)
        take = greater | (equal & (equal.cumsum(1) <= need))
        cols = take.nonzero()[:, 1].view(len(rows), k)  # row-major: ascending columns
        indices = indices.clone()
        values = values.clone()
        indices[rows] = cols
        values[rows] = sub.gather(1, cols)
    return _canonical_order(values, indices)


def merge_neighbours(parts: Sequence[Neighbours], k: int) -> Neighbours:
    """The k nearest of the union of ``parts`` (each a Neighbours for the same queries, e.g. one per
    rank or bank chunk, with global indices), ordered by (similarity desc, index asc).

    Exact: the top-k of a union is the top-k of the parts' top-k's under this total order, so merging
    the shards' results equals a search of the whole bank."""
    if not parts:
        raise ValueError("merge_neighbours needs at least one part")
    sims = torch.cat([p.similarities for p in parts], dim=1)
    labels = torch.cat([p.labels for p in parts], dim=1)
    indices = torch.cat([p.indices for p in parts], dim=1)
    order = indices.argsort(dim=1)
    sims, labels, indices = sims.gather(1, order), labels.gather(1, order), indices.gather(1, order)
    sims, order = sims.sort(dim=1, descending=True, stable=True)
    order = order[:, :k]
    return Neighbours(sims[:, :k], labels.gather(1, order), indices.gather(1, order))


def _merge_after(first: Neighbours, second: Neighbours, k: int) -> Neighbours:
    """merge_neighbours([first, second], k) when both are in canonical order and every index of
    ``first`` is below every index of ``second`` (consecutive bank chunks): a stable sort by
    similarity then already breaks ties by index."""
    sims = torch.cat([first.similarities, second.similarities], dim=1)
    sims, order = sims.sort(dim=1, descending=True, stable=True)
    order = order[:, :k]
    labels = torch.cat([first.labels, second.labels], dim=1).gather(1, order)
    indices = torch.cat([first.indices, second.indices], dim=1).gather(1, order)
    return Neighbours(sims[:, :k], labels, indices)


# ---------------------------------------------------------------------------------------------
# Search, vote, score
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_neighbours(queries, bank, bank_labels, *, k: int = 200, bank_offset: int = 0, query_chunk: int = 1024,
                   bank_chunk: int | None = None, device: torch.device | str | None = None) -> Neighbours:
    """The min(k, N_bank) nearest bank rows (cosine of L2-normalised features) of every query.

    queries (Q, d), bank (N, d): tensors or numpy arrays (memmaps are read chunk by chunk);
    bank_labels (N,). ``bank_offset`` is added to the returned indices (the global index of this
    shard's first row, for ``merge_neighbours`` across ranks). float16/bfloat16 are computed in
    float32, float64 in float64. Memory on ``device`` (default: the queries' device): the
    normalised bank chunk (bank_chunk or N rows x d), the query_chunk x (bank_chunk or N)
    similarities and the Q x k running neighbours; the bank is read once, chunk by chunk.
    Raises ValueError if a selected similarity is not finite (NaN/inf features).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_chunk("query_chunk", query_chunk)
    _check_chunk("bank_chunk", bank_chunk)
    queries, bank = _as_tensor(queries, "queries"), _as_tensor(bank, "bank")
    _check_features("queries", queries)
    _check_features("bank", bank, queries.shape[1])
    labels = torch.as_tensor(bank_labels)
    if labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have shape ({bank.shape[0]},), got {tuple(labels.shape)}")
    if device is None:
        device = queries.device if isinstance(queries, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    n_query, n_bank = queries.shape[0], bank.shape[0]
    kk = min(k, n_bank)
    bank_step = bank_chunk or n_bank
    q_dtype = torch.float64 if queries.dtype in (torch.float64, np.float64) else torch.float32
    best: list[Neighbours | None] = [None] * ((n_query + query_chunk - 1) // query_chunk)
    for b_start in range(0, n_bank, bank_step):
        b_stop = min(b_start + bank_step, n_bank)
        block = F.normalize(_rows(bank, b_start, b_stop, device, q_dtype), dim=1)
        take = min(kk, b_stop - b_start)
        for qi, q_start in enumerate(range(0, n_query, query_chunk)):
            q = F.normalize(_rows(queries, q_start, min(q_start + query_chunk, n_query), device, q_dtype), dim=1)
            sims, cols = deterministic_topk(q @ block.T, take)
            part = Neighbours(sims, cols, cols + (bank_offset + b_start))  # labels filled in at the end
            best[qi] = part if best[qi] is None else _merge_after(best[qi], part, kk)
    sims = torch.cat([p.similarities for p in best])
    indices = torch.cat([p.indices for p in best])
    if not bool(torch.isfinite(sims).all()):
        raise ValueError("knn: non-finite similarities; the query or bank features contain NaN/inf")
    found = labels.to(device)[indices - bank_offset].long()
    return Neighbours(sims, found, indices)


def knn_class_scores(neighbours: Neighbours, num_classes: int, temperature: float = 0.1) -> torch.Tensor:
    """(Q, C) class scores: sum over each query's neighbours of exp(sim / T), by label.

    Computed as exp((sim - max sim) / T), i.e. every score of a query is divided by the same
    exp(max sim / T) > 0: the ranking of classes is unchanged and no exponential overflows, even for
    a small T."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    sims = neighbours.similarities
    weights = torch.exp((sims - sims[:, :1]) / temperature)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbours.labels.long(), weights)


def rank_classes(scores: torch.Tensor, top: int = 5) -> torch.Tensor:
    """(Q, min(top, C)) classes by score descending, ties broken by the lower class index."""
    return scores.sort(dim=1, descending=True, stable=True).indices[:, : min(top, scores.shape[1])]


def knn_accuracy(neighbours: Neighbours, query_labels, *, num_classes: int, temperature: float = 0.1,
                 k: int | None = None, num_train: int | None = None,
                 return_predictions: bool = False) -> KNNResult:
    """Top-1 / top-5 of the weighted vote of ``neighbours`` (the first ``k`` of each query, if given)."""
    if k is not None:
        neighbours = Neighbours(neighbours.similarities[:, :k], neighbours.labels[:, :k], neighbours.indices[:, :k])
    labels = torch.as_tensor(query_labels).to(neighbours.labels.device).long()
    if labels.shape != (neighbours.similarities.shape[0],):
        raise ValueError(f"query_labels must have shape ({neighbours.similarities.shape[0]},), "
                         f"got {tuple(labels.shape)}")
    ranked = rank_classes(knn_class_scores(neighbours, num_classes, temperature))
    hit = ranked == labels[:, None]
    return KNNResult(
        top1=float(hit[:, 0].double().mean()), top5=float(hit.any(1).double().mean()),
        k=neighbours.similarities.shape[1] if k is None else k, temperature=float(temperature),
        num_queries=len(labels), num_train=-1 if num_train is None else num_train,
        predictions=ranked.cpu() if return_predictions else None)


def knn_classify(train_features, train_labels, test_features, test_labels, *, k: int = 200,
                 temperature: float = 0.1, num_classes: int | None = None, query_chunk: int = 1024,
                 bank_chunk: int | None = None, device: torch.device | str | None = None,
                 return_predictions: bool = False) -> KNNResult:
    """The weighted kNN protocol (module docstring): classify ``test_features`` by ``train_features``.

    Labels are ints in [0, num_classes); num_classes defaults to 1 + the largest label of either
    split. Accuracies are fractions in [0, 1]; ``result.k`` is the number of neighbours that voted,
    min(k, N_train). Results do not depend on query_chunk / bank_chunk (up to the floating-point
    rounding of the matrix product, which may differ with the chunk shapes)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    train_labels, test_labels = torch.as_tensor(train_labels), torch.as_tensor(test_labels)
    for name, lab in (("train_labels", train_labels), ("test_labels", test_labels)):
        if lab.dim() != 1 or lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-d integer tensor, got {lab.dtype} of shape {tuple(lab.shape)}")
        if len(lab) and int(lab.min()) < 0:
            raise ValueError(f"{name} must be >= 0 (got {int(lab.min())})")
    largest = max(int(train_labels.max()), int(test_labels.max()) if len(test_labels) else 0)
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"a label ({largest}) is >= num_classes ({num_classes})")
    neighbours = knn_neighbours(test_features, train_features, train_labels, k=k, query_chunk=query_chunk,
                                bank_chunk=bank_chunk, device=device)
    result = knn_accuracy(neighbours, test_labels, num_classes=num_classes, temperature=temperature,
                          return_predictions=return_predictions, num_train=int(train_labels.shape[0]))
    return result
