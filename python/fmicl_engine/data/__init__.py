"""Data: the C++ augmentation-pair sampler, the DALI two-view pipeline and its torchvision
reference; the bundled digits; CIFAR-10/100 and STL-10 through torchvision; and the registry of
the datasets a config can name (``build_training_data``)."""

from fmicl_engine.data.digits import DigitsAugmentation, DigitsTwoViewLoader, LabelledImages, load_digits_split
from fmicl_engine.data.image_index import BadImageFileError, ImageIndex, build_image_index
from fmicl_engine.data.recipe import AugmentationRecipe, ViewSpec, byol, simclr
from fmicl_engine.data.registry import DATASETS, TrainingData, build_training_data
from fmicl_engine.data.sampler import ViewPairParams, sample_view_pairs, shard_indices
from fmicl_engine.data.torchvision_sets import TorchvisionSetTwoViewLoader, build_torchvision_set_loader, open_set
from fmicl_engine.data.two_view import build_two_view_loader

__all__ = [
    "DATASETS", "AugmentationRecipe", "BadImageFileError", "DigitsAugmentation", "DigitsTwoViewLoader",
    "ImageIndex", "LabelledImages", "TorchvisionSetTwoViewLoader", "TrainingData", "ViewPairParams", "ViewSpec",
    "build_image_index", "build_torchvision_set_loader", "build_training_data", "build_two_view_loader", "byol",
    "load_digits_split", "open_set", "sample_view_pairs", "shard_indices", "simclr",
]
