"""The dataset index (files, labels, header sizes, cache) and bad-data handling of the loader."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fmicl_engine.data import BadImageFileError, build_image_index, build_two_view_loader
from fmicl_engine.data import image_index as image_index_module
from fmicl_engine.data.synthetic import make_image_folder


def cached_indexes(directory):
    return sorted(directory.glob("size_index-*.npz"))


def test_index_lists_classes_reads_sizes_and_caches(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("FMICL_CACHE_DIR", str(cache))
    paths = make_image_folder(data, num_classes=3, per_class=4, seed=2)
    (data / "class_1" / "notes.txt").write_text("not a sample")  # ignored, as ImageFolder
    index = build_image_index(root=str(data))
    assert index.classes == ["class_0", "class_1", "class_2"]
    assert index.paths == paths
    assert index.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for path, w, h in zip(paths, index.widths, index.heights):
        assert Image.open(path).size == (w, h)
    assert len(cached_indexes(cache)) == 1

    def no_header_reads(path):
        raise AssertionError("the cached index should be used")
    monkeypatch.setattr(image_index_module, "header_size", no_header_reads)
    cached = build_image_index(root=str(data))
    assert cached.paths == index.paths and np.array_equal(cached.widths, index.widths)

    # A changed tree invalidates the cache.
    monkeypatch.undo()
    monkeypatch.setenv("FMICL_CACHE_DIR", str(cache))
    os.remove(paths[0])
    assert len(build_image_index(root=str(data))) == 11
    assert len(cached_indexes(cache)) == 1


def test_the_index_is_cached_outside_the_dataset(tmp_path, monkeypatch):
    # Shared dataset folders are often read-only: the dataset is only read, and each dataset
    # root has its own index in the cache directory.
    data, other = tmp_path / "data", tmp_path / "other"
    make_image_folder(data, num_classes=1, per_class=2)
    make_image_folder(other, num_classes=1, per_class=2)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    monkeypatch.delenv("FMICL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    build_image_index(root=str(data))
    build_image_index(root=str(other))
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    default = tmp_path / "xdg" / "fmicl_engine"
    assert image_index_module.cache_directory() == default
    assert [p.name.split("-")[1] for p in cached_indexes(default)] == ["data", "other"]

    monkeypatch.setenv("FMICL_CACHE_DIR", str(tmp_path / "env"))
    build_image_index(root=str(data))
    assert len(cached_indexes(tmp_path / "env")) == 1
    build_image_index(root=str(data), cache_dir=str(tmp_path / "given"))  # configured: wins
    assert len(cached_indexes(tmp_path / "given")) == 1


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data", num_classes=1, per_class=2)
    (tmp_path / "file").write_text("a file where the cache directory would be")
    with pytest.warns(RuntimeWarning, match="could not cache the image size index"):
        index = build_image_index(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "file"))
    assert len(index) == 2


def test_file_list(tmp_path):
    paths = make_image_folder(tmp_path / "imgs", num_classes=1, per_class=3)
    listing = tmp_path / "train.txt"
    listing.write_text("# path label\n" + "".join(
        f"imgs/class_0/{os.path.basename(p)} {label}\n" for p, label in zip(paths, (4, 0, 7))))
    index = build_image_index(file_list=str(listing))
    assert index.paths == [str(tmp_path / "imgs" / "class_0" / os.path.basename(p)) for p in paths]
    assert index.labels.tolist() == [4, 0, 7] and index.classes is None
    listing.write_text("imgs/class_0/00000.jpg\n")
    with pytest.raises(ValueError, match="train.txt:1"):
        build_image_index(file_list=str(listing))


def test_missing_or_empty_dataset_is_a_config_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=str(missing)):
        build_two_view_loader(root=str(missing), batch_size=2, seed=0)
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        build_two_view_loader(root=str(tmp_path / "empty"), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        build_image_index(file_list=str(tmp_path / "list.txt"))


def test_non_image_file_is_skipped_and_counted_or_an_error(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=3)
    bad = tmp_path / "class_1" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG" * 20)
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        index = build_image_index(root=str(tmp_path))
    assert len(index) == 6 and index.skipped == [str(bad)]
    with pytest.raises(BadImageFileError, match="broken.jpg") as info:
        build_image_index(root=str(tmp_path), on_bad_file="error")
    # One line, naming the file and the key that skips such files (the CLI prints it as is).
    message = str(info.value)
    assert "\n" not in message and info.value.path == str(bad)
    assert message.startswith(f"unreadable or non-image file {bad}: ")
    assert message.endswith('(set data.imagefolder.on_bad_file = "skip" to skip such files)')


def test_corrupt_jpeg_body_is_skipped_during_decoding(tmp_path):
    pytest.importorskip("nvidia.dali")
    make_image_folder(tmp_path, num_classes=2, per_class=4, seed=3)
    truncated = tmp_path / "class_0" / "00002.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # the header still reads; decoding fails
    loader = build_two_view_loader(root=str(tmp_path), recipe="simclr", image_size=16,
                                   batch_size=3, seed=4, drop_last=False)
    vanished = tmp_path / "class_1" / "00001.jpg"
    os.remove(vanished)  # after indexing: reading it fails
    with pytest.warns(RuntimeWarning) as caught:
        batches = list(loader)
    messages = " ".join(str(w.message) for w in caught)
    assert str(truncated) in messages and str(vanished) in messages
    assert sorted(loader.skipped_files) == [str(truncated), str(vanished)]
    assert sum(len(b[2]) for b in batches) == 6 and loader.state_dict()["position"] == 8
    assert all(torch.isfinite(b[0]).all() for b in batches)

    strict = build_two_view_loader(root=str(tmp_path), recipe="simclr", image_size=16,
                                   batch_size=3, seed=4, drop_last=False, on_bad_file="error")
    with warnings.catch_warnings(), pytest.raises(BadImageFileError, match="00002.jpg") as info:
        warnings.simplefilter("ignore")
        list(strict)
    assert "\n" not in str(info.value) and info.value.path == str(truncated)
    assert "data.imagefolder.on_bad_file" in str(info.value)
