"""The augmentation-pair sampler (C++, ``fmicl_engine._C.sampler``): epoch shards and both views'
parameters as numpy arrays, every draw keyed by (seed, epoch, sample index, view)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmicl_engine._ext import _C
from fmicl_engine.data.recipe import AugmentationRecipe

# Indices of ViewPairParams.jitter_order entries.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewPairParams:
    """Both views' parameters for n samples; the second axis is the view."""

    crop: np.ndarray            # n x 2 x 4 int32: top, left, height, width (pixels)
    flip: np.ndarray            # n x 2 bool
    jitter: np.ndarray          # n x 2 bool: ColorJitter applied
    jitter_factors: np.ndarray  # n x 2 x 4 float32: brightness, contrast, saturation, hue
    jitter_order: np.ndarray    # n x 2 x 4 uint8: operations in application order
    grayscale: np.ndarray       # n x 2 bool
    blur_sigma: np.ndarray      # n x 2 float32; 0 where no blur
    solarize: np.ndarray        # n x 2 bool

    def __len__(self) -> int:
        return self.crop.shape[0]


def shard_indices(num_samples: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> np.ndarray:
    """This rank's share (int64) of the epoch's permutation of range(num_samples).

    DistributedSampler semantics: the permutation is padded by repeating its head up to a multiple
    of world_size, or with ``drop_last`` truncated to one; rank r takes positions r, r + W, ...
    """
    return _C.sampler.shard_indices(num_samples, seed, epoch, rank, world_size, drop_last)


def sample_view_pairs(indices: np.ndarray, widths: np.ndarray, heights: np.ndarray, *,
                      recipe: AugmentationRecipe, seed: int, epoch: int,
                      num_threads: int = 1) -> ViewPairParams:
    """Both views' parameters for the samples ``indices`` whose images are widths x heights."""
    raw = _C.sampler.sample_view_pairs(
        np.ascontiguousarray(indices, dtype=np.int64),
        np.ascontiguousarray(widths, dtype=np.int32),
        np.ascontiguousarray(heights, dtype=np.int32),
        seed, epoch, recipe.view1.to_native(), recipe.view2.to_native(), num_threads,
    )
    for flag in ("flip", "jitter", "grayscale", "solarize"):
        raw[flag] = raw[flag].view(np.bool_)
    return ViewPairParams(**raw)
