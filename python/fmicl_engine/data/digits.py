"""The sklearn digits as a two-view dataset: offline, small, and deterministic.

1,797 8x8 grey images (10 classes) ship inside scikit-learn. A seeded stratified split holds out
a test set that pretraining never sees (the linear probe's test set). Each training image gives
two independently augmented views: a random resized crop with a small rotation (one affine warp,
upsampled to ``image_size``) plus Gaussian pixel noise.

Every random number of a view comes from a counter-based hash (splitmix64) of (seed, epoch,
sample index, view, draw number), turned into uniforms and, by Box-Muller, the noise's normals,
elementwise in numpy; the warp's sampling grid too is computed per sample. So the views of a
sample depend on those keys alone, not on its batch, the batch size, the number of ranks or the
thread count. The epoch order is the C++ sampler's ``shard_indices`` (DistributedSampler
semantics), so with W ranks of batch B each, local batch b of the ranks together holds exactly
the samples, and views, of batch b of one rank with batch W * B.

The loader follows the engine's loader protocol (shared with fmicl_engine.data's image-folder
loader): iterate for one epoch of ``(view1, view2, labels)`` batches, ``set_epoch(epoch)``,
``len()`` in batches, ``state_dict()`` / ``load_state_dict()`` as {"epoch", "position"}, position
counting this rank's samples of the epoch already handed out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmicl_engine.data.loader_state import EpochPositionState
from fmicl_engine.data.sampler import shard_indices

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


# --- counter-based random numbers -------------------------------------------------------------
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (2^64 / golden ratio)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _absorb(state: np.ndarray, key) -> np.ndarray:
    # + _GAMMA: the finaliser maps 0 to 0, so an all-zero key chain would otherwise stay 0.
    return _mix64((state ^ np.asarray(key, dtype=np.uint64)) + _GAMMA)


def random_bits(seed: int, epoch: int, indices: np.ndarray, view: int, num_draws: int) -> np.ndarray:
    """(len(indices), num_draws) uint64; entry (k, d) is a function of (seed, epoch, indices[k],
    view, d) only."""
    state = np.zeros(1, dtype=np.uint64)
    for key in (seed % 2**64, epoch % 2**64, view % 2**64):
        state = _absorb(state, key)
    state = _absorb(state, np.asarray(indices, dtype=np.int64).astype(np.uint64))[:, None]
    return _absorb(state, np.arange(num_draws, dtype=np.uint64)[None, :])


def uniforms(bits: np.ndarray) -> np.ndarray:
    """float64 uniforms in (0, 1) from the top 53 bits, centred on their grid: never 0 or 1."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normals(bits: np.ndarray) -> np.ndarray:
    """Two float32 standard normals per 64-bit draw, by Box-Muller on two 24-bit uniforms
    (float32: several times faster than float64, and ample for pixel noise); shape (..., 2n)."""
    def uniform24(shift: int) -> np.ndarray:
        word = ((bits >> np.uint64(shift)) & np.uint64(0xFFFFFF)).astype(np.float32)
        return (word + np.float32(0.5)) * np.float32(2.0**-24)

    radius = np.sqrt(np.float32(-2.0) * np.log(uniform24(40)))
    angle = np.float32(2.0 * np.pi) * uniform24(8)
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)


# --- augmentation -----------------------------------------------------------------------------
_GEOMETRY_DRAWS = 5  # crop scale, crop aspect ratio, crop centre x and y, rotation


@dataclass(frozen=True)
class DigitsAugmentation:
    """One random view per sample: crop + rotation as a single affine warp, then pixel noise.
    (Defaults and reasons: fmicl_engine.config.schema.DigitsConfig.)"""

    image_size: int
    crop_scale_min: float  # area fraction of the crop, uniform in [crop_scale_min, 1]
    max_rotation_deg: float  # uniform in [-max, max]
    noise_std: float  # standard deviation of additive Gaussian noise
    log_ratio_range: tuple[float, float] = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's

    def __call__(self, images: torch.Tensor, indices: np.ndarray, *, seed: int, epoch: int,
                 view: int) -> torch.Tensor:
        """images: B x 1 x h x w in [0, 1], the dataset samples ``indices`` -> their view ``view``
        (B x 1 x image_size x image_size)."""
        pixels = self.image_size**2
        bits = random_bits(seed, epoch, indices, view, _GEOMETRY_DRAWS + (pixels + 1) // 2)
        u = uniforms(bits[:, :_GEOMETRY_DRAWS])
        scale = self.crop_scale_min + (1.0 - self.crop_scale_min) * u[:, 0]
        lo, hi = self.log_ratio_range
        ratio = np.exp(lo + (hi - lo) * u[:, 1])
        w = np.minimum(np.sqrt(scale * ratio), 1.0)  # crop side as a fraction of the image side
        h = np.minimum(np.sqrt(scale / ratio), 1.0)
        cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # crop centre, kept inside the image ([-1, 1] coordinates)
        cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
        angle = math.radians(self.max_rotation_deg) * (2.0 * u[:, 4] - 1.0)
        cos, sin = np.cos(angle), np.sin(angle)
        # Output grid (x, y) in [-1, 1]^2 -> input point R(angle) diag(w, h) (x, y) + (cx, cy).
        theta = np.stack([np.stack([w * cos, -h * sin, cx], axis=1), np.stack([w * sin, h * cos, cy], axis=1)],
                         axis=1)  # B x 2 x 3
        views = warp(images, theta, self.image_size)
        noise = normals(bits[:, _GEOMETRY_DRAWS:])[:, :pixels]
        noise = torch.from_numpy(np.ascontiguousarray(noise)).reshape(views.shape)
        return views + self.noise_std * noise


def warp(images: torch.Tensor, theta: np.ndarray, size: int) -> torch.Tensor:
    """Bilinear affine resampling to size x size; outside the image is background (0).

    The sampling grid is computed per sample in numpy (float64, elementwise) rather than by
    F.affine_grid's batched matmul, so that a sample's view cannot depend on its batch."""
    coords = (2.0 * np.arange(size) + 1.0) / size - 1.0  # pixel centres (align_corners=False)
    x, y = coords[None, None, :], coords[None, :, None]
    t = theta[:, :, :, None, None]  # B x 2 x 3 x 1 x 1
    grid = np.stack([t[:, 0, 0] * x + t[:, 0, 1] * y + t[:, 0, 2],
                     t[:, 1, 0] * x + t[:, 1, 1] * y + t[:, 1, 2]], axis=-1)  # B x size x size x 2
    grid = torch.from_numpy(grid.astype(np.float32))
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented image at the views' resolution, by the same resampling (for the probe)."""
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return warp(images, np.broadcast_to(identity, (images.shape[0], 2, 3)), size)


# --- loader -----------------------------------------------------------------------------------
class DigitsTwoViewLoader(EpochPositionState):
    """Batches of two augmented views of this rank's share of the training split, in a seeded
    per-epoch order.

    ``batch_size`` is this rank's (the global batch is batch_size * world_size). ``drop_last``:
    each rank's share is truncated to a multiple of world_size and the last partial batch
    dropped; otherwise the share is padded (DistributedSampler) and the last batch may be short.
    """

    def __init__(self, data: LabelledImages, *, batch_size: int, seed: int, augmentation: DigitsAugmentation,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True):
        n = len(data.labels)
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size < 1 or (drop_last and batch_size * world_size > n):
            raise ValueError(f"batch_size must be in [1, {n // world_size}] for {world_size} rank(s) "
                             f"of {n} samples, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.augmentation = augmentation
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # samples of this epoch already handed out by this rank

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices for ``epoch``, in order."""
        return shard_indices(len(self.data.labels), seed=self.seed, epoch=epoch, rank=self.rank,
                             world_size=self.world_size, drop_last=self.drop_last)

    def shard_size(self) -> int:
        n, world = len(self.data.labels), self.world_size
        return n // world if self.drop_last else math.ceil(n / world)

    def __len__(self) -> int:
        n = self.shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_end(self) -> int:
        """The position after the epoch's last batch."""
        return len(self) * self.batch_size if self.drop_last else self.shard_size()

    def check_position(self, position: int) -> None:
        if not 0 <= position <= self.epoch_end() or (position % self.batch_size and position != self.epoch_end()):
            raise ValueError(f"position {position} is not a batch boundary of this loader "
                             f"(batch_size {self.batch_size}, {len(self)} batches)")

    def __iter__(self):
        shard, end = self.shard(self.epoch), self.epoch_end()
        for start in range(self.position, end, self.batch_size):
            index = shard[start : min(start + self.batch_size, end)]
            images = self.data.images[torch.from_numpy(index)]
            view1, view2 = (self.augmentation(images, index, seed=self.seed, epoch=self.epoch, view=v)
                            for v in (0, 1))
            # Counted as handed out when yielded, so a state_dict taken after the step continues after it.
            self.position = min(start + self.batch_size, end)
            yield view1, view2, self.data.labels[torch.from_numpy(index)]
