"""Data: the C++ augmentation-pair sampler, the DALI two-view pipeline and its torchvision
reference (engineer D); the bundled digits data (engineer B)."""

from fmicl_engine.data.image_index import BadImageFileError, ImageIndex, build_image_index
from fmicl_engine.data.recipe import AugmentationRecipe, ViewSpec, byol, simclr
from fmicl_engine.data.sampler import ViewPairParams, sample_view_pairs, shard_indices
from fmicl_engine.data.two_view import build_two_view_loader

__all__ = [
    "AugmentationRecipe", "BadImageFileError", "ImageIndex", "ViewPairParams", "ViewSpec",
    "build_image_index", "build_two_view_loader", "byol", "sample_view_pairs", "shard_indices",
    "simclr",
]
from fmicl_engine.data.digits import (  # noqa: E402  (engineer B: the bundled digits two-view data)
    DigitsAugmentation,
    DigitsTwoViewLoader,
    LabelledImages,
    load_digits_split,
)

__all__ += ["DigitsAugmentation", "DigitsTwoViewLoader", "LabelledImages", "load_digits_split"]
