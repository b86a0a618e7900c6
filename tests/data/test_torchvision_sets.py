"""CIFAR-10/100 and STL-10 through torchvision: reading generated copies in the official formats,
the views' keys (independent of workers, ranks and batch), resume and the loader protocol."""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from torchvision.datasets import CIFAR10

from fmicl_engine.data.sampler import sample_view_pairs
from fmicl_engine.data.torchvision_reference import apply_view
from fmicl_engine.data.torchvision_sets import (RECIPES, SETS, build_torchvision_set_loader, open_set,
                                                resolve_split)

from loader_views import views_by_index

SEED = 5


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def random_images(rng, n, side=32):
    return rng.integers(0, 256, size=(n, 3 * side * side), dtype=np.uint8)


def write_cifar10(root, per_batch=8, seed=0):
    """cifar-10-batches-py as the official archive lays it out: five training batches, a test
    batch and batches.meta, pickled dicts of (N, 3072) uint8 rows (R, G, B planes) and labels."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        write_pickle(os.path.join(folder, name), {"data": random_images(rng, per_batch),
                                                  "labels": rng.integers(0, 10, per_batch).tolist()})
    write_pickle(os.path.join(folder, "batches.meta"), {"label_names": [f"class{c}" for c in range(10)]})


def write_cifar100(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    for name in ("train", "test"):
        write_pickle(os.path.join(folder, name), {"data": random_images(rng, n),
                                                  "fine_labels": rng.integers(0, 100, n).tolist()})
    write_pickle(os.path.join(folder, "meta"), {"fine_label_names": [f"class{c}" for c in range(100)]})


def write_stl10(root, train=6, unlabeled=6, test=2, seed=0):
    """stl10_binary: raw uint8 (N, 3, 96, 96) images (column-major planes) and 1-based labels."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder)
    for name, n in (("train", train), ("unlabeled", unlabeled), ("test", test)):
        random_images(rng, n, side=96).tofile(os.path.join(folder, f"{name}_X.bin"))
        if name != "unlabeled":
            rng.integers(1, 11, n, dtype=np.uint8).tofile(os.path.join(folder, f"{name}_y.bin"))


WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "stl10": write_stl10}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for name, write in WRITERS.items():
        out[name] = str(tmp_path_factory.mktemp(name))
        write(out[name])
    return out


@pytest.fixture(scope="module")
def cifar10(roots):
    return open_set("cifar10", roots["cifar10"])


def make_loader(images, batch_size=8, rank=0, world_size=1, num_workers=0, name="cifar10"):
    return build_torchvision_set_loader(name, images, batch_size=batch_size, seed=SEED, rank=rank,
                                        world_size=world_size, num_workers=num_workers)


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.parametrize("name, size, count", [("cifar10", 32, 40), ("cifar100", 32, 24), ("stl10", 96, 12)])
def test_each_set_loads_from_a_generated_tree_with_its_shapes(roots, name, size, count):
    images = open_set(name, roots[name])
    assert len(images) == count
    loader = make_loader(images, batch_size=4, name=name)
    assert len(loader) == count // 4 and loader.image_size == size
    view1, view2, labels = next(iter(loader))
    assert view1.shape == view2.shape == (4, 3, size, size)
    assert view1.dtype == view2.dtype == torch.float32 and labels.dtype == torch.int64
    assert not torch.equal(view1, view2)
    assert loader.state_dict() == {"epoch": 0, "position": 4}


def test_stl10_pretrains_on_train_and_unlabeled_by_default(roots):
    assert resolve_split("stl10", "") == "train+unlabeled" and resolve_split("cifar10", "") == "train"
    labels = open_set("stl10", roots["stl10"]).labels
    assert np.all(labels[:6] >= 0) and np.all(labels[6:] == -1)  # unlabeled images: label -1
    assert len(open_set("stl10", roots["stl10"], "unlabeled")) == 6
    with pytest.raises(ValueError, match="no split 'unlabeled'"):
        resolve_split("cifar10", "unlabeled")


def test_default_recipes_and_resolution():
    assert SETS["cifar10"].recipe == SETS["cifar100"].recipe == "simclr_cifar"
    cifar = RECIPES["simclr_cifar"]()
    assert cifar.view1 == cifar.view2 and cifar.view1.blur_p == 0.0 and cifar.view1.brightness == 0.4
    assert cifar.view1.hue == 0.1 and cifar.view1.crop_scale_min == 0.08
    assert SETS["stl10"].recipe == "simclr" and RECIPES["simclr"]().view1.blur_p == 0.5
    assert (SETS["cifar10"].native_size, SETS["stl10"].native_size) == (32, 96)


def test_missing_or_damaged_files_name_the_path_and_directory(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(ValueError, match=f"no directory {folder}"):
        open_set("cifar10", str(tmp_path))
    write_cifar10(tmp_path)
    os.remove(folder / "data_batch_3")  # presence is still checked, md5 or not
    with pytest.raises(ValueError, match=f"{folder} lacks data_batch_3"):
        open_set("cifar10", str(tmp_path))
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbled")
    with pytest.raises(ValueError, match=f"cannot read cifar10 from {folder}"):
        open_set("cifar10", str(tmp_path))


def test_generated_files_fail_torchvisions_md5_check_but_load_here(roots):
    # Why the Local* classes exist: torchvision checks the official archives' md5 sums.
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        CIFAR10(roots["cifar10"], train=True, download=False)
    assert len(open_set("cifar10", roots["cifar10"])) == 40


def test_views_are_the_reference_transforms_with_the_samples_keys(cifar10):
    # Sample i's views in epoch e: the sampler's parameters for (SEED, e, i), applied by the
    # torchvision reference and normalised with CIFAR-10's statistics.
    loader = make_loader(cifar10, batch_size=4)
    loader.set_epoch(2)
    view1, view2, labels = next(iter(loader))
    recipe, spec = RECIPES["simclr_cifar"](), SETS["cifar10"]
    for k, i in enumerate(loader.shard(2)[:4].tolist()):
        image, label = cifar10[i]
        params = sample_view_pairs(np.array([i]), np.array([32]), np.array([32]), recipe=recipe, seed=SEED, epoch=2)
        for v, got in enumerate((view1[k], view2[k])):
            want = F.normalize(F.to_tensor(apply_view(image, params, 0, v, 32, recipe.blur_kernel_size(32))),
                               list(spec.mean), list(spec.std))
            assert torch.equal(got, want)
        assert labels[k] == label


def test_views_do_not_depend_on_the_worker_count(cifar10):
    in_process, workers = make_loader(cifar10, num_workers=0), make_loader(cifar10, num_workers=2)
    for loader in (in_process, workers):
        loader.set_epoch(1)
    assert same_batches(list(in_process), list(workers))


def test_two_ranks_together_give_the_single_rank_batches(cifar10):
    single = make_loader(cifar10, batch_size=8)
    ranks = [make_loader(cifar10, batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 5
    expected = views_by_index(single)
    per_rank = [views_by_index(loader) for loader in ranks]
    for step, want in enumerate(expected):
        got = {**per_rank[0][step], **per_rank[1][step]}
        assert len(got) == 8 and got.keys() == want.keys()  # disjoint halves of the global batch
        assert all(torch.equal(x, y) for i in want for x, y in zip(got[i], want[i]))


def test_resume_mid_epoch_continues_like_an_uninterrupted_run(cifar10):
    uninterrupted = make_loader(cifar10, batch_size=4, rank=1, world_size=2)
    uninterrupted.set_epoch(3)
    expected = list(uninterrupted)

    interrupted = make_loader(cifar10, batch_size=4, rank=1, world_size=2)
    interrupted.set_epoch(3)
    iterator = iter(interrupted)
    for _ in range(2):
        next(iterator)
    state = interrupted.state_dict()
    assert state == {"epoch": 3, "position": 8}

    resumed = make_loader(cifar10, batch_size=4, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a loop's set_epoch after the restore keeps the position
    assert same_batches(list(resumed), expected[2:])
    assert resumed.state_dict() == {"epoch": 3, "position": 20}
    with pytest.raises(ValueError, match="batch boundary"):
        resumed.load_state_dict({"epoch": 3, "position": 6})


def test_order_and_views_change_with_the_epoch(cifar10):
    loader = make_loader(cifar10)
    first = views_by_index(loader)
    loader.set_epoch(1)
    second = views_by_index(loader)
    assert first[0].keys() != second[0].keys()
    views = {i: v for batch in first for i, v in batch.items()}
    assert not any(torch.equal(views[i][0], v[0]) for batch in second for i, v in batch.items())


def test_loader_rejects_a_global_batch_larger_than_the_data(cifar10):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(cifar10, batch_size=21, world_size=2)


def test_the_cifar10_config_trains_on_a_generated_copy(roots, tmp_path):
    from pathlib import Path

    from fmicl_engine.config import load_config
    from fmicl_engine.train import loop

    config = Path(__file__).resolve().parents[2] / "configs" / "cifar10_kl.toml"
    cfg = load_config(config, [f"data.torchvision.root={roots['cifar10']}", "data.torchvision.num_workers=0",
                               "run.device=cpu", "train.batch_size=8", "train.max_steps=2", "train.log_every=1",
                               "model.projector_hidden_dim=16", "model.projector_out_dim=8",
                               "eval.knn_k=5", "eval.linear_epochs=2", "eval.geometry_pairs=0",
                               f"run.out_dir={tmp_path / 'run'}"])
    results = loop.run(cfg, log=lambda s: None, progress=False)
    assert results["steps"] == 2 and results["dataset"] == "cifar10" and results["final_loss"] is not None
    assert 0.0 <= results["knn_top1"] <= results["knn_top5"] <= 1.0  # on the generated test split
    assert 0.0 <= results["linear_top1"] <= 1.0
