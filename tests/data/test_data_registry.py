"""build_training_data: each dataset a config can name, per rank, and its errors as ConfigErrors."""

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from fmicl_engine.config import Config, ConfigError
from fmicl_engine.config.schema import DataConfig, ImageFolderConfig, TorchvisionSetConfig, TrainConfig
from fmicl_engine.data import DATASETS, TrainingData, build_training_data
from fmicl_engine.data.synthetic import make_image_folder


def config(batch_size=8, **data):
    return Config(data=DataConfig(**data), train=TrainConfig(batch_size=batch_size))


def write_cifar10(root, per_batch=4):
    """A minimal cifar-10-batches-py (see test_torchvision_sets for the format)."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, per_batch).tolist()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [str(c) for c in range(10)]}, f)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return str(root)


def test_every_dataset_choice_has_an_entry():
    choices = {f.name: f for f in dataclasses.fields(DataConfig)}["dataset"].metadata["choices"]
    assert set(DATASETS) == set(choices)


def test_digits_are_sharded_with_the_global_batch_split_across_ranks():
    cfg = config(batch_size=128)
    single = build_training_data(cfg)
    assert isinstance(single, TrainingData) and (single.in_channels, single.image_size) == (1, 16)
    assert single.probe.train_images.shape[1:] == single.probe.test_images.shape[1:] == (1, 16, 16)
    assert len(single.probe.train_labels) + len(single.probe.test_labels) == 1797
    ranks = [build_training_data(cfg, rank=r, world_size=2) for r in range(2)]
    assert {len(data.loader) for data in ranks} == {len(single.loader)}
    halves = [next(iter(data.loader)) for data in ranks]
    assert all(batch[0].shape == (64, 1, 16, 16) for batch in halves)
    whole = next(iter(single.loader))
    assert torch.equal(torch.cat([h[2] for h in halves]).sort().values, whole[2].sort().values)


def test_a_torchvision_set_per_rank(cifar_root):
    cfg = config(dataset="cifar10", torchvision=TorchvisionSetConfig(root=cifar_root, num_workers=0))
    data = build_training_data(cfg, rank=1, world_size=2)
    assert (data.in_channels, data.image_size, data.probe) == (3, 32, None)
    assert len(data.loader) == 20 // 8
    view1, view2, labels = next(iter(data.loader))
    assert view1.shape == view2.shape == (4, 3, 32, 32) and labels.shape == (4,)


def test_image_size_and_recipe_come_from_the_config(cifar_root):
    cfg = config(dataset="cifar100", torchvision=TorchvisionSetConfig(root=cifar_root))
    with pytest.raises(ConfigError, match="cifar-100-python") as err:
        build_training_data(cfg)  # (a CIFAR-10 tree)
    assert err.value.key == "data.torchvision.root"
    cfg = config(dataset="cifar10", torchvision=TorchvisionSetConfig(root=cifar_root, image_size=24, augment="byol"))
    data = build_training_data(cfg)
    assert data.image_size == 24 and data.loader.dataset.recipe.name == "byol"


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("stl10", "stl10_binary")])
def test_a_missing_torchvision_set_is_a_config_error_naming_the_path(tmp_path, name, folder):
    cfg = config(dataset=name, torchvision=TorchvisionSetConfig(root=str(tmp_path)))
    with pytest.raises(ConfigError, match=f"{tmp_path}/{folder}") as err:
        build_training_data(cfg)
    assert err.value.key == "data.torchvision.root"


def test_a_split_the_set_lacks_and_a_batch_too_large_are_config_errors(cifar_root):
    cfg = config(dataset="cifar10", torchvision=TorchvisionSetConfig(root=cifar_root, split="unlabeled"))
    with pytest.raises(ConfigError) as err:
        build_training_data(cfg)
    assert err.value.key == "data.torchvision.split"
    cfg = config(batch_size=32, dataset="cifar10", torchvision=TorchvisionSetConfig(root=cifar_root))
    with pytest.raises(ConfigError) as err:
        build_training_data(cfg)  # 20 images
    assert err.value.key == "train.batch_size"


def test_an_image_folder_per_rank_and_an_empty_one(tmp_path):
    make_image_folder(tmp_path / "tree", num_classes=2, per_class=4, size=(40, 30))
    cfg = config(dataset="imagefolder", imagefolder=ImageFolderConfig(root=str(tmp_path / "tree"), image_size=32))
    data = build_training_data(cfg, rank=1, world_size=2)
    assert (data.in_channels, data.image_size, data.probe) == (3, 32, None)
    assert (data.loader.batch_size, data.loader.rank, data.loader.world_size) == (4, 1, 2)
    (tmp_path / "empty").mkdir()
    cfg = config(dataset="imagefolder", imagefolder=ImageFolderConfig(root=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=str(tmp_path / "empty")) as err:
        build_training_data(cfg)
    assert err.value.key == "data.imagefolder.root"
