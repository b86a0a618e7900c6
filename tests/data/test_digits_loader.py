"""The digits two-view loader: split, order, augmentations, loader protocol and resume."""

import pytest
import torch

from fmicl_engine.data.digits import (
    DigitsAugmentation,
    DigitsTwoViewLoader,
    LabelledImages,
    load_digits_split,
    resize,
)


@pytest.fixture(scope="module")
def split():
    return load_digits_split(0.25, seed=0)


def make_loader(data, seed=0, batch_size=300):
    augmentation = DigitsAugmentation(image_size=16, crop_scale_min=0.7, max_rotation_deg=10.0, noise_std=0.1)
    return DigitsTwoViewLoader(data, batch_size=batch_size, seed=seed, augmentation=augmentation)


def batches(loader):
    return [tuple(t.clone() for t in b) for b in loader]


def test_split_is_stratified_disjoint_and_seeded(split):
    train, test = split
    assert len(train.labels) + len(test.labels) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and 0.0 <= train.images.min() and train.images.max() <= 1.0
    share = test.labels.bincount().float() / (train.labels.bincount() + test.labels.bincount()).float()
    assert torch.all((share - 0.25).abs() < 0.01)  # every class held out in the same proportion
    train_pixels = {tuple(x.flatten().tolist()) for x in train.images}
    overlap = sum(tuple(x.flatten().tolist()) in train_pixels for x in test.images)
    assert overlap < 5  # (the digits contain a few exact duplicate images)
    again, _ = load_digits_split(0.25, seed=0)
    other, _ = load_digits_split(0.25, seed=1)
    assert torch.equal(again.images, train.images) and not torch.equal(other.images, train.images)


def test_batches_have_the_protocol_shapes_and_cover_an_epoch(split):
    train, _ = split
    loader = make_loader(train)
    assert len(loader) == len(train.labels) // 300
    seen = []
    for view1, view2, labels in loader:
        assert view1.shape == view2.shape == (300, 1, 16, 16) and view1.dtype == torch.float32
        assert labels.shape == (300,) and labels.dtype == torch.int64
        assert not torch.equal(view1, view2)  # two independent augmentations
        seen.append(labels)
    order = loader.epoch_order(0)[: len(loader) * 300]
    assert torch.equal(torch.cat(seen), train.labels[order])
    assert len(set(order.tolist())) == len(order)  # a permutation: no image twice in an epoch
    assert loader.state_dict() == {"epoch": 0, "position": len(loader) * 300}


def test_views_depend_on_seed_and_epoch_only(split):
    train, _ = split
    first = batches(make_loader(train, seed=3))
    assert all(torch.equal(a, b) for x, y in zip(first, batches(make_loader(train, seed=3))) for a, b in zip(x, y))
    assert not torch.equal(first[0][0], batches(make_loader(train, seed=4))[0][0])
    loader = make_loader(train, seed=3)
    loader.set_epoch(1)
    assert not torch.equal(first[0][2], batches(loader)[0][2])  # a new order each epoch


def test_augmentations_do_not_depend_on_thread_count(split):
    train, _ = split
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = batches(make_loader(train, batch_size=400))
        torch.set_num_threads(2)
        two = batches(make_loader(train, batch_size=400))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for x, y in zip(one, two) for a, b in zip(x, y))


def test_state_dict_resume_continues_at_the_next_unseen_sample(split):
    train, _ = split
    uninterrupted = make_loader(train)
    uninterrupted.set_epoch(2)
    expected = batches(uninterrupted)

    interrupted = make_loader(train)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(2):
        next(iterator)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "position": 600}

    resumed = make_loader(train)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == len(expected) - 2
    assert all(torch.equal(a, b) for x, y in zip(rest, expected[2:]) for a, b in zip(x, y))
    with pytest.raises(ValueError, match="batch boundary"):
        resumed.load_state_dict({"epoch": 0, "position": 150})  # not a multiple of 300


def test_augmentation_is_a_crop_of_the_image():
    # No rotation, no noise, full-size crop: the view is the image resampled, i.e. resize().
    images = torch.rand(6, 1, 8, 8)
    full = DigitsAugmentation(image_size=16, crop_scale_min=1.0, max_rotation_deg=0.0, noise_std=0.0,
                              log_ratio_range=(0.0, 0.0))
    torch.testing.assert_close(full(images, torch.Generator().manual_seed(0)), resize(images, 16))
    # Any crop window lies inside the image: on an all-ones image the view is ones away from the border.
    crop = DigitsAugmentation(image_size=8, crop_scale_min=0.25, max_rotation_deg=0.0, noise_std=0.0)
    views = crop(torch.ones(64, 1, 8, 8), torch.Generator().manual_seed(1))
    torch.testing.assert_close(views[..., 1:-1, 1:-1], torch.ones(64, 1, 6, 6))


def test_loader_rejects_a_batch_larger_than_the_data():
    data = LabelledImages(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(data, batch_size=11)


def test_set_epoch_after_a_restore_keeps_the_position_like_every_loader(split):
    # One protocol for all loaders (data/loader_state.py): a training loop that calls set_epoch at
    # each epoch start, after load_state_dict, must not restart the resumed epoch.
    train, _ = split
    reference = make_loader(train, batch_size=100)
    reference.set_epoch(3)
    expected = batches(reference)[2:]
    resumed = make_loader(train, batch_size=100)
    resumed.load_state_dict({"epoch": 3, "position": 200})
    resumed.set_epoch(3)
    got = batches(resumed)
    assert len(got) == len(expected)
    for (a1, a2, al), (b1, b2, bl) in zip(got, expected):
        assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(al, bl)
    resumed.set_epoch(4)
    assert resumed.state_dict() == {"epoch": 4, "position": 0}
