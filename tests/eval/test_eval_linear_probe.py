"""The linear probe: label subsets, accuracy on separable vs. unrelated labels, frozen features."""

import numpy as np
import torch

from fmicl_engine.eval import ProbeData, extract_features, fit_and_score, label_subset, linear_probe
from fmicl_engine.models import build_model


def test_label_subset_takes_n_per_class_deterministically():
    labels = np.repeat(np.arange(4), [5, 7, 6, 9])
    index = label_subset(labels, 3, seed=0)
    assert np.array_equal(np.bincount(labels[index]), [3, 3, 3, 3])
    assert np.array_equal(index, label_subset(labels, 3, seed=0)) and len(set(index)) == 12
    assert not np.array_equal(index, label_subset(labels, 3, seed=1))


def test_probe_separates_informative_features_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 5)) + 3.0 * np.eye(3, 5)[y]
    assert fit_and_score(x[:400], y[:400], x[400:], y[400:], c=1.0, max_iter=200) > 0.95
    noise = rng.normal(size=(600, 5))
    assert fit_and_score(noise[:400], y[:400], noise[400:], y[400:], c=1.0, max_iter=200) < 0.5


def test_features_are_extracted_frozen_and_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("digits_cnn", in_channels=1, cnn_width=4).train()
    images = torch.randn(10, 1, 16, 16)
    whole = extract_features(model, images, which="encoder", batch_size=10, device=torch.device("cpu"))
    chunked = extract_features(model, images, which="encoder", batch_size=3, device=torch.device("cpu"))
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-6)  # running BN stats: batch-independent
    assert model.training  # restored
    assert extract_features(model, images, which="projector", batch_size=4, device=torch.device("cpu")).shape == (10, 64)


def test_linear_probe_reports_the_few_label_and_all_label_accuracy():
    torch.manual_seed(0)
    model = build_model("digits_cnn", in_channels=1, cnn_width=4)
    labels = torch.arange(40) % 4
    images = torch.randn(40, 1, 16, 16) + labels.float().view(-1, 1, 1, 1)  # brightness encodes the class
    data = ProbeData(images[:24], labels[:24], images[24:], labels[24:])
    kw = dict(which="encoder", c=1.0, max_iter=200, batch_size=16, device=torch.device("cpu"))
    assert set(linear_probe(model, data, **kw)) == {"top1"}
    few = linear_probe(model, data, labels_per_class=2, label_subsets=3, seed=0, **kw)
    assert set(few) == {"top1", "top1_all_labels"} and 0.0 <= few["top1"] <= 1.0
    assert few == linear_probe(model, data, labels_per_class=2, label_subsets=3, seed=0, **kw)
