"""The reference loader: torchvision transforms on PIL images in a DataLoader, same recipe.

It draws nothing itself: each sample's views use the C++ sampler's parameters (the same keys as
the DALI pipeline), applied with torchvision.transforms.functional in torchvision's order. So it
is both the equivalence reference for the DALI pipeline, view by view, and the speed baseline of
a conventional loader. The engine trains with the DALI loader.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image

from fmicl_engine.data.loader_state import EpochPositionState
from fmicl_engine.data.image_index import ImageIndex
from fmicl_engine.data.recipe import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD,
                                      AugmentationRecipe)
from fmicl_engine.data.sampler import (BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewPairParams,
                                       sample_view_pairs, shard_indices)


def colour_jitter(image: Image.Image, order, factors, grayscale: bool) -> Image.Image:
    """ColorJitter's steps in ``order`` (BRIGHTNESS, CONTRAST, SATURATION, HUE; any other value
    is no step) with ``factors`` (brightness, contrast, saturation, hue), then RandomGrayscale's
    conversion if ``grayscale``: torchvision on a PIL image."""
    adjust = {BRIGHTNESS: F.adjust_brightness, CONTRAST: F.adjust_contrast,
              SATURATION: F.adjust_saturation, HUE: F.adjust_hue}
    for op in order:
        if op in adjust:
            image = adjust[int(op)](image, float(factors[int(op)]))
    if grayscale:
        image = F.rgb_to_grayscale(image, num_output_channels=3)
    return image


def apply_view(image: Image.Image, params: ViewPairParams, sample: int, view: int,
               image_size: int, blur_kernel: int, colour: bool = True) -> Image.Image:
    """One view of one sample, as a PIL image, from the sampler's parameters."""
    top, left, height, width = (int(x) for x in params.crop[sample, view])
    out = F.resized_crop(image, top, left, height, width, [image_size, image_size],
                         interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    if params.flip[sample, view]:
        out = F.hflip(out)
    if not colour:
        return out
    factors = params.jitter_factors[sample, view]
    order = params.jitter_order[sample, view] if params.jitter[sample, view] else []
    # ColorJitter(hue=0) never calls adjust_hue, whose HSV round trip is lossy.
    order = [op for op in order if op != HUE or factors[HUE] != 0.0]
    out = colour_jitter(out, order, factors, bool(params.grayscale[sample, view]))
    sigma = float(params.blur_sigma[sample, view])
    if sigma > 0:
        out = F.gaussian_blur(out, [blur_kernel, blur_kernel], [sigma, sigma])
    if params.solarize[sample, view]:
        out = F.solarize(out, SOLARIZE_THRESHOLD)
    return out


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    return F.normalize(F.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


class TwoViewDataset(torch.utils.data.Dataset):
    """Sample i -> (view1, view2, label) for one epoch; views from the sampler's parameters."""

    def __init__(self, index: ImageIndex, recipe: AugmentationRecipe, image_size: int, seed: int,
                 epoch: int = 0):
        self.index, self.recipe, self.image_size = index, recipe, image_size
        self.seed, self.epoch = seed, epoch
        self.blur_kernel = recipe.blur_kernel_size(image_size)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        with Image.open(self.index.paths[i]) as f:
            image = f.convert("RGB")
        params = sample_view_pairs(np.array([i]), self.index.widths[[i]], self.index.heights[[i]],
                                   recipe=self.recipe, seed=self.seed, epoch=self.epoch)
        views = [to_normalized_tensor(apply_view(image, params, 0, v, self.image_size,
                                                 self.blur_kernel)) for v in (0, 1)]
        return views[0], views[1], int(self.index.labels[i])


class TorchvisionTwoViewLoader(EpochPositionState):
    """A DataLoader over TwoViewDataset in the sampler's order (the DALI loader's protocol)."""

    def __init__(self, index: ImageIndex, *, recipe: AugmentationRecipe, image_size: int,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 2, drop_last: bool = True):
        self.dataset = TwoViewDataset(index, recipe, image_size, seed)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.num_workers = num_workers
        self.epoch = 0
        self.position = 0

    def _shard(self) -> np.ndarray:
        return shard_indices(len(self.dataset), seed=self.seed, epoch=self.epoch, rank=self.rank,
                             world_size=self.world_size, drop_last=self.drop_last)

    def __len__(self) -> int:
        n = len(self._shard())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        shard = self._shard()
        end = len(shard) - len(shard) % self.batch_size if self.drop_last else len(shard)
        batches = [shard[s:min(s + self.batch_size, end)].tolist()
                   for s in range(self.position, end, self.batch_size)]
        self.dataset.epoch = self.epoch
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches,
                                             num_workers=self.num_workers)
        for batch, (view1, view2, labels) in zip(batches, loader):
            self.position += len(batch)
            yield view1, view2, labels
