"""The sklearn digits as a two-view dataset: offline, small, and deterministic.

1,797 8x8 grey images (10 classes) ship inside scikit-learn. A seeded stratified split holds out
a test set that pretraining never sees (the linear probe's test set). Each training image gives
two independently augmented views: a random resized crop with a small rotation (one affine warp,
upsampled to ``image_size``) plus Gaussian pixel noise, computed in torch from a generator keyed
by (seed, epoch, batch index). Data order and augmentations therefore depend on the seed alone,
not on thread count, and a loader restored to (epoch, position) repeats exactly what an
uninterrupted run would have produced.

The loader follows the engine's loader protocol (shared with fmicl_engine.data's image-folder
loader): iterate for one epoch of ``(view1, view2, labels)`` batches, ``set_epoch(epoch)``,
``len()`` in batches, ``state_dict()`` / ``load_state_dict()`` as {"epoch", "position"}, position
counting the samples of the epoch already handed out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmicl_engine.data.loader_state import EpochPositionState

NUM_CLASSES = 10


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # N x 1 x 8 x 8, float32 in [0, 1]
    labels: torch.Tensor  # N, int64


def load_digits_split(test_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """(train, test): a stratified split of the digits, the same for the same seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values 0..16
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=digits.target, random_state=seed % 2**32
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return LabelledImages(images[train_idx], labels[train_idx]), LabelledImages(images[test_idx], labels[test_idx])


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class DigitsAugmentation:
    """One random view of a batch: crop + rotation as a single affine warp, then pixel noise.
    (Defaults and reasons: fmicl_engine.config.schema.DigitsConfig.)"""

    image_size: int
    crop_scale_min: float  # area fraction of the crop, uniform in [crop_scale_min, 1]
    max_rotation_deg: float  # uniform in [-max, max]
    noise_std: float  # standard deviation of additive Gaussian noise
    log_ratio_range: tuple[float, float] = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images: B x 1 x h x w in [0, 1] -> B x 1 x image_size x image_size."""
        b = images.shape[0]
        u = torch.rand(b, 5, generator=generator, dtype=torch.float64)  # every draw of a view, in one order
        scale = self.crop_scale_min + (1.0 - self.crop_scale_min) * u[:, 0]
        lo, hi = self.log_ratio_range
        ratio = torch.exp(lo + (hi - lo) * u[:, 1])
        w = torch.sqrt(scale * ratio).clamp(max=1.0)  # crop side as a fraction of the image side
        h = torch.sqrt(scale / ratio).clamp(max=1.0)
        cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # crop centre, kept inside the image ([-1, 1] coordinates)
        cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
        angle = math.radians(self.max_rotation_deg) * (2.0 * u[:, 4] - 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Output grid (x, y) in [-1, 1]^2 -> input point R(angle) diag(w, h) (x, y) + (cx, cy).
        theta = torch.stack(
            [torch.stack([w * cos, -h * sin, cx], dim=1), torch.stack([w * sin, h * cos, cy], dim=1)], dim=1
        ).to(images.dtype)  # B x 2 x 3
        views = warp(images, theta, self.image_size)
        noise = torch.randn(views.shape, generator=generator, dtype=views.dtype)
        return views + self.noise_std * noise


def warp(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear affine resampling to size x size; outside the image is background (0)."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented image at the views' resolution, by the same resampling (for the probe)."""
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=images.dtype)
    return warp(images, identity.expand(images.shape[0], 2, 3), size)


class DigitsTwoViewLoader(EpochPositionState):
    """Batches of two augmented views of the training split, in a seeded per-epoch order."""

    def __init__(self, data: LabelledImages, *, batch_size: int, seed: int, augmentation: DigitsAugmentation,
                 drop_last: bool = True):
        if batch_size < 1 or (drop_last and batch_size > len(data.labels)):
            raise ValueError(f"batch_size must be in [1, {len(data.labels)}], got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.augmentation = augmentation
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # samples of this epoch already handed out

    def __len__(self) -> int:
        n = len(self.data.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def check_position(self, position: int) -> None:
        if position % self.batch_size or not 0 <= position <= len(self) * self.batch_size:
            raise ValueError(f"position {position} is not a batch boundary of this loader "
                             f"(batch_size {self.batch_size}, {len(self)} batches)")

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        return torch.randperm(len(self.data.labels), generator=generator)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        for batch in range(self.position // self.batch_size, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            # batch + 1: SeedSequence pads its keys with zeros, so a key 0 here would alias epoch_order's.
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, batch + 1))
            images = self.data.images[index]
            view1 = self.augmentation(images, generator)
            view2 = self.augmentation(images, generator)  # the generator has moved on: independent draws
            # Counted as handed out when yielded, so a state_dict taken after the step continues after it.
            self.position = min((batch + 1) * self.batch_size, len(self.data.labels))
            yield view1, view2, self.data.labels[index]
