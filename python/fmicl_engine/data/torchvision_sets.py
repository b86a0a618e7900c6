"""CIFAR-10, CIFAR-100 and STL-10 as two-view datasets, read by torchvision from a local copy.

torchvision's dataset classes read the files (never downloading them). Each sample's two views
come from the C++ sampler's parameters for (seed, epoch, sample index, view), the keys the
image-folder pipeline uses, applied to the PIL image by the torchvision reference
(torchvision_reference.apply_view). So a sample's views depend on neither its batch, the number
of ranks nor the DataLoader's worker count. The epoch order is ``shard_indices`` (DistributedSampler
semantics, the last partial batch dropped): with W ranks of batch B, local batch b of the ranks
together is batch b of one rank with batch W * B.

Recipes, at the dataset's native resolution unless ``image_size`` says otherwise: CIFAR uses
SimCLR's CIFAR-10 recipe (colour strength 0.5 and no blur, the images being small: Chen et al.
2020, appendix B.9), STL-10 SimCLR's ImageNet recipe, with blur. Views are normalised with
CIFAR-10's and CIFAR-100's own training-set statistics, and for STL-10, whose images are
ImageNet's, with ImageNet's.

File checks: torchvision's classes compare each file's md5 with the official archive's. The
subclasses here (Local*) blank the expected md5s, so torchvision's check_integrity (md5=None)
checks only that each file is present, and a locally generated copy in the same format loads too
(the tests' fake sets; it also saves hashing 2.6 GB of STL-10 at each start). open_set names any
missing file first; a truncated or garbled file fails while it is parsed, before any batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torchvision.transforms.functional as F
from torchvision.datasets import CIFAR10, CIFAR100, STL10, VisionDataset

from fmicl_engine.data.loader_state import EpochPositionState
from fmicl_engine.data.recipe import IMAGENET_MEAN, IMAGENET_STD, PRESETS, AugmentationRecipe, ViewSpec
from fmicl_engine.data.sampler import sample_view_pairs, shard_indices
from fmicl_engine.data.torchvision_reference import apply_view


def simclr_cifar() -> AugmentationRecipe:
    """SimCLR's CIFAR-10 recipe (Chen et al. 2020, appendix B.9): colour strength s = 0.5
    (ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8), grayscale p 0.2, no blur."""
    view = ViewSpec(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                    grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
    return AugmentationRecipe(view1=view, view2=view, name="simclr_cifar")


RECIPES: dict[str, Callable[[], AugmentationRecipe]] = {**PRESETS, "simclr_cifar": simclr_cifar}


# --- torchvision's classes, checking that files are present rather than their md5 -------------
def _presence_only(files: list[list[str]]) -> list[list[str | None]]:
    return [[name, None] for name, _ in files]


class LocalCIFAR10(CIFAR10):
    train_list, test_list = _presence_only(CIFAR10.train_list), _presence_only(CIFAR10.test_list)
    meta = {**CIFAR10.meta, "md5": None}


class LocalCIFAR100(CIFAR100):
    train_list, test_list = _presence_only(CIFAR100.train_list), _presence_only(CIFAR100.test_list)
    meta = {**CIFAR100.meta, "md5": None}


class LocalSTL10(STL10):
    train_list, test_list = _presence_only(STL10.train_list), _presence_only(STL10.test_list)


@dataclass(frozen=True)
class TorchvisionSet:
    """How one dataset is read and augmented."""

    cls: type[VisionDataset]  # torchvision's class, checking presence rather than md5
    arguments: Callable[[str], dict]  # split -> the class's keyword arguments that select it
    splits: tuple[str, ...]  # the first is the default
    native_size: int
    recipe: str  # the default augmentation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def folder(self) -> str:
        """The directory under root that the class reads."""
        return self.cls.base_folder

    def files(self) -> list[str]:
        """The files the class requires in its folder, whatever the split."""
        meta = [self.cls.meta["filename"]] if hasattr(self.cls, "meta") else []
        return [name for name, _ in self.cls.train_list + self.cls.test_list] + meta


SETS: dict[str, TorchvisionSet] = {
    "cifar10": TorchvisionSet(
        cls=LocalCIFAR10, arguments=lambda split: {"train": split == "train"}, splits=("train",), native_size=32,
        recipe="simclr_cifar", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": TorchvisionSet(
        cls=LocalCIFAR100, arguments=lambda split: {"train": split == "train"}, splits=("train",), native_size=32,
        recipe="simclr_cifar", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "stl10": TorchvisionSet(
        cls=LocalSTL10, arguments=lambda split: {"split": split}, splits=("train+unlabeled", "train", "unlabeled"),
        native_size=96, recipe="simclr", mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


EVAL_SPLITS = ("train", "test")  # every set's labelled training split and its test split (evaluation)


def resolve_split(name: str, split: str, *, evaluation: bool = False) -> str:
    """``split`` of dataset ``name``, "" meaning its pretraining split; ValueError if it has none such.
    With ``evaluation``, the labelled splits that evaluation reads (EVAL_SPLITS) are accepted too."""
    splits = SETS[name].splits + (EVAL_SPLITS if evaluation else ())
    if split and split not in splits:
        raise ValueError(f"{name} has no split {split!r}; choose one of {list(splits)}")
    return split or splits[0]


def open_set(name: str, root: str, split: str = "") -> VisionDataset:
    """The dataset ``name`` (a key of SETS) read from ``root``. Raises ValueError, naming the path
    and what is missing or unreadable under it, before any image is used."""
    spec = SETS[name]
    split = resolve_split(name, split, evaluation=True)
    folder = os.path.join(root, spec.folder)
    if not os.path.isdir(folder):
        raise ValueError(f"no directory {folder} (the {name} files in torchvision's layout)")
    missing = [f for f in spec.files() if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)} (the {name} files in torchvision's layout)")
    try:
        dataset = spec.cls(root, download=False, **spec.arguments(split))
    except Exception as err:  # unpickling or reshaping a damaged file can raise almost anything
        raise ValueError(f"cannot read {name} from {folder}: {type(err).__name__}: {err}") from None
    if len(dataset) == 0:
        raise ValueError(f"{name} in {folder} holds no images")
    return dataset


class TwoViewImages(torch.utils.data.Dataset):
    """Key (epoch, i) -> (view1, view2, label) of sample i: float32 3 x image_size x image_size
    views, normalised with ``mean`` / ``std``. The key carries the epoch so that worker processes
    need no state from the loader."""

    def __init__(self, images: VisionDataset, *, recipe: AugmentationRecipe, image_size: int, seed: int,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        self.images, self.recipe, self.image_size, self.seed = images, recipe, image_size, seed
        self.mean, self.std = list(mean), list(std)
        self.blur_kernel = recipe.blur_kernel_size(image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        image, label = self.images[i]  # an RGB PIL image
        params = sample_view_pairs(np.array([i]), np.array([image.width]), np.array([image.height]),
                                   recipe=self.recipe, seed=self.seed, epoch=epoch)
        view1, view2 = (F.normalize(F.to_tensor(apply_view(image, params, 0, v, self.image_size, self.blur_kernel)),
                                    self.mean, self.std) for v in (0, 1))
        return view1, view2, label


class TorchvisionSetTwoViewLoader(EpochPositionState):
    """Yields ``(view1, view2, labels)`` per batch of this rank's share of each epoch: a torch
    DataLoader with ``num_workers`` processes (0: in this process) over the shard's batches.

    ``batch_size`` is this rank's; ``len()`` is the same on every rank (the last partial batch
    and the share's remainder are dropped). State: (epoch, position), see EpochPositionState.
    """

    def __init__(self, dataset: TwoViewImages, *, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size < 1 or batch_size * world_size > len(dataset):
            raise ValueError(f"batch_size must be in [1, {len(dataset) // world_size}] for {world_size} "
                             f"rank(s) of {len(dataset)} samples, got {batch_size}")
        self.dataset = dataset
        self.image_size = dataset.image_size
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.epoch = 0
        self.position = 0

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices for ``epoch``, in order."""
        return shard_indices(len(self.dataset), seed=self.seed, epoch=epoch, rank=self.rank,
                             world_size=self.world_size, drop_last=True)

    def __len__(self) -> int:
        return len(self.dataset) // self.world_size // self.batch_size

    def check_position(self, position: int) -> None:
        if position % self.batch_size or not 0 <= position <= len(self) * self.batch_size:
            raise ValueError(f"position {position} is not a batch boundary of this loader "
                             f"(batch_size {self.batch_size}, {len(self)} batches)")

    def __iter__(self):
        shard = self.shard(self.epoch)
        batches = [[(self.epoch, int(i)) for i in shard[start : start + self.batch_size]]
                   for start in range(self.position, len(self) * self.batch_size, self.batch_size)]
        if not batches:  # resumed at the epoch's end: no worker processes to start
            return
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)
        for view1, view2, labels in loader:
            # Counted as handed out when yielded, so a state_dict taken after the step continues after it.
            self.position += len(labels)
            yield view1, view2, labels


def build_torchvision_set_loader(name: str, images: VisionDataset, *, augment: str = "", image_size: int = 0,
                                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                                 num_workers: int = 0) -> TorchvisionSetTwoViewLoader:
    """The two-view loader over ``images``, dataset ``name`` ("cifar10", "cifar100", "stl10") as
    open_set returns it. ``augment`` (a key of RECIPES) and ``image_size`` take the dataset's
    defaults when "" / 0."""
    spec = SETS[name]
    dataset = TwoViewImages(images, recipe=RECIPES[augment or spec.recipe](),
                            image_size=image_size or spec.native_size, seed=seed, mean=spec.mean, std=spec.std)
    return TorchvisionSetTwoViewLoader(dataset, batch_size=batch_size, seed=seed, rank=rank,
                                       world_size=world_size, num_workers=num_workers)
