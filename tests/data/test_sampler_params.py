"""The C++ augmentation-pair sampler: generator, shards, parameter distributions, determinism."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from fmicl_engine._ext import _C
from fmicl_engine.data import ViewSpec, AugmentationRecipe, byol, sample_view_pairs, shard_indices, simclr


def params_for(recipe, n, width, height, seed=0, epoch=0, num_threads=1, first=0):
    indices = np.arange(first, first + n)
    return sample_view_pairs(indices, np.full(n, width), np.full(n, height), recipe=recipe,
                             seed=seed, epoch=epoch, num_threads=num_threads)


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10.
    ph = _C.sampler.philox4x32_10
    assert ph([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert ph([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert ph([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("n,world", [(103, 4), (100, 4), (7, 3), (5, 1)])
def test_shards_are_disjoint_and_cover(n, world):
    padded = [shard_indices(n, seed=5, epoch=2, rank=r, world_size=world) for r in range(world)]
    assert all(len(s) == math.ceil(n / world) for s in padded)
    everything = np.concatenate(padded)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - n == (-n) % world  # only the padding repeats

    dropped = [shard_indices(n, seed=5, epoch=2, rank=r, world_size=world, drop_last=True)
               for r in range(world)]
    assert all(len(s) == n // world for s in dropped)
    together = np.concatenate(dropped)
    assert len(set(together.tolist())) == len(together) == (n // world) * world


def test_shards_depend_on_seed_and_epoch_only():
    a = shard_indices(1000, seed=1, epoch=0)
    assert np.array_equal(a, shard_indices(1000, seed=1, epoch=0))
    assert not np.array_equal(a, shard_indices(1000, seed=1, epoch=1))
    assert not np.array_equal(a, shard_indices(1000, seed=2, epoch=0))
    assert sorted(a.tolist()) == list(range(1000))
    # Rank r's share is the global permutation's positions r, r + W, ...
    two = [shard_indices(1000, seed=1, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert np.array_equal(two[0], a[0::2]) and np.array_equal(two[1], a[1::2])


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        shard_indices(10, seed=0, epoch=0, rank=2, world_size=2)


def torchvision_crops(n, width, height, scale, ratio, seed=0):
    torch.manual_seed(seed)
    image = torch.empty(1, height, width)
    return np.array([RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)])


@pytest.mark.parametrize("width,height,scale", [(500, 375, (0.08, 1.0)), (64, 64, (0.2, 1.0)),
                                                 (900, 120, (0.08, 1.0))])
def test_crop_distribution_matches_torchvision(width, height, scale):
    n = 6000
    spec = ViewSpec(crop_scale_min=scale[0], crop_scale_max=scale[1])
    ours = params_for(AugmentationRecipe(view1=spec, view2=spec), n, width, height).crop[:, 0]
    ref = torchvision_crops(n, width, height, scale, (3 / 4, 4 / 3))  # i, j, h, w
    for name, f in [("area fraction", lambda c: c[:, 2] * c[:, 3] / (width * height)),
                    ("log ratio", lambda c: np.log(c[:, 3] / c[:, 2])),
                    ("top", lambda c: c[:, 0] / np.maximum(height - c[:, 2], 1)),
                    ("left", lambda c: c[:, 1] / np.maximum(width - c[:, 3], 1))]:
        result = stats.ks_2samp(f(ours), f(ref))
        assert result.pvalue > 1e-3, (name, result)
    assert np.all(ours[:, 0] + ours[:, 2] <= height) and np.all(ours[:, 1] + ours[:, 3] <= width)
    assert np.all(ours >= [0, 0, 1, 1])


def test_crop_fallback_is_torchvisions_centre_crop():
    # A 1000 x 10 strip: no window of area >= 90% has a ratio in [3/4, 4/3], so all ten tries
    # fail and both fall back to the same centre crop.
    spec = ViewSpec(crop_scale_min=0.9)
    ours = params_for(AugmentationRecipe(view1=spec, view2=spec), 50, 1000, 10).crop
    ref = torchvision_crops(50, 1000, 10, (0.9, 1.0), (3 / 4, 4 / 3))
    assert np.all(ours == ref[0]) and np.all(ref == ref[0])


def within(freq, p, n, sigmas=5.0):
    return abs(freq - p) <= sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


@pytest.mark.parametrize("recipe", [simclr(), byol()], ids=["simclr", "byol"])
def test_flag_frequencies_match_recipe(recipe):
    n = 40000
    p = params_for(recipe, n, 320, 240)
    for v, spec in enumerate((recipe.view1, recipe.view2)):
        assert within(p.flip[:, v].mean(), spec.flip_p, n)
        assert within(p.jitter[:, v].mean(), spec.jitter_p, n)
        assert within(p.grayscale[:, v].mean(), spec.grayscale_p, n)
        assert within((p.blur_sigma[:, v] > 0).mean(), spec.blur_p, n)
        assert within(p.solarize[:, v].mean(), spec.solarize_p, n)


def test_jitter_factors_and_order():
    recipe = byol()
    spec = recipe.view1
    n = 40000
    p = params_for(recipe, n, 320, 240)
    on = p.jitter[:, 0]
    factors = p.jitter_factors[on, 0]
    for k, (low, high) in enumerate([(1 - spec.brightness, 1 + spec.brightness),
                                     (1 - spec.contrast, 1 + spec.contrast),
                                     (1 - spec.saturation, 1 + spec.saturation),
                                     (-spec.hue, spec.hue)]):
        result = stats.kstest(factors[:, k], stats.uniform(low, high - low).cdf)
        assert result.pvalue > 1e-3, (k, result)
    off = p.jitter_factors[~on, 0]
    assert np.all(off == [1, 1, 1, 0]) and np.all(p.jitter_order[~on, 0] == [0, 1, 2, 3])
    # ColorJitter's randperm(4): each of the 24 orders equally likely.
    codes = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    observed = np.bincount([codes[tuple(o)] for o in p.jitter_order[on, 0]], minlength=24)
    assert stats.chisquare(observed).pvalue > 1e-3
    sigma = p.blur_sigma[:, 0]
    result = stats.kstest(sigma, stats.uniform(spec.blur_sigma_min,
                                               spec.blur_sigma_max - spec.blur_sigma_min).cdf)
    assert result.pvalue > 1e-3


def test_views_are_independent():
    p = params_for(simclr(), 20000, 320, 240)
    both = (p.flip[:, 0] & p.flip[:, 1]).mean()
    assert within(both, 0.25, 20000)
    assert abs(stats.pearsonr(p.crop[:, 0, 2], p.crop[:, 1, 2]).statistic) < 0.05


def test_same_views_regardless_of_threads_batches_and_resume():
    recipe = byol()
    n = 20000
    rng = np.random.default_rng(0)
    indices = rng.permutation(50000)[:n]
    widths, heights = rng.integers(20, 900, n), rng.integers(20, 900, n)
    one = sample_view_pairs(indices, widths, heights, recipe=recipe, seed=9, epoch=3, num_threads=1)
    four = sample_view_pairs(indices, widths, heights, recipe=recipe, seed=9, epoch=3, num_threads=4)
    # A resume mid-epoch asks for the tail of the order only, in batches of another size.
    tail = [sample_view_pairs(indices[s:s + 77], widths[s:s + 77], heights[s:s + 77],
                              recipe=recipe, seed=9, epoch=3) for s in range(12345, n, 77)]
    for field in dataclasses.fields(one):
        a = getattr(one, field.name)
        assert np.array_equal(a, getattr(four, field.name)), field.name
        assert np.array_equal(a[12345:], np.concatenate([getattr(t, field.name) for t in tail]))
    other_epoch = sample_view_pairs(indices, widths, heights, recipe=recipe, seed=9, epoch=4)
    assert not np.array_equal(one.crop, other_epoch.crop)


def test_bad_recipe_and_inputs_are_rejected():
    bad = AugmentationRecipe(view1=ViewSpec(flip_p=1.5))
    with pytest.raises(ValueError, match="view1: flip_p"):
        params_for(bad, 4, 32, 32)
    with pytest.raises(ValueError, match="crop_scale"):
        params_for(AugmentationRecipe(view2=ViewSpec(crop_scale_min=0.0)), 4, 32, 32)
    with pytest.raises(ValueError, match="non-positive size"):
        params_for(simclr(), 4, 0, 32)
    with pytest.raises(ValueError, match="same length"):
        sample_view_pairs(np.arange(3), np.ones(2), np.ones(3), recipe=simclr(), seed=0, epoch=0)
