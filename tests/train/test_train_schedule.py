"""The learning rate is a pure function of the step: warmup, peak, cosine, floor."""

import math

import pytest

from fmicl_engine.train.schedule import learning_rate


def lrs(**kw):
    return [learning_rate(s, **kw) for s in range(kw["total_steps"])]


def test_warmup_then_cosine_endpoints():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=14, min_lr=0.1)
    values = lrs(**kw)
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0  # the cosine starts at the peak...
    assert values[-1] == pytest.approx(0.1)  # ...and ends at min_lr on the last step
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert all(a >= b for a, b in zip(values[4:], values[5:]))  # non-increasing after warmup


def test_pure_function_of_the_step():
    kw = dict(base_lr=3e-4, warmup_steps=10, total_steps=100, min_lr=0.0)
    forward = lrs(**kw)
    backward = [learning_rate(s, **kw) for s in reversed(range(100))][::-1]
    assert forward == backward  # no hidden state: any order, any resume point gives the same values


def test_no_warmup_and_degenerate_lengths():
    assert learning_rate(0, base_lr=2.0, warmup_steps=0, total_steps=5) == 2.0
    assert learning_rate(4, base_lr=2.0, warmup_steps=0, total_steps=5, min_lr=0.5) == pytest.approx(0.5)
    assert learning_rate(0, base_lr=2.0, warmup_steps=0, total_steps=1, min_lr=0.5) == pytest.approx(0.5)
    assert lrs(base_lr=1.0, warmup_steps=3, total_steps=3) == [1 / 3, 2 / 3, 1.0]


@pytest.mark.parametrize("step", [-1, 10])
def test_steps_outside_the_run_are_errors(step):
    with pytest.raises(ValueError, match="step must be in"):
        learning_rate(step, base_lr=1.0, warmup_steps=2, total_steps=10)
