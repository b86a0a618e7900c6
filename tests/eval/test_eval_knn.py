"""Weighted kNN: known structure, a direct O(N^2) implementation, chunking, ties, shards."""

import math

import numpy as np
import pytest
import torch

from fmicl_engine.eval.knn import (Neighbours, deterministic_topk, knn_accuracy, knn_classify, knn_neighbours,
                                   merge_neighbours)



def direct_knn(train_x, train_y, test_x, k, temperature, num_classes):
    """O(N^2) reference: full similarity matrix, Python sort by (-sim, index), class ranking by (-score, class)."""
    tr = train_x / train_x.norm(dim=1, keepdim=True)
    te = test_x / test_x.norm(dim=1, keepdim=True)
    sims = (te @ tr.T).tolist()
    ranked = []
    for row in sims:
        nearest = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        scores = [0.0] * num_classes
        for j in nearest:
            scores[int(train_y[j])] += math.exp(row[j] / temperature)
        ranked.append(sorted(range(num_classes), key=lambda c: (-scores[c], c))[:5])
    return ranked


def clusters(n, classes, dim, spread, generator):
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, dim, generator=generator)
    return centres[labels] + spread * torch.randn(n, dim, generator=generator), labels


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    x, y = clusters(700, 10, 32, 0.05, g)
    result = knn_classify(x[:500], y[:500], x[500:], y[500:], query_chunk=64)
    assert result.top1 == 1.0 and result.top5 == 1.0
    assert result.k == 200 and result.num_train == 500 and result.num_queries == 200
    assert "k=200" in result.protocol and "exp(sim/0.1)" in result.protocol


def test_random_labels_give_chance_level():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 16, generator=g)
    y = torch.randint(0, 10, (3000,), generator=g)
    result = knn_classify(x[:2000], y[:2000], x[2000:], y[2000:], k=50)
    assert abs(result.top1 - 0.1) < 0.04 and abs(result.top5 - 0.5) < 0.06


@pytest.mark.parametrize("k,temperature", [(200, 0.1), (7, 0.5), (1, 0.07)])
def test_matches_the_direct_implementation(k, temperature):
    g = torch.Generator().manual_seed(k)
    x, y = clusters(260, 6, 8, 1.0, g)  # overlapping clusters: the vote matters
    x = x.double()
    result = knn_classify(x[:180], y[:180], x[180:], y[180:], k=k, temperature=temperature, num_classes=6,
                          query_chunk=17, bank_chunk=23, return_predictions=True)
    ranked = direct_knn(x[:180], y[:180], x[180:], min(k, 180), temperature, 6)
    assert result.predictions.tolist() == ranked
    want_top1 = np.mean([r[0] == t for r, t in zip(ranked, y[180:].tolist())])
    want_top5 = np.mean([t in r for r, t in zip(ranked, y[180:].tolist())])
    assert result.top1 == want_top1 and result.top5 == want_top5
    assert 0.2 < result.top1 < 1.0  # not trivial


def test_chunk_sizes_do_not_change_results():
    g = torch.Generator().manual_seed(3)
    x, y = clusters(400, 5, 12, 1.5, g)
    whole = knn_neighbours(x[300:], x[:300], y[:300], k=40, query_chunk=100)
    reference = knn_classify(x[:300], y[:300], x[300:], y[300:], k=40, query_chunk=100, return_predictions=True)
    for q_chunk, b_chunk in [(1, None), (7, 13), (100, 300), (33, 1), (1000, 64)]:
        got = knn_neighbours(x[300:], x[:300], y[:300], k=40, query_chunk=q_chunk, bank_chunk=b_chunk)
        assert torch.equal(got.indices, whole.indices) and torch.equal(got.labels, whole.labels)
        torch.testing.assert_close(got.similarities, whole.similarities)
        result = knn_classify(x[:300], y[:300], x[300:], y[300:], k=40, query_chunk=q_chunk, bank_chunk=b_chunk,
                              return_predictions=True)
        assert torch.equal(result.predictions, reference.predictions)
        assert (result.top1, result.top5) == (reference.top1, reference.top5)


def test_ties_are_broken_by_the_lower_index_and_the_lower_class():
    # Unit vectors with exact dot products: the bank holds e0 four times, then e1 twice.
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    bank = torch.stack([e1, e0, e0, e1, e0, e0])
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    query = torch.stack([e0, torch.tensor([0.6, 0.8])])
    for q_chunk, b_chunk in [(1, None), (2, 1), (2, 4), (1, 5)]:
        got = knn_neighbours(query, bank, labels, k=3, query_chunk=q_chunk, bank_chunk=b_chunk)
        assert got.indices[0].tolist() == [1, 2, 4]  # four exact ties for three places: lowest indices
        assert got.indices[1].tolist() == [0, 3, 1]  # 0.8, 0.8, then the first 0.6
    # A tie in class scores ranks the lower class first: one neighbour each of classes 3 and 1.
    tie = Neighbours(torch.tensor([[0.5, 0.5]]), torch.tensor([[3, 1]]), torch.tensor([[0, 1]]))
    result = knn_accuracy(tie, torch.tensor([1]), num_classes=4, return_predictions=True)
    assert result.predictions.tolist() == [[1, 3, 0, 2]] and result.top1 == 1.0
    # deterministic_topk on a constant row takes the first k columns.
    values, cols = deterministic_topk(torch.zeros(3, 10), 4)
    assert cols.tolist() == [[0, 1, 2, 3]] * 3


def test_sharded_bank_merges_to_the_whole_bank_result():
    g = torch.Generator().manual_seed(4)
    x, y = clusters(350, 4, 10, 1.0, g)
    queries, bank, labels = x[300:], x[:300], y[:300]
    whole = knn_neighbours(queries, bank, labels, k=25)
    bounds = [0, 70, 71, 200, 300]  # uneven shards, one of a single row
    parts = [knn_neighbours(queries, bank[a:b], labels[a:b], k=25, bank_offset=a) for a, b in zip(bounds, bounds[1:])]
    merged = merge_neighbours(parts, 25)
    assert torch.equal(merged.indices, whole.indices) and torch.equal(merged.labels, whole.labels)
    assert parts[1].indices.shape == (50, 1) and int(parts[1].indices[0, 0]) == 70


def test_small_banks_memmaps_and_errors(tmp_path):
    g = torch.Generator().manual_seed(5)
    x, y = clusters(60, 3, 6, 0.1, g)
    result = knn_classify(x[:10], y[:10], x[10:], y[10:])  # k = 200 > 10 training features: all vote
    assert result.k == 10
    path = tmp_path / "bank.npy"
    np.save(path, x[:10].numpy())
    mapped = np.load(path, mmap_mode="r")
    from_disk = knn_classify(mapped, y[:10], x[10:].numpy(), y[10:], bank_chunk=3, return_predictions=True)
    in_memory = knn_classify(x[:10], y[:10], x[10:], y[10:], return_predictions=True)
    assert torch.equal(from_disk.predictions, in_memory.predictions)
    half = knn_classify(x[:10].half(), y[:10], x[10:].half(), y[10:])
    assert half.top1 == pytest.approx(result.top1, abs=0.05)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(x[:10], y[:10], x[10:], y[10:], num_classes=2)
    with pytest.raises(ValueError, match="dimension"):
        knn_classify(x[:10, :5], y[:10], x[10:], y[10:])
    with pytest.raises(ValueError, match="non-finite"):
        bad = x[:10].clone()
        bad[3, 0] = float("nan")
        knn_classify(bad, y[:10], x[10:], y[10:])
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(x[:10], y[:10], x[10:], y[10:], temperature=0.0)
