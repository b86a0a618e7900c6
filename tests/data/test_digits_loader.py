"""The digits two-view loader: split, order, per-sample augmentations, sharding across ranks, loader
protocol and resume."""

import numpy as np
import pytest
import torch

from fmicl_engine.data.digits import (
    DigitsAugmentation,
    DigitsTwoViewLoader,
    LabelledImages,
    load_digits_split,
    normals,
    random_bits,
    resize,
    uniforms,
)

from loader_views import views_by_index


@pytest.fixture(scope="module")
def split():
    return load_digits_split(0.25, seed=0)


def make_loader(data, seed=0, batch_size=300, rank=0, world_size=1):
    augmentation = DigitsAugmentation(image_size=16, crop_scale_min=0.7, max_rotation_deg=10.0, noise_std=0.1)
    return DigitsTwoViewLoader(data, batch_size=batch_size, seed=seed, augmentation=augmentation, rank=rank,
                               world_size=world_size)


def batches(loader):
    return [tuple(t.clone() for t in b) for b in loader]


def same_views(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


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
    order = torch.from_numpy(loader.shard(0)[: len(loader) * 300])
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
    torch.testing.assert_close(full(images, np.arange(6), seed=0, epoch=0, view=0), resize(images, 16))
    # Any crop window lies inside the image: on an all-ones image the view is ones away from the border.
    crop = DigitsAugmentation(image_size=8, crop_scale_min=0.25, max_rotation_deg=0.0, noise_std=0.0)
    views = crop(torch.ones(64, 1, 8, 8), np.arange(64), seed=1, epoch=0, view=0)
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


def test_random_numbers_are_keyed_by_sample_not_by_batch():
    together = random_bits(7, 2, np.array([5, 9, 11]), 1, 40)
    alone = random_bits(7, 2, np.array([9]), 1, 40)
    assert np.array_equal(together[1], alone[0])
    assert np.array_equal(random_bits(7, 2, np.array([9]), 1, 10)[0], alone[0, :10])  # draws are a stream
    for other in (random_bits(8, 2, np.array([9]), 1, 40), random_bits(7, 3, np.array([9]), 1, 40),
                  random_bits(7, 2, np.array([10]), 1, 40), random_bits(7, 2, np.array([9]), 0, 40)):
        assert not np.any(other == alone)  # each key changes every draw
    bits = random_bits(0, 0, np.arange(100), 0, 200)
    u = uniforms(bits)
    assert 0.0 < u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.002
    z = normals(bits)
    assert z.dtype == np.float32 and z.shape == (100, 400)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02 and abs(np.mean(z**4) - 3.0) < 0.1  # Gaussian kurtosis


def test_views_do_not_depend_on_the_batch_size(split):
    train, _ = split
    small, large = make_loader(train, batch_size=100), make_loader(train, batch_size=400)
    for loader in (small, large):
        loader.set_epoch(1)
    by_small = {i: v for batch in views_by_index(small) for i, v in batch.items()}
    by_large = {i: v for batch in views_by_index(large) for i, v in batch.items()}
    common = by_small.keys() & by_large.keys()
    assert len(common) == 1200  # large: 3 batches of the same epoch order
    assert all(same_views(by_small[i], by_large[i]) for i in common)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_give_the_single_rank_batches(split, world_size):
    # The global batch of 300 split over W ranks: at every step the ranks' batches together are
    # the one-rank batch, sample for sample and view for view.
    train, _ = split
    single = make_loader(train, batch_size=300)
    ranks = [make_loader(train, batch_size=300 // world_size, rank=r, world_size=world_size)
             for r in range(world_size)]
    for loader in [single, *ranks]:
        loader.set_epoch(2)
    assert {len(loader) for loader in ranks} == {len(single)} == {len(train.labels) // 300}
    expected = views_by_index(single)
    per_rank = [views_by_index(loader) for loader in ranks]
    for step, want in enumerate(expected):
        got = {i: v for rank in per_rank for i, v in rank[step].items()}
        assert sum(len(rank[step]) for rank in per_rank) == len(got) == 300  # disjoint shares
        assert got.keys() == want.keys()
        assert all(same_views(got[i], want[i]) for i in want)


def test_a_rank_resumes_from_its_batch_count(split):
    train, _ = split
    uninterrupted = make_loader(train, batch_size=50, rank=1, world_size=2)
    uninterrupted.set_epoch(1)
    expected = batches(uninterrupted)[3:]
    resumed = make_loader(train, batch_size=50, rank=1, world_size=2)
    resumed.load_state_dict({"epoch": 1, "position": 3 * 50})  # what the engine stores: steps x local batch
    got = batches(resumed)
    assert len(got) == len(expected) and all(same_views(a, b) for a, b in zip(got, expected))


def test_loader_rejects_a_rank_outside_the_world(split):
    train, _ = split
    with pytest.raises(ValueError, match="rank"):
        make_loader(train, batch_size=100, rank=2, world_size=2)
