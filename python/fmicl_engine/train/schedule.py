"""The learning rate as a pure function of the global step: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def learning_rate(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The lr for optimiser step ``step`` (0-based) of ``total_steps``.

    Warmup rises linearly to ``base_lr`` at step ``warmup_steps - 1`` (step 0 already moves, at
    base_lr / warmup_steps); the cosine then falls from ``base_lr`` at step ``warmup_steps`` to
    ``min_lr`` at the last step, ``total_steps - 1``.
    """
    if step < 0 or step >= total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = (step - warmup_steps) / decay_steps if decay_steps > 0 else 1.0
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
