"""Without the project's DALI colour operator (missing, built for another DALI, or without the
GPU backend a GPU pipeline needs), the pipelines use DALI's built-in colour operators, with one
warning; and a GPU data pipeline that cannot run is a config error at validation."""

import re
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from nvidia.dali import backend as dali_backend  # noqa: E402

from fmicl_engine import _ext  # noqa: E402
from fmicl_engine.config import ConfigErrors, config_from_dict  # noqa: E402
from fmicl_engine.data import (AugmentationRecipe, ViewSpec, build_image_index,  # noqa: E402
                               build_two_view_loader, simclr)
from fmicl_engine.data import dali_ops  # noqa: E402
from fmicl_engine.data.dali_pipeline import (DaliTwoViewLoader, PipelineConfig,  # noqa: E402
                                             build_pipeline)
from fmicl_engine.data.synthetic import make_image_folder  # noqa: E402

from test_dali_views import (SEED, assert_within, reference_views, uint8_error,  # noqa: E402
                             views_and_reference)

BIT_EXACTNESS_LOST = "no longer bit-exact with torchvision"


@pytest.fixture
def fresh_ops(monkeypatch):
    """dali_ops as in a new process: nothing loaded, nothing warned (restored afterwards)."""
    monkeypatch.setattr(dali_ops, "_loaded", False)
    monkeypatch.setattr(dali_ops, "_warned", False)
    monkeypatch.delenv(dali_ops.COLOUR_ENV, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    make_image_folder(root, num_classes=3, per_class=6, size=(120, 90), seed=1)
    return str(root)


def backend_warnings(device, times=2):
    """colour_backend's answers and warnings over ``times`` calls."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers = [dali_ops.colour_backend(device) for _ in range(times)]
    return answers, [str(w.message) for w in caught]


@pytest.mark.parametrize("built_with,reason", [
    ("", "built without its DALI operators"),
    ("1.0.0", "built against DALI 1.0.0, but DALI"),
])
def test_a_missing_or_mismatched_operator_falls_back_with_one_warning(fresh_ops, built_with, reason):
    fresh_ops.setitem(_ext._C.build_info, "dali_version", built_with)
    answers, messages = backend_warnings("cpu")
    assert answers == [dali_ops.BUILTIN] * 2
    assert len(messages) == 1 and reason in messages[0] and BIT_EXACTNESS_LOST in messages[0]


def test_a_gpu_pipeline_without_the_gpu_backend_falls_back(fresh_ops):
    fresh_ops.setattr(dali_backend, "RegisteredGPUOps", lambda: [])
    assert backend_warnings("cpu", times=1) == ([dali_ops.EXACT], [])  # the CPU backend serves
    answers, messages = backend_warnings("gpu")
    assert answers == [dali_ops.BUILTIN] * 2
    assert len(messages) == 1 and "no GPU backend" in messages[0] and "FMICL_CUDA=ON" in messages[0]


def test_the_environment_chooses_exact_or_builtin(fresh_ops):
    fresh_ops.setenv(dali_ops.COLOUR_ENV, "builtin")
    answers, messages = backend_warnings("cpu", times=1)
    assert answers == [dali_ops.BUILTIN] and "FMICL_DALI_COLOUR=builtin" in messages[0]
    fresh_ops.setenv(dali_ops.COLOUR_ENV, "exact")
    assert dali_ops.colour_backend("cpu") == dali_ops.EXACT
    fresh_ops.setattr(dali_ops, "_loaded", False)
    fresh_ops.setitem(_ext._C.build_info, "dali_version", "")
    with pytest.raises(ImportError, match="FMICL_DALI_COLOUR=exact, but .*built without"):
        dali_ops.colour_backend("cpu")
    fresh_ops.setenv(dali_ops.COLOUR_ENV, "bitexact")
    with pytest.raises(ValueError, match="FMICL_DALI_COLOUR must be one of"):
        dali_ops.colour_backend("cpu")


def test_builtin_colour_follows_torchvision_except_the_hue(tree, fresh_ops):
    fresh_ops.setitem(_ext._C.build_info, "dali_version", "")  # the operator is missing
    # Brightness, contrast, saturation and grayscale follow Pillow's formulas: the views differ
    # from the reference's by the resize's interpolation only, as with the exact operator.
    spec = ViewSpec(jitter_p=1.0, brightness=0.6, contrast=0.6, saturation=0.6, hue=0.0,
                    grayscale_p=0.3, blur_p=0.5, solarize_p=0.3)
    recipe = AugmentationRecipe(view1=spec, view2=spec)
    with pytest.warns(RuntimeWarning, match=BIT_EXACTNESS_LOST):
        views, refs = views_and_reference(tree, recipe, 40)
    assert_within(views, refs, 1.0)
    plain1, _, _ = reference_views(tree, recipe, 40, np.arange(12), colour=False)
    assert uint8_error(views[0], plain1).mean() > 10

    # The hue: fn.hsv rotates in YIQ space where Pillow shifts its 8-bit HSV hue: the same
    # direction and amount, not the same pixels.
    spec = ViewSpec(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.3,
                    grayscale_p=0.0, blur_p=0.0)
    recipe = AugmentationRecipe(view1=spec, view2=spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process: not again
        views, refs = views_and_reference(tree, recipe, 40)
    plain1, _, _ = reference_views(tree, recipe, 40, np.arange(12), colour=False)
    hue_error, shift = uint8_error(views[0], refs[0]).mean(), uint8_error(views[0], plain1).mean()
    assert 1.0 < hue_error < 0.75 * shift, (hue_error, shift)


def test_builtin_loader_keeps_its_contract(tree, fresh_ops):
    fresh_ops.setenv(dali_ops.COLOUR_ENV, "builtin")
    kwargs = dict(root=tree, recipe="byol", image_size=24, batch_size=5, seed=SEED,
                  drop_last=False, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match=BIT_EXACTNESS_LOST):
        loader = build_two_view_loader(**kwargs)
    assert loader.config.colour == dali_ops.BUILTIN
    first = list(loader)
    with build_two_view_loader(**kwargs) as again:  # deterministic, as the exact operator
        for a, b in zip(first, again, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [len(b[2]) for b in first] == [5, 5, 5, 3] and first[0][0].dtype == torch.float16
    assert all(torch.isfinite(b[0]).all() and torch.isfinite(b[1]).all() for b in first)
    loader.close()


def test_gpu_graph_with_builtin_colour_runs_on_the_gpu():
    # No GPU here: build the GPU pipeline's graph only, as test_dali_views does for the exact one.
    config = PipelineConfig(image_size=32, blur_window=5, device="gpu", colour=dali_ops.BUILTIN)
    pipe = build_pipeline(lambda info: None, config, 4, device_id=None, build=False)
    pipe._build_graph()
    devices = {}
    for op in pipe._ops:
        devices.setdefault(re.sub(r"_\d+$", "", op.name).strip("_"), set()).update(
            out.device for out in op.outputs)
    assert "ColorJitter" not in devices
    for name in ("Hsv", "Mean", "Cat", "Resize", "CropMirrorNormalize"):
        assert devices[name] == {"gpu"}, name


# --- validation -------------------------------------------------------------------------------

def imagefolder_errors(root, device):
    raw = {"data": {"dataset": "imagefolder", "imagefolder": {"root": str(root), "device": device}},
           "eval": {"linear_probe": False}}
    try:
        config_from_dict(raw)
    except ConfigErrors as err:
        return str(err).splitlines()
    return []


def test_a_gpu_pipeline_that_cannot_run_is_a_config_error(tmp_path, fresh_ops):
    import fmicl_engine.config.loader as loader_module

    fresh_ops.setattr(loader_module, "_cuda_available", lambda: False)
    assert imagefolder_errors(tmp_path, "gpu") == [
        "data.imagefolder.device: is 'gpu' but torch.cuda.is_available() is False"]
    assert imagefolder_errors(tmp_path, "cpu") == []

    # A GPU, but the operator has no GPU backend: the built-in operators serve, unless refused.
    fresh_ops.setattr(loader_module, "_cuda_available", lambda: True)
    fresh_ops.setattr(dali_backend, "RegisteredGPUOps", lambda: [])
    assert imagefolder_errors(tmp_path, "gpu") == []
    fresh_ops.setenv(dali_ops.COLOUR_ENV, "exact")
    (error,) = imagefolder_errors(tmp_path, "gpu")
    assert error.startswith("data.imagefolder.device: is 'gpu', but FMICL_DALI_COLOUR=exact requires "
                            "fmicl_engine's colour operator: ")
    assert "no GPU backend" in error and "FMICL_CUDA=ON" in error
    assert imagefolder_errors(tmp_path, "cpu") == []


def test_an_image_pipeline_without_dali_is_a_config_error(tmp_path, fresh_ops):
    import sys

    fresh_ops.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` fails
    (error,) = imagefolder_errors(tmp_path, "cpu")
    assert error.startswith("data.imagefolder.device: is 'cpu', but NVIDIA DALI is not importable")
    assert "pip install nvidia-dali-cuda" in error

    make_image_folder(tmp_path, num_classes=1, per_class=2)
    index = build_image_index(root=str(tmp_path))
    with pytest.raises(ImportError, match="the DALI data pipeline cannot run: NVIDIA DALI is not"):
        DaliTwoViewLoader(index, recipe=simclr(), image_size=16, batch_size=2, seed=0)
