"""Which files the index admits (by content, as DALI's decoder reads them), how it follows files
that change, and how the loader meets a file that changes or fails after indexing."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fmicl_engine.data import BadImageFileError, build_image_index, build_two_view_loader
from fmicl_engine.data import image_index as image_index_module
from fmicl_engine.data.synthetic import make_image_folder


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def replace(path, image, fmt="JPEG"):
    """Rewrites ``path`` with ``image`` and moves its mtime on, as a later copy would."""
    mtime = os.stat(path).st_mtime_ns
    image.save(path, fmt)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def header_reads(monkeypatch):
    """The paths whose headers the index reads from now on."""
    read = []
    real = image_index_module.header_size

    def recording(path):
        read.append(path)
        return real(path)
    monkeypatch.setattr(image_index_module, "header_size", recording)
    return read


def test_a_changed_file_is_measured_again_and_only_it(tmp_path, monkeypatch):
    paths = make_image_folder(tmp_path, num_classes=2, per_class=3, size=(40, 30))
    build_image_index(root=str(tmp_path))
    read = header_reads(monkeypatch)
    replace(paths[1], photo(300, 200))
    replace(paths[4], photo(8, 6))
    index = build_image_index(root=str(tmp_path))
    assert sorted(read) == [paths[1], paths[4]]
    assert (index.widths[1], index.heights[1]) == (300, 200)
    assert (index.widths[4], index.heights[4]) == (8, 6)
    read.clear()
    assert build_image_index(root=str(tmp_path)).paths == paths and read == []


def test_a_repaired_file_is_admitted_and_a_broken_one_left_out(tmp_path):
    paths = make_image_folder(tmp_path, num_classes=1, per_class=3, size=(40, 30))
    with open(paths[0], "wb") as f:
        f.write(b"half a download")
    with pytest.warns(RuntimeWarning, match="00000.jpg"):
        assert build_image_index(root=str(tmp_path)).skipped == [paths[0]]
    replace(paths[0], photo(50, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = build_image_index(root=str(tmp_path))
    assert index.paths == paths and index.skipped == []
    with open(paths[2], "wb") as f:
        f.write(b"overwritten")
    with pytest.warns(RuntimeWarning, match="00002.jpg"):
        assert build_image_index(root=str(tmp_path)).skipped == [paths[2]]


def write_undecodable(folder):
    """Files Pillow reads but DALI's decoder does not, under image extensions; sorted."""
    image = photo(32, 32)
    files = {"a_gif.jpg": (image.convert("P"), "GIF"), "b_tga.jpg": (image, "TGA"),
             "c_pcx.png": (image, "PCX"), "d_ico.jpeg": (image, "ICO"),
             "e_float.tif": (Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF")}
    for name, (content, fmt) in files.items():
        content.save(folder / name, fmt)
    return [str(folder / name) for name in sorted(files)]


def test_content_the_decoder_cannot_read_is_a_bad_file_whatever_its_extension(tmp_path):
    good = make_image_folder(tmp_path, num_classes=2, per_class=2, size=(40, 30))
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30)).save(
        tmp_path / "class_0" / "z_16bit.tif")  # 16-bit integer TIFF: DALI reads it
    bad = write_undecodable(tmp_path / "class_1")
    with pytest.warns(RuntimeWarning) as caught:
        index = build_image_index(root=str(tmp_path))
    assert index.skipped == bad and len(index) == len(good) + 1
    # One line: the count and the first few files, each with what it is.
    [message] = [str(w.message) for w in caught]
    assert "\n" not in message and message.startswith("skipping 5 unreadable or non-image files: ")
    assert f"{bad[0]}: GIF content, which the image decoder cannot read" in message
    assert bad[1] in message and bad[2] in message and message.endswith("; and 2 more")

    with pytest.raises(BadImageFileError) as info:
        build_image_index(root=str(tmp_path), on_bad_file="error")
    assert info.value.path == bad[0] and "\n" not in str(info.value)
    assert str(info.value).startswith(f"unreadable or non-image file {bad[0]}: GIF content")


def test_a_float_tiff_is_refused_and_named(tmp_path):
    make_image_folder(tmp_path, num_classes=1, per_class=2, size=(40, 30))
    floats = tmp_path / "class_0" / "floats.tiff"
    Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(floats)
    with pytest.raises(BadImageFileError, match=f"{floats}: floating-point TIFF samples"):
        build_image_index(root=str(tmp_path), on_bad_file="error")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong arrays"])
def test_an_unreadable_index_file_is_rebuilt_with_a_warning(tmp_path, damage):
    cache = tmp_path / "cache"
    paths = make_image_folder(tmp_path / "data", num_classes=1, per_class=3, size=(40, 30))
    build_image_index(root=str(tmp_path / "data"), cache_dir=str(cache))
    [index_file] = cache.glob("size_index-*.npz")
    if damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:200])
    elif damage == "garbage":
        index_file.write_bytes(b"\0" * 1000)
    else:
        with np.load(index_file) as z:
            arrays = dict(z)
        arrays["widths"] = arrays["widths"][:1]
        with open(index_file, "wb") as f:
            np.savez(f, **arrays)
    with pytest.warns(RuntimeWarning, match=f"the image size index {index_file} is unreadable") \
            as caught:
        index = build_image_index(root=str(tmp_path / "data"), cache_dir=str(cache))
    assert index.paths == paths and all("\n" not in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: read quietly now
        build_image_index(root=str(tmp_path / "data"), cache_dir=str(cache))
    assert [p.name for p in cache.iterdir()] == [index_file.name]  # no temporary file left


def loader(root, **kwargs):
    pytest.importorskip("nvidia.dali")
    return build_two_view_loader(root=str(root), recipe="simclr", image_size=16, batch_size=3,
                                 seed=1, drop_last=False, num_threads=1, **kwargs)


def test_a_loader_over_a_tree_with_bad_files_skips_them(tmp_path):
    make_image_folder(tmp_path, num_classes=2, per_class=4, size=(40, 30))
    bad = write_undecodable(tmp_path / "class_0")
    with pytest.warns(RuntimeWarning, match="skipping 5 unreadable"):
        two_views = loader(tmp_path)
    with two_views:
        batches = list(two_views)
    assert sorted(two_views.skipped_files) == bad
    assert sum(len(labels) for _, _, labels in batches) == 8
    assert all(torch.isfinite(v).all() for view1, view2, _ in batches for v in (view1, view2))


def test_files_replaced_after_indexing_are_skipped_or_an_error(tmp_path):
    paths = make_image_folder(tmp_path, num_classes=2, per_class=4, size=(60, 50))
    two_views = loader(tmp_path)
    replace(paths[2], photo(9, 7))                    # smaller: its crops lie outside it
    replace(paths[5], photo(32, 32).convert("P"), "GIF")  # content DALI cannot read
    with two_views, pytest.warns(RuntimeWarning) as caught:
        batches = list(two_views)
    messages = " ".join(str(w.message) for w in caught)
    assert f"{paths[2]}: replaced since it was indexed (9x7 now" in messages
    assert f"{paths[5]}: GIF content" in messages
    assert sorted(two_views.skipped_files) == [paths[2], paths[5]]
    assert sum(len(labels) for _, _, labels in batches) == 6
    assert two_views.state_dict()["position"] == 8

    for path in (paths[2], paths[5]):  # one at a time: each is the error's file
        replace(path, photo(60, 50))
    strict = loader(tmp_path, on_bad_file="error")
    replace(paths[5], photo(32, 32).convert("P"), "GIF")
    with strict, pytest.raises(BadImageFileError) as info:
        list(strict)
    assert info.value.path == paths[5] and "\n" not in str(info.value)
    assert "GIF content" in str(info.value)
