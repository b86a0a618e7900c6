"""The datasets a config can name (``data.dataset``), each built for one rank of a run.

``build_training_data(cfg, rank=r, world_size=W)`` gives rank r its loader over its share of
every epoch, batches of ``cfg.train.batch_size // W`` (the config's validation guarantees the
division is exact), so that the W ranks together see each step's global batch, with the same
views as a single process would. A dataset found unusable while it is opened is reported as a
ConfigError naming the config key at fault, before any training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from fmicl_engine.config import Config, ConfigError
from fmicl_engine.data.digits import DigitsAugmentation, DigitsTwoViewLoader, load_digits_split, resize
from fmicl_engine.data.torchvision_sets import SETS, build_torchvision_set_loader, open_set, resolve_split
from fmicl_engine.data.two_view import build_two_view_loader
from fmicl_engine.eval.linear_probe import ProbeData


@dataclass
class TrainingData:
    loader: Iterable  # the loader protocol: (view1, view2, labels) batches, set_epoch, len, state_dict
    in_channels: int
    image_size: int  # of the views
    probe: ProbeData | None  # in-memory probe sets; None: this dataset has none


@contextmanager
def config_error(key: str) -> Iterator[None]:
    """A ValueError raised inside becomes ConfigError(key, its message)."""
    try:
        yield
    except ValueError as err:
        raise ConfigError(key, str(err)) from None


def local_batch_size(cfg: Config, world_size: int) -> int:
    return cfg.train.batch_size // world_size


def digits_data(cfg: Config, rank: int, world_size: int) -> TrainingData:
    d = cfg.data.digits
    train, test = load_digits_split(d.test_fraction, cfg.run.seed)
    augmentation = DigitsAugmentation(d.image_size, d.crop_scale_min, d.max_rotation_deg, d.noise_std)
    with config_error("train.batch_size"):
        loader = DigitsTwoViewLoader(train, batch_size=local_batch_size(cfg, world_size), seed=cfg.run.seed,
                                     augmentation=augmentation, rank=rank, world_size=world_size)
    probe = ProbeData(resize(train.images, d.image_size), train.labels, resize(test.images, d.image_size),
                      test.labels)
    return TrainingData(loader, in_channels=1, image_size=d.image_size, probe=probe)


def imagefolder_data(cfg: Config, rank: int, world_size: int) -> TrainingData:
    f = cfg.data.imagefolder
    with config_error("data.imagefolder.root"):  # an empty tree, no readable image: found while indexing
        loader = build_two_view_loader(root=f.root, recipe=f.augment, image_size=f.image_size,
                                       batch_size=local_batch_size(cfg, world_size), seed=cfg.run.seed, rank=rank,
                                       world_size=world_size, device=f.device, num_threads=f.num_threads,
                                       on_bad_file=f.on_bad_file)
    return TrainingData(loader, in_channels=3, image_size=f.image_size, probe=None)


def torchvision_set_data(name: str, cfg: Config, rank: int, world_size: int) -> TrainingData:
    t = cfg.data.torchvision
    with config_error("data.torchvision.split"):
        split = resolve_split(name, t.split)
    with config_error("data.torchvision.root"):
        images = open_set(name, t.root, split)
    with config_error("train.batch_size"):
        loader = build_torchvision_set_loader(
            name, images, augment=t.augment, image_size=t.image_size, batch_size=local_batch_size(cfg, world_size),
            seed=cfg.run.seed, rank=rank, world_size=world_size, num_workers=t.num_workers)
    return TrainingData(loader, in_channels=3, image_size=loader.image_size, probe=None)


DATASETS: dict[str, Callable[[Config, int, int], TrainingData]] = {
    "digits": digits_data,
    "imagefolder": imagefolder_data,
    **{name: partial(torchvision_set_data, name) for name in SETS},
}


def build_training_data(cfg: Config, *, rank: int = 0, world_size: int = 1) -> TrainingData:
    """Rank ``rank`` of ``world_size``'s training data for ``cfg.data.dataset``."""
    return DATASETS[cfg.data.dataset](cfg, rank, world_size)
