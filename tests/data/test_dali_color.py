"""fn.fmicl.color_jitter (cpp/dali) against torchvision's ColorJitter and RandomGrayscale on PIL
images: bit for bit, step by step and in random orders, on photographs, random colours and
every 8-bit colour; and its errors on bad input."""

import numpy as np
import pytest
import torchvision.transforms.functional as F
from PIL import Image

pytest.importorskip("nvidia.dali")

from fmicl_engine.data.dali_ops import load_dali_ops  # noqa: E402
from fmicl_engine.data.dali_pipeline import NO_STEP, hue_shifts  # noqa: E402
from fmicl_engine.data.sampler import BRIGHTNESS, CONTRAST, HUE, SATURATION  # noqa: E402
from fmicl_engine.data.torchvision_reference import colour_jitter  # noqa: E402

ARGS = ("brightness", "contrast", "saturation", "hue_shift", "order", "grayscale")


def params(order=(), brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, grayscale=False):
    """One image's arguments, plus the hue factor torchvision takes."""
    steps = list(order) + [NO_STEP] * (4 - len(order))
    return dict(brightness=np.float32(brightness), contrast=np.float32(contrast),
                saturation=np.float32(saturation),
                hue_shift=np.int32(hue_shifts(np.float32([hue]))[0]),
                order=np.array(steps, dtype=np.int32), grayscale=np.bool_(grayscale),
                hue_factor=np.float32(hue))


def run_color_jitter(images, per_image, num_threads=2):
    from nvidia.dali import fn, pipeline_def

    load_dali_ops()
    columns = {name: [p[name] for p in per_image] for name in ARGS}

    def constant(batch):
        return lambda: batch

    @pipeline_def(batch_size=len(images), num_threads=num_threads, device_id=None)
    def pipe():
        x = fn.external_source(source=constant(images), batch=True, layout="HWC")
        args = {name: fn.external_source(source=constant(columns[name]), batch=True)
                for name in ARGS}
        return fn.fmicl.color_jitter(x, **args)

    built = pipe()
    built.build()
    (out,) = built.run()
    return [np.array(out[k]) for k in range(len(images))]


def torchvision_color(image, p):
    factors = [p["brightness"], p["contrast"], p["saturation"], p["hue_factor"]]
    return np.asarray(colour_jitter(Image.fromarray(image), p["order"], factors, p["grayscale"]))


def assert_matches_torchvision(images, per_image):
    ours = run_color_jitter(images, per_image)
    for k, (image, p, got) in enumerate(zip(images, per_image, ours, strict=True)):
        want = torchvision_color(image, p)
        assert got.shape == want.shape and got.dtype == np.uint8
        differ = (got != want).any(axis=-1)
        assert not differ.any(), (k, {n: p[n] for n in ARGS}, int(differ.sum()))


@pytest.fixture(scope="module")
def images():
    """Two photographs (sklearn's JPEGs as PIL decodes them, cut down) and random colours."""
    from sklearn.datasets import load_sample_images

    photos = [np.ascontiguousarray(p[::3, ::3]) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    return photos + [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(2)]


@pytest.mark.parametrize("step,name", [(BRIGHTNESS, "brightness"), (CONTRAST, "contrast"),
                                       (SATURATION, "saturation")])
def test_each_blend_step_is_torchvisions(images, step, name):
    # Factors inside [0, 1] (interpolation), above 1 (extrapolation, clipped) and the edges.
    factors = [0.0, 0.2, 0.6137, 0.999, 1.0, 1.0001, 1.37, 1.8, 2.5]
    batch = [image for image in images for _ in factors]
    per_image = [params((step,), **{name: f}) for _ in images for f in factors]
    assert_matches_torchvision(batch, per_image)


def test_hue_step_is_torchvisions(images):
    factors = [-0.5, -0.2937, -0.1, -0.04, 0.0, 0.003, 0.1, 0.21, 0.37, 0.5]
    batch = [image for image in images for _ in factors]
    per_image = [params((HUE,), hue=f) for _ in images for f in factors]
    assert_matches_torchvision(batch, per_image)


def test_random_orders_and_grayscale_are_torchvisions(images):
    # The recipe's ranges widened: all 24 orders, steps left out, grayscale after the jitter.
    rng = np.random.default_rng(1)
    batch, per_image = [], []
    for k in range(48):
        order = list(rng.permutation(4))
        if k % 4 == 0:
            order = order[: rng.integers(0, 4)]
        batch.append(images[k % len(images)])
        per_image.append(params(order, brightness=rng.uniform(0.2, 1.8),
                                contrast=rng.uniform(0.2, 1.8), saturation=rng.uniform(0.0, 2.0),
                                hue=rng.uniform(-0.5, 0.5), grayscale=k % 3 == 0))
    assert_matches_torchvision(batch, per_image)


def test_no_step_is_the_identity_and_grayscale_alone_is_torchvisions(images):
    ours = run_color_jitter(images[:2], [params(), params(grayscale=True)])
    assert np.array_equal(ours[0], images[0])
    want = np.asarray(F.rgb_to_grayscale(Image.fromarray(images[1]), num_output_channels=3))
    assert np.array_equal(ours[1], want)


def test_results_do_not_depend_on_the_thread_count(images):
    per_image = [params((HUE, CONTRAST, SATURATION, BRIGHTNESS), 1.3, 0.6, 1.5, 0.2)] * 4
    batch = [images[k % len(images)] for k in range(4)]
    one = run_color_jitter(batch, per_image, num_threads=1)
    three = run_color_jitter(batch, per_image, num_threads=3)
    assert all(np.array_equal(a, b) for a, b in zip(one, three, strict=True))


@pytest.mark.slow
def test_every_colour_through_every_step():
    # All 2^24 colours in one 4096 x 4096 image: the hue at three shifts (Pillow's HSV round
    # trip has float rounding at exact sextant boundaries), saturation (luma and an extrapolating
    # blend per colour), and all four in an order with contrast last (its mean over the image).
    codes = np.arange(1 << 24, dtype=np.uint32)
    image = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1)
    image = np.ascontiguousarray(image.astype(np.uint8).reshape(4096, 4096, 3))
    for p in (params((HUE,), hue=0.37), params((HUE,), hue=-0.1), params((HUE,), hue=0.5),
              params((SATURATION,), saturation=1.73),
              params((HUE, SATURATION, BRIGHTNESS, CONTRAST), 1.21, 0.55, 0.7, -0.27, True)):
        (got,) = run_color_jitter([image], [p])
        want = torchvision_color(image, p)
        assert np.array_equal(got, want), ({n: p[n] for n in ARGS}, int((got != want).sum()))


@pytest.mark.parametrize("change,message", [
    (dict(hue_shift=np.int32(256)), "hue_shift must be in [0, 256)"),
    (dict(order=np.array([0, 1, 4, -1], np.int32)), "order holds step 4"),
    (dict(order=np.array([0, 1], np.int32)), "`order` needs 4 value(s) per sample"),
    (dict(brightness=np.float64(1.0)), "`brightness` must be"),
])
def test_bad_arguments_name_the_argument(images, change, message):
    p = params((BRIGHTNESS,))
    p.update(change)
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        run_color_jitter(images[:1], [p])


@pytest.mark.parametrize("image,message", [
    (np.zeros((8, 8, 4), np.uint8), "has 4 channels, need RGB"),
    (np.zeros((8, 8, 3), np.float32), "images must be uint8"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(RuntimeError, match=message):
        run_color_jitter([image], [params()])


def test_a_build_for_another_dali_says_to_rebuild(monkeypatch):
    from fmicl_engine import _ext
    from fmicl_engine.data import dali_ops

    monkeypatch.setattr(dali_ops, "_loaded", False)
    monkeypatch.setitem(_ext._C.build_info, "dali_version", "0.0.1")
    with pytest.raises(ImportError, match="built against DALI 0.0.1.*Rebuild"):
        load_dali_ops()
    monkeypatch.setitem(_ext._C.build_info, "dali_version", "")
    with pytest.raises(ImportError, match="built without its DALI operators"):
        load_dali_ops()


def _gpu_available():
    import torch

    from fmicl_engine import _ext
    return torch.cuda.is_available() and _ext._C.build_info["with_cuda"]


@pytest.mark.cuda
@pytest.mark.skipif(not _gpu_available(), reason="needs a GPU and a build with the CUDA kernels")
def test_gpu_backend_equals_the_cpu_backend(images):
    # Same per-pixel math (pil_color.h, _rn intrinsics on the device): bit for bit.
    from nvidia.dali import fn, pipeline_def

    load_dali_ops()
    rng = np.random.default_rng(2)
    batch = [images[k % len(images)] for k in range(24)]
    per_image = [params(list(rng.permutation(4))[: 1 + k % 4], rng.uniform(0.2, 1.8),
                        rng.uniform(0.2, 1.8), rng.uniform(0.0, 2.0), rng.uniform(-0.5, 0.5),
                        k % 3 == 0) for k in range(24)]
    columns = {name: [p[name] for p in per_image] for name in ARGS}

    @pipeline_def(batch_size=len(batch), num_threads=2, device_id=0)
    def pipe():
        x = fn.external_source(source=lambda: batch, batch=True, layout="HWC", device="gpu")
        args = {name: fn.external_source(source=(lambda v: lambda: v)(columns[name]), batch=True)
                for name in ARGS}
        return fn.fmicl.color_jitter(x, **args)

    built = pipe()
    built.build()
    (out,) = built.run()
    out = out.as_cpu()
    gpu = [np.array(out[k]) for k in range(len(batch))]
    cpu = run_color_jitter(batch, per_image)
    for k, (a, b) in enumerate(zip(gpu, cpu, strict=True)):
        assert np.array_equal(a, b), k


# --- the CUDA kernel, run on the CPU ---------------------------------------------------------
# cpp/dali/color_jitter_kernel.cuh compiled as C++ against tests/loss/cuda_emulation.h (each CUDA
# thread a std::thread, __syncthreads a barrier), 64 threads a block so that the pixel loops
# stride and the block sum halves six times: the kernel's logic and its reduction, checked
# against torchvision without a GPU (test_gpu_backend_equals_the_cpu_backend is the real thing).
EMULATED_THREADS = 64
EMULATION_DRIVER = r"""
#include <vector>
#include "cuda_emulation.h"
#include "color_jitter_kernel.cuh"
using namespace fmicl;
extern "C" void emulated_color_jitter(const uint8_t *in, uint8_t *out, const int64_t *pixels,
                                      const float *factors, const int32_t *hue_shift,
                                      const int32_t *order, const uint8_t *grayscale, int n) {
  std::vector<dali_ops::ColorSample> samples(n);
  int64_t offset = 0;
  for (int i = 0; i < n; ++i) {
    pil::ColorParams p{factors[3 * i], factors[3 * i + 1], factors[3 * i + 2], hue_shift[i],
                       {order[4 * i], order[4 * i + 1], order[4 * i + 2], order[4 * i + 3]},
                       grayscale[i] != 0};
    samples[i] = {in + 3 * offset, out + 3 * offset, pixels[i], p};
    offset += pixels[i];
  }
  emu_launch(n, dali_ops::kColorThreads, dali_ops::color_jitter_kernel, samples.data());
}
"""


@pytest.fixture(scope="module")
def emulated_kernel(tmp_path_factory):
    import ctypes
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    folder = tmp_path_factory.mktemp("color_jitter_emulated")
    kernel, made = re.subn(r"constexpr int kColorThreads = \d+;",
                           f"constexpr int kColorThreads = {EMULATED_THREADS};",
                           (repo / "cpp" / "dali" / "color_jitter_kernel.cuh").read_text())
    assert made == 1, "color_jitter_kernel.cuh: kColorThreads not found"
    (folder / "color_jitter_kernel.cuh").write_text(kernel)
    (folder / "driver.cpp").write_text(EMULATION_DRIVER)
    library = folder / "libemulated.so"
    subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
                    f"-I{folder}", f"-I{repo / 'cpp' / 'include'}", f"-I{repo / 'tests' / 'loss'}",
                    str(folder / "driver.cpp"), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library)).emulated_color_jitter


def run_emulated(kernel, images, per_image):
    import ctypes

    def pointer(array):
        return array.ctypes.data_as(ctypes.c_void_p)

    flat = np.concatenate([image.reshape(-1) for image in images])
    out = np.zeros_like(flat)
    pixels = np.array([image.shape[0] * image.shape[1] for image in images], dtype=np.int64)
    factors = np.array([[p["brightness"], p["contrast"], p["saturation"]] for p in per_image],
                       dtype=np.float32)
    hue_shift = np.array([p["hue_shift"] for p in per_image], dtype=np.int32)
    order = np.stack([p["order"] for p in per_image]).astype(np.int32)
    grayscale = np.array([p["grayscale"] for p in per_image], dtype=np.uint8)
    kernel(pointer(flat), pointer(out), pointer(pixels), pointer(factors), pointer(hue_shift),
           pointer(order), pointer(grayscale), ctypes.c_int(len(images)))
    ends = np.cumsum(3 * pixels)
    return [out[end - 3 * n:end].reshape(image.shape)
            for end, n, image in zip(ends, pixels, images, strict=True)]


def test_emulated_cuda_kernel_is_torchvisions(emulated_kernel, images):
    # Contrast at every position (its block sum over the steps before it), odd image sizes.
    rng = np.random.default_rng(3)
    small = [np.ascontiguousarray(image[:41, :29]) for image in images]
    batch, per_image = [], []
    for k in range(12):
        order = list(rng.permutation([BRIGHTNESS, SATURATION, HUE]))
        order.insert(k % 4, CONTRAST)
        batch.append(small[k % len(small)])
        per_image.append(params(order, rng.uniform(0.2, 1.8), rng.uniform(0.2, 1.8),
                                rng.uniform(0.0, 2.0), rng.uniform(-0.5, 0.5), k % 3 == 0))
    for k, (image, p, got) in enumerate(zip(batch, per_image,
                                            run_emulated(emulated_kernel, batch, per_image),
                                            strict=True)):
        assert np.array_equal(got, torchvision_color(image, p)), k


def test_constant_arguments_work_as_per_sample_ones(images):
    from nvidia.dali import fn, pipeline_def

    load_dali_ops()
    p = params((SATURATION, HUE, CONTRAST), saturation=1.4, contrast=0.7, hue=0.2, grayscale=False)
    batch = images[:2]

    @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: batch, batch=True, layout="HWC")
        return fn.fmicl.color_jitter(x, brightness=1.0, contrast=0.7, saturation=1.4,
                                     hue_shift=int(p["hue_shift"]), order=[2, 3, 1, -1],
                                     grayscale=False)

    built = pipe()
    built.build()
    (out,) = built.run()
    for k, image in enumerate(batch):
        assert np.array_equal(np.array(out[k]), torchvision_color(image, p)), k


def test_gpu_pipeline_without_the_cuda_backend_says_how_to_build_it(monkeypatch):
    from nvidia.dali import backend

    load_dali_ops("cpu")
    monkeypatch.setattr(backend, "RegisteredGPUOps", lambda: [])  # as in a CPU-only build
    with pytest.raises(ImportError, match="no GPU backend.*FMICL_CUDA=ON"):
        load_dali_ops("gpu")
