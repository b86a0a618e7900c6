"""SGD linear probe on streamed features, and the online probe."""

import math

import numpy as np
import pytest
import torch

from fmicl_engine.eval.linear_sgd import (ChunkedFeatures, OnlineLinearProbe, TensorFeatures, feature_statistics,
                                          train_linear_probe)



def clusters(n, classes, dim, spread, seed, offset=5.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    # An offset and uneven scales: standardisation has something to do.
    x = centres[labels] + spread * torch.randn(n, dim, generator=g)
    return x * torch.linspace(0.5, 3.0, dim) + offset, labels


FAST = dict(epochs=8, lr=0.1, batch_size=64)


def test_separable_features_give_about_100_percent():
    x, y = clusters(1200, 8, 16, 0.2, seed=0)
    result = train_linear_probe((x[:900], y[:900]), (x[900:], y[900:]), **FAST)
    assert result.top1 > 0.98 and result.top5 == 1.0
    assert len(result.train_loss) == 8 and result.train_loss[-1] < result.train_loss[0]
    assert result.hyperparameters["num_classes"] == 8 and result.hyperparameters["num_train"] == 900
    assert "last epoch" in result.protocol and "batch-norm-free" in result.protocol
    assert result.as_dict()["linear_top1"] == result.top1


def test_random_labels_give_chance_level():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 16, generator=g)
    y = torch.randint(0, 10, (3000,), generator=g)
    result = train_linear_probe((x[:2000], y[:2000]), (x[2000:], y[2000:]), **FAST)
    assert abs(result.top1 - 0.1) < 0.04 and abs(result.top5 - 0.5) < 0.07


def test_determinism_and_seed():
    x, y = clusters(600, 5, 12, 2.0, seed=2)
    train, test = (x[:400], y[:400]), (x[400:], y[400:])
    a = train_linear_probe(train, test, seed=3, **FAST)
    b = train_linear_probe(train, test, seed=3, **FAST)
    c = train_linear_probe(train, test, seed=4, **FAST)
    assert a.train_loss == b.train_loss and (a.top1, a.top5) == (b.top1, b.top5)
    assert torch.equal(a.weight, b.weight)
    assert a.train_loss != c.train_loss


def test_streaming_equals_in_memory(tmp_path):
    x, y = clusters(500, 4, 10, 2.0, seed=5)
    kw = dict(**FAST, weight_decay=1e-3, momentum=0.8)
    in_memory = train_linear_probe(TensorFeatures(x[:350], y[:350], block_rows=100), (x[350:], y[350:]), **kw)
    # The same blocks from disk, memory-mapped (features and labels).
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    mx, my = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    mapped = train_linear_probe(TensorFeatures(mx[:350], my[:350], block_rows=100), (mx[350:], my[350:]), **kw)
    assert mapped.train_loss == in_memory.train_loss and (mapped.top1, mapped.top5) == (in_memory.top1, in_memory.top5)
    assert torch.equal(mapped.weight, in_memory.weight)
    # A loader of chunks (one chunk of everything, as a loader yields it) equals the whole in-memory tensor.
    whole = train_linear_probe((x[:350], y[:350]), (x[350:], y[350:]), **kw)
    loader = train_linear_probe([(x[:350], y[:350])], ChunkedFeatures(lambda: iter([(x[350:400], y[350:400]),
                                                                                   (x[400:], y[400:])])), **kw)
    assert loader.train_loss == whole.train_loss and torch.equal(loader.weight, whole.weight)
    assert (loader.top1, loader.top5) == (whole.top1, whole.top5)
    # Uneven chunks still train (mini-batches cut across chunk boundaries).
    chunks = [(x[a:b], y[a:b]) for a, b in [(0, 10), (10, 11), (11, 200), (200, 350)]]
    result = train_linear_probe(chunks, (x[350:], y[350:]), **kw)
    assert result.top1 > 0.5 and len(result.train_loss) == 8


def test_streaming_statistics_and_standardisation_choice():
    x, y = clusters(1000, 3, 6, 1.0, seed=6)
    chunks = [(x[a:a + 97], y[a:a + 97]) for a in range(0, 1000, 97)]
    stats = feature_statistics(chunks, rows_per_step=13)
    torch.testing.assert_close(stats.mean, x.double().mean(0))
    torch.testing.assert_close(stats.var, x.double().var(0, unbiased=False))
    assert stats.count == 1000 and stats.max_label == 2
    raw = train_linear_probe((x[:700], y[:700]), (x[700:], y[700:]), standardize=False, epochs=2, lr=0.01)
    assert raw.mean is None and "raw features" in raw.protocol


def test_errors():
    x, y = clusters(100, 3, 4, 1.0, seed=7)
    with pytest.raises(TypeError, match="one-shot"):
        train_linear_probe(iter([(x, y)]), (x, y), epochs=1)
    with pytest.raises(ValueError, match="num_classes"):
        train_linear_probe((x, y), (x, y), num_classes=2, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_linear_probe((x, y), (x, y), epochs=0)
    with pytest.raises(ValueError, match="held-out label"):
        train_linear_probe((x, y), (x, y + 5), num_classes=4, epochs=1)


def test_online_probe_learns_ignores_unlabelled_and_reports_per_epoch():
    torch.manual_seed(0)
    probe = OnlineLinearProbe(8, 4, lr=1e-2)
    g = torch.Generator().manual_seed(8)
    centres = 3 * torch.randn(4, 8, generator=g)
    tops = []
    for epoch in range(3):
        for step in range(30):
            y = torch.randint(0, 4, (32,), generator=g)
            features = (centres[y] + torch.randn(32, 8, generator=g)).requires_grad_()
            y_seen = y.clone()
            y_seen[:8] = -1  # unlabelled rows
            with torch.autocast("cpu", dtype=torch.bfloat16):
                probe.step(features * 1.0, y_seen)
            assert features.grad is None  # detached: nothing flows back to the encoder
        metrics = probe.compute()
        assert metrics["online_labelled"] == 30 * 24
        tops.append(metrics["online_top1"])
    assert tops[-1] > 0.9 and tops[-1] >= tops[0]
    assert math.isnan(probe.compute()["online_top1"])  # reset after compute
    # An all-unlabelled batch is no error and counts nothing.
    probe.step(torch.randn(4, 8), torch.full((4,), -1))
    assert probe.compute(reset=False)["online_labelled"] == 0
    assert set(probe.state_dict()) == {"linear.weight", "linear.bias"}
    assert "online linear probe" in probe.protocol
