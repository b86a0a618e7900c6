"""Two-view augmentation recipes (per-view parameters) and their SimCLR and BYOL presets.

The parameterisation is torchvision's: RandomResizedCrop(scale, ratio), RandomHorizontalFlip(p),
RandomApply(ColorJitter(brightness, contrast, saturation, hue), p), RandomGrayscale(p),
GaussianBlur(kernel, sigma) applied with probability p, RandomSolarize(threshold=128, p).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fmicl_engine._ext import _C

# Pixels at or above this (of 255) are inverted by solarisation, as in BYOL and torchvision.
SOLARIZE_THRESHOLD = 128
# ImageNet statistics used to normalise the output (torchvision's, on the 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation parameters (the fields of the C++ ``ViewRecipe``)."""

    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    crop_ratio_min: float = 3.0 / 4.0
    crop_ratio_max: float = 4.0 / 3.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    solarize_p: float = 0.0

    def to_native(self) -> "_C.sampler.ViewRecipe":
        native = _C.sampler.ViewRecipe()
        for f in dataclasses.fields(self):
            setattr(native, f.name, float(getattr(self, f.name)))
        return native


@dataclass(frozen=True)
class AugmentationRecipe:
    """Both views' parameters. ``blur_kernel_fraction`` sets the Gaussian kernel's width as a
    fraction of the output size, rounded up to odd (SimCLR: 10%; 23 px at 224)."""

    view1: ViewSpec = field(default_factory=ViewSpec)
    view2: ViewSpec = field(default_factory=ViewSpec)
    blur_kernel_fraction: float = 0.1
    name: str = "custom"

    def blur_kernel_size(self, image_size: int) -> int:
        k = max(3, int(round(self.blur_kernel_fraction * image_size)))
        return k if k % 2 == 1 else k + 1

    def without_colour(self) -> "AugmentationRecipe":
        """The same crops and flips with every colour operation, blur and solarisation off."""
        off = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return dataclasses.replace(
            self,
            view1=dataclasses.replace(self.view1, **off),
            view2=dataclasses.replace(self.view2, **off),
            name=f"{self.name}-no-colour",
        )


def simclr() -> AugmentationRecipe:
    """SimCLR (Chen et al. 2020, appendix A; colour strength s = 1), the same for both views."""
    view = ViewSpec(
        jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
        grayscale_p=0.2, blur_p=0.5, solarize_p=0.0,
    )
    return AugmentationRecipe(view1=view, view2=view, name="simclr")


def byol() -> AugmentationRecipe:
    """BYOL (Grill et al. 2020, table 6): asymmetric blur (1.0 / 0.1) and solarisation (0 / 0.2)."""
    common = dict(
        jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2,
    )
    return AugmentationRecipe(
        view1=ViewSpec(**common, blur_p=1.0, solarize_p=0.0),
        view2=ViewSpec(**common, blur_p=0.1, solarize_p=0.2),
        name="byol",
    )


PRESETS = {"simclr": simclr, "byol": byol}


def resolve_recipe(recipe: str | AugmentationRecipe) -> AugmentationRecipe:
    if isinstance(recipe, AugmentationRecipe):
        return recipe
    if recipe not in PRESETS:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; presets: {sorted(PRESETS)}")
    return PRESETS[recipe]()
