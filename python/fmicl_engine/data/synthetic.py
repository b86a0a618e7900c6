"""Small ImageFolder trees of real-photo JPEGs for tests and benchmarks, made without a network.

The images are random crops of scikit-learn's two bundled photographs (china, flower), resized
to random sizes around a target, so they have natural-image statistics and varied shapes.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def make_image_folder(root: str | os.PathLike, *, num_classes: int = 2, per_class: int = 8,
                      size: tuple[int, int] = (160, 120), size_spread: float = 0.5,
                      seed: int = 0, quality: int = 90) -> list[str]:
    """Writes ``root/class_<c>/<i>.jpg``; each side is uniform in size * [1 - spread, 1 + spread].
    Returns the paths in ImageFolder order."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # 427 x 640 x 3 uint8 each
    paths = []
    for c in range(num_classes):
        folder = os.path.join(root, f"class_{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            photo = photos[int(rng.integers(len(photos)))]
            crop_h = int(rng.integers(photo.shape[0] // 3, photo.shape[0] + 1))
            crop_w = int(rng.integers(photo.shape[1] // 3, photo.shape[1] + 1))
            top = int(rng.integers(photo.shape[0] - crop_h + 1))
            left = int(rng.integers(photo.shape[1] - crop_w + 1))
            width = max(1, int(size[0] * rng.uniform(1 - size_spread, 1 + size_spread)))
            height = max(1, int(size[1] * rng.uniform(1 - size_spread, 1 + size_spread)))
            image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize(
                (width, height), Image.BILINEAR)
            path = os.path.join(folder, f"{i:05d}.jpg")
            image.save(path, quality=quality)
            paths.append(path)
    return sorted(paths)
