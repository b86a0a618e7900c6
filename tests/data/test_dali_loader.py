"""DaliTwoViewLoader's lifetime: one pipeline for every epoch (rebuilt only after a decoder
error), epochs left unfinished, one iteration at a time, and close()."""

import gc

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from fmicl_engine.data import build_two_view_loader  # noqa: E402
from fmicl_engine.data.synthetic import make_image_folder  # noqa: E402

SEED = 5


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    make_image_folder(root, num_classes=2, per_class=7, size=(64, 48), seed=3)
    return str(root)


def make(tree, **kwargs):
    return build_two_view_loader(root=tree, recipe="simclr", image_size=16, batch_size=4,
                                 seed=SEED, **kwargs)


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def fresh(tree, epoch, **kwargs):
    with make(tree, **kwargs) as loader:
        return epoch_batches(loader, epoch)


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_one_pipeline_serves_every_epoch(tree):
    loader = make(tree, drop_last=False)
    epochs = [epoch_batches(loader, e) for e in (0, 1, 2)]
    assert loader.pipelines_built == 1
    assert [len(b) for b in epochs] == [4, 4, 4] and [len(b[-1][2]) for b in epochs] == [2, 2, 2]
    # The same batches as a loader built for that epoch alone, and each epoch its own.
    assert_same(epochs[1], fresh(tree, 1, drop_last=False))
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])
    # A second pass over the same (finished) epoch is empty: its position is at the end.
    assert list(loader) == [] and loader.state_dict() == {"epoch": 2, "position": 14}
    loader.close()


def test_an_unfinished_epoch_is_drained_before_the_next(tree):
    loader = make(tree)
    loader.set_epoch(0)
    head = next(iter(loader))  # DALI has read batches ahead; the iterator is dropped
    assert loader.state_dict() == {"epoch": 0, "position": 4}
    rest = list(loader)  # resumes at position 4 in the same pipeline
    assert_same([head] + rest, fresh(tree, 0))
    assert_same(epoch_batches(loader, 1), fresh(tree, 1))
    assert loader.pipelines_built == 1
    loader.close()


def test_a_newer_iteration_ends_the_older_one(tree):
    loader = make(tree)
    older = iter(loader)
    next(older)
    newer = iter(loader)
    next(newer)
    with pytest.raises(RuntimeError, match="ended by a newer one"):
        next(older)
    loader.close()
    with pytest.raises(RuntimeError, match="ended by a newer one, or by close"):
        next(newer)


def test_close_releases_the_pipeline_and_reader_threads(tree):
    with make(tree) as loader:
        next(iter(loader))
        pool = loader._read.pool
    assert pool._shutdown and loader._pipe is None
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        iter(loader)

    dropped = make(tree)
    batches = iter(dropped)
    next(batches)
    pool = dropped._read.pool
    del dropped, batches
    gc.collect()
    assert pool._shutdown  # __del__ closed it


def test_a_decoder_error_rebuilds_the_pipeline(tmp_path):
    make_image_folder(tmp_path, num_classes=1, per_class=8, size=(120, 90), seed=4)
    bad = tmp_path / "class_0" / "00005.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header reads; decoding fails
    loader = build_two_view_loader(root=str(tmp_path), image_size=16, batch_size=4, seed=1,
                                   drop_last=False)
    with pytest.warns(RuntimeWarning, match="00005.jpg"):
        first = epoch_batches(loader, 0)
    assert sum(len(b[2]) for b in first) == 7 and loader.pipelines_built == 2
    second = epoch_batches(loader, 1)  # the culprit is known: no more errors, no rebuild
    assert sum(len(b[2]) for b in second) == 7 and loader.pipelines_built == 2
    assert np.isfinite(torch.cat([b[0] for b in second]).numpy()).all()
    loader.close()
