"""Linear-probe evaluation: a logistic-regression classifier on frozen features.

The probe is fixed and simple (standardised features, multinomial logistic regression with a
fixed L2 strength, scikit-learn's L-BFGS), so two encoders are compared by their features alone.
With ``labels_per_class > 0`` it is fitted on that many labelled images per class (the mean over
seeded label subsets), the semi-supervised protocol: on the digits, every training label makes
even a random CNN's features ~97% separable, so only a few-label probe shows what pretraining adds.
It suits datasets whose features fit in memory (the digits); ImageNet-scale probes need an SGD
probe over a feature loader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmicl_engine.models.encoders import SSLModel


@dataclass(frozen=True)
class ProbeData:
    """Un-augmented labelled images, at the model's input resolution."""

    train_images: torch.Tensor  # N x C x H x W
    train_labels: torch.Tensor  # N
    test_images: torch.Tensor  # M x C x H x W
    test_labels: torch.Tensor  # M


@torch.no_grad()
def extract_features(model: SSLModel, images: torch.Tensor, *, which: str, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Features ("encoder") or embeddings ("projector") of ``images``, model in eval mode."""
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics: features do not depend on the batch
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            features, embeddings = model(images[start : start + batch_size].to(device))
            chunks.append((features if which == "encoder" else embeddings).float().cpu())
        return torch.cat(chunks).numpy()
    finally:
        model.train(was_training)


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                  c: float, max_iter: int) -> float:
    """Top-1 accuracy (0..1) on the test set of the probe fitted on the training set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def label_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of every class, drawn without replacement."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has {len(members)} examples, fewer than labels_per_class={per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def linear_probe(model: SSLModel, data: ProbeData, *, which: str, c: float, max_iter: int, batch_size: int,
                 device: torch.device, labels_per_class: int = 0, label_subsets: int = 1,
                 seed: int = 0) -> dict[str, float]:
    """{"top1": the configured probe's test accuracy} (+ "top1_all_labels" for a few-label probe).

    The label subsets depend on ``seed`` and the labels only, so two encoders (random init and
    pretrained) are probed with the same labelled images."""
    train_x = extract_features(model, data.train_images, which=which, batch_size=batch_size, device=device)
    test_x = extract_features(model, data.test_images, which=which, batch_size=batch_size, device=device)
    train_y, test_y = data.train_labels.numpy(), data.test_labels.numpy()
    all_labels = fit_and_score(train_x, train_y, test_x, test_y, c=c, max_iter=max_iter)
    if labels_per_class == 0:
        return {"top1": all_labels}
    scores = []
    for subset in range(label_subsets):
        index = label_subset(train_y, labels_per_class, seed=int(np.random.SeedSequence([seed, subset]).generate_state(1)[0]))
        scores.append(fit_and_score(train_x[index], train_y[index], test_x, test_y, c=c, max_iter=max_iter))
    return {"top1": float(np.mean(scores)), "top1_all_labels": all_labels}
