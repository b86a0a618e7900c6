"""Frozen-encoder features of each data set's train and held-out splits, for evaluation.

Every split goes through a deterministic eval transform (no augmentation): the digits at the
views' resolution; an ImageFolder tree resized to size / 0.875 and centre-cropped to size (256 ->
224 for ImageNet), normalised with ImageNet's statistics; CIFAR and STL-10 at their views'
resolution, normalised with the statistics their views use. The train split is
``data.imagefolder.root`` or the data set's training split; the held-out split is
``data.imagefolder.val_root`` or the data set's test split.

Under torchrun each rank extracts every W-th image; the shards are written under the cache
directory and rank 0 reads them back in data set order. A cache written for the same checkpoint
step is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from fmicl_engine.atomic_files import write_atomically
from fmicl_engine.config import Config, ConfigError
from fmicl_engine.data.recipe import IMAGENET_MEAN, IMAGENET_STD
from fmicl_engine.train.distributed import DistContext, barrier

CENTRE_CROP_RATIO = 0.875  # 224 / 256: the standard ImageNet evaluation crop


@dataclass(frozen=True)
class EvalSplits:
    train: Dataset  # items (image tensor, label)
    test: Dataset
    num_classes: int


def _digits(cfg: Config) -> EvalSplits:
    from fmicl_engine.data.digits import NUM_CLASSES, load_digits_split, resize

    d = cfg.data.digits
    train, test = load_digits_split(d.test_fraction, cfg.run.seed)
    return EvalSplits(TensorDataset(resize(train.images, d.image_size), train.labels),
                      TensorDataset(resize(test.images, d.image_size), test.labels), NUM_CLASSES)


def _centre_crop(size: int, mean, std):
    import torchvision.transforms as T

    return T.Compose([T.Resize(round(size / CENTRE_CROP_RATIO)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def _imagefolder(cfg: Config) -> EvalSplits:
    from torchvision.datasets import ImageFolder

    f = cfg.data.imagefolder
    if not f.val_root:
        raise ConfigError("data.imagefolder.val_root", "is required to evaluate an ImageFolder run (the held-out "
                          "split, e.g. ImageNet's val/ in class folders)")
    transform = _centre_crop(f.image_size, IMAGENET_MEAN, IMAGENET_STD)
    train, test = ImageFolder(f.root, transform=transform), ImageFolder(f.val_root, transform=transform)
    if train.classes != test.classes:
        raise ConfigError("data.imagefolder.val_root", f"its classes differ from data.imagefolder.root's "
                          f"({len(test.classes)} vs {len(train.classes)} folders)")
    return EvalSplits(train, test, len(train.classes))


def _torchvision_set(name: str, cfg: Config) -> EvalSplits:
    import torchvision.transforms as T

    from fmicl_engine.data.torchvision_sets import SETS, open_set

    spec, t = SETS[name], cfg.data.torchvision
    size = t.image_size or spec.native_size
    steps = [T.Resize(size)] if size != spec.native_size else []
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    with _config_error("data.torchvision.root"):
        train, test = open_set(name, t.root, "train"), open_set(name, t.root, "test")
    train.transform = test.transform = transform
    return EvalSplits(train, test, len(train.classes))


class _config_error:
    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, ValueError) and not isinstance(err, ConfigError):
            raise ConfigError(self.key, str(err)) from None
        return False


EVAL_SETS: dict[str, Callable[[Config], EvalSplits]] = {
    "digits": _digits,
    "imagefolder": _imagefolder,
    "cifar10": lambda cfg: _torchvision_set("cifar10", cfg),
    "cifar100": lambda cfg: _torchvision_set("cifar100", cfg),
    "stl10": lambda cfg: _torchvision_set("stl10", cfg),
}


def eval_splits(cfg: Config) -> EvalSplits:
    return EVAL_SETS[cfg.data.dataset](cfg)


@torch.no_grad()
def _extract_shard(encoder: torch.nn.Module, dataset: Dataset, indices: list[int], *, batch_size: int,
                   device: torch.device, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels = [], []
    for images, targets in loader:
        features.append(encoder(images.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    dim = getattr(encoder, "out_dim", 0)
    return (torch.cat(features) if features else torch.empty(0, dim),
            torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64))


def extract_features(encoder: torch.nn.Module, dataset: Dataset, *, name: str, cache_dir: Path, ctx: DistContext,
                     batch_size: int, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(features, labels) of ``dataset`` in its order, on rank 0 (None on the others).

    The encoder is put in eval mode (BatchNorm's running statistics: a feature does not depend on
    its batch) and restored afterwards."""
    complete = cache_dir / f"{name}.pt"
    if complete.exists():
        return torch.load(complete, weights_only=True) if ctx.is_main else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    was_training = encoder.training
    encoder.eval()
    try:
        indices = list(range(ctx.rank, len(dataset), ctx.world_size))
        shard = _extract_shard(encoder, dataset, indices, batch_size=batch_size, device=ctx.device,
                               num_workers=num_workers)
    finally:
        encoder.train(was_training)
    if not ctx.distributed:
        features, labels = shard
    else:
        torch.save(shard, cache_dir / f"{name}.rank{ctx.rank}.pt")
        barrier(ctx)
        if not ctx.is_main:
            barrier(ctx)
            return None
        shards = [torch.load(cache_dir / f"{name}.rank{r}.pt", weights_only=True) for r in range(ctx.world_size)]
        features = torch.empty(len(dataset), shards[0][0].shape[1])
        labels = torch.empty(len(dataset), dtype=torch.int64)
        for r, (f, y) in enumerate(shards):  # rank r holds images r, r + W, ...
            features[r::ctx.world_size], labels[r::ctx.world_size] = f, y
    if ctx.is_main:
        write_atomically(complete, lambda f: torch.save((features, labels), f))
        for r in range(ctx.world_size if ctx.distributed else 0):
            (cache_dir / f"{name}.rank{r}.pt").unlink(missing_ok=True)
    if ctx.distributed:
        barrier(ctx)
    return features, labels
