"""The two-view DALI pipeline, driven by the C++ sampler, and the loader around it.

Python decides everything random (the sampler) and reads the encoded bytes in the sampler's
order; DALI decodes, crops each view's window while resizing (``fn.resize`` with a region of
interest), applies the colour operations with per-sample parameters, and normalises to CHW.
One definition serves both devices: ``device="gpu"`` decodes with the mixed (nvJPEG) backend and
runs the rest on the GPU; ``device="cpu"`` runs the same graph without a GPU.

Order of operations, as torchvision's SimCLR/BYOL pipelines on PIL images (uint8 with clipping
after each step): crop+resize, [ColorJitter's four in the sampled order], grayscale, blur,
solarise, normalise; the horizontal flip is applied last, in ``crop_mirror_normalize``, which is
equivalent because every operation it moves past commutes with a mirror. ColorJitter and
grayscale are the project's own operator, fn.fmicl.color_jitter (cpp/dali), bit for bit
torchvision's on PIL images; solarisation is exact; the resize matches to interpolation and the
blur to rounding, its window cut at 3 sigma (see view_inputs).
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from fmicl_engine.data.dali_ops import load_dali_ops
from fmicl_engine.data.loader_state import EpochPositionState
from fmicl_engine.data.image_index import ImageIndex, report_bad_file
from fmicl_engine.data.recipe import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD,
                                      AugmentationRecipe)
from fmicl_engine.data.sampler import HUE, ViewPairParams, sample_view_pairs, shard_indices

DECODE_MODES = ("full", "slice")
_VIEW_FIELDS = ("roi_start", "roi_end", "flip", "brightness", "contrast", "saturation",
                "hue_shift", "order", "grayscale", "blur", "sigma", "blur_window", "solarize")
_COLOR_JITTER_ARGS = ("brightness", "contrast", "saturation", "hue_shift", "order", "grayscale")
NO_STEP = -1  # a jitter step that does nothing (fmicl.color_jitter's code)


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    """The pipeline's inputs; "slice" decoding also reads the window both views lie in."""
    window = ("window_start", "window_shape") if config.decode == "slice" else ()
    return ("encoded", "labels") + window + tuple(
        f"view{v}_{name}" for v in (1, 2) for name in _VIEW_FIELDS)


def _dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the DALI data pipeline needs NVIDIA DALI: pip install nvidia-dali-cuda130==2.4.0 "
            "(or the extra: pip install -e .[dali])") from err
    from nvidia.dali import fn, pipeline_def, types
    return fn, pipeline_def, types


def hue_shifts(factors: np.ndarray) -> np.ndarray:
    """(n,) uint8: the amount torchvision's adjust_hue adds to a PIL image's 8-bit hue (modulo
    256) for hue factors in [-0.5, 0.5]: int32(factor * 255), truncated toward zero."""
    return (np.trunc(factors.astype(np.float64) * 255.0).astype(np.int64) % 256).astype(np.uint8)


def jitter_order(order: np.ndarray, applied: np.ndarray, hue: bool) -> np.ndarray:
    """(n, 4) int32: the steps fmicl.color_jitter runs, from ColorJitter's sampled order (n x 4
    operation indices): NO_STEP throughout where the jitter is not applied, and for the hue where
    the recipe has none (ColorJitter(hue=0) never calls adjust_hue, whose HSV round trip changes
    pixels even at a zero shift)."""
    steps = order.astype(np.int32)
    if not hue:
        steps = np.where(steps == HUE, NO_STEP, steps)
    return np.ascontiguousarray(np.where(applied[:, None], steps, NO_STEP), dtype=np.int32)


def view_inputs(params: ViewPairParams, config: PipelineConfig) -> dict[str, np.ndarray]:
    """The per-sample arrays the pipeline reads for both views (batch-first numpy arrays).

    Crop windows are (y, x) corners in pixels of the decoded image: the whole image ("full"),
    or the smallest window holding both views ("slice"), whose corner and shape are added."""
    crop = params.crop.astype(np.float32)  # n x 2 x (top, left, height, width)
    starts, ends = crop[:, :, :2], crop[:, :, :2] + crop[:, :, 2:]
    out = {}
    if config.decode == "slice":
        window_start, window_end = starts.min(axis=1), ends.max(axis=1)
        out["window_start"] = window_start
        out["window_shape"] = window_end - window_start
        starts = starts - window_start[:, None]
        ends = ends - window_start[:, None]
    for v in (0, 1):
        prefix = f"view{v + 1}_"
        out[prefix + "roi_start"] = np.ascontiguousarray(starts[:, v])
        out[prefix + "roi_end"] = np.ascontiguousarray(ends[:, v])
        out[prefix + "flip"] = params.flip[:, v].astype(np.int32)
        # Pillow blends with C float factors: float32 here, as the sampler draws them.
        factors = params.jitter_factors[:, v].astype(np.float32)
        out[prefix + "brightness"] = np.ascontiguousarray(factors[:, 0])
        out[prefix + "contrast"] = np.ascontiguousarray(factors[:, 1])
        out[prefix + "saturation"] = np.ascontiguousarray(factors[:, 2])
        out[prefix + "hue_shift"] = hue_shifts(factors[:, 3]).astype(np.int32)
        out[prefix + "order"] = jitter_order(params.jitter_order[:, v], params.jitter[:, v],
                                             config.hue[v])
        out[prefix + "grayscale"] = params.grayscale[:, v].astype(np.bool_)
        out[prefix + "blur"] = params.blur_sigma[:, v] > 0
        sigma = np.maximum(params.blur_sigma[:, v], 1e-3)
        out[prefix + "sigma"] = np.ascontiguousarray(sigma)
        # 2 ceil(3 sigma) + 1 taps hold all but 0.3% of the kernel's weight: up to 3x cheaper
        # than the recipe's fixed kernel for the same image.
        out[prefix + "blur_window"] = np.minimum(
            2 * np.ceil(3 * sigma).astype(np.int32) + 1, config.blur_window).astype(np.int32)
        out[prefix + "solarize"] = np.ascontiguousarray(params.solarize[:, v])
    return out


@dataclass(frozen=True)
class PipelineConfig:
    image_size: int
    blur_window: int
    device: str = "cpu"       # "cpu" or "gpu"
    decode: str = "slice"     # "slice": only the window both views need; "full": whole images
    dtype: torch.dtype = torch.float32
    num_threads: int = 2
    prefetch: int = 2
    # Per view: whether its recipe shifts the hue. ColorJitter(hue=0) never calls adjust_hue,
    # whose HSV round trip changes pixels even at a zero shift.
    hue: tuple[bool, bool] = (True, True)


_OUTPUT_DTYPES = {torch.float32: "FLOAT", torch.float16: "FLOAT16", torch.bfloat16: "FLOAT"}


# torchvision's solarize on uint8: values at or above the threshold are inverted.
_SOLARIZE_TABLE = [255 - v if v >= SOLARIZE_THRESHOLD else v for v in range(256)]


def _colour(x, p, fn, types):
    """ColorJitter in the sampled order and grayscale (fmicl.color_jitter), blur, solarisation;
    uint8 HWC in and out."""
    x = fn.fmicl.color_jitter(x, **{name: p(name) for name in _COLOR_JITTER_ARGS})
    if p("blur"):
        x = fn.gaussian_blur(x, sigma=p("sigma"), window_size=p("blur_window"))
    if p("solarize"):
        x = fn.lookup_table(x, keys=list(range(256)), values=_SOLARIZE_TABLE, dtype=types.UINT8)
    return x


def build_pipeline(source, config: PipelineConfig, batch_size: int, *, device_id: int | None,
                   build: bool = True):
    """The DALI pipeline: ``source(batch_info)`` returns the arrays named by input_names().
    ``device_id``: the CUDA device of a "gpu" pipeline (None without a GPU)."""
    fn, pipeline_def, types = _dali()
    load_dali_ops(config.device if build else "cpu")  # a graph alone needs no CUDA backend
    decoder_device = "mixed" if config.device == "gpu" else "cpu"
    size = [config.image_size, config.image_size]
    out_dtype = getattr(types, _OUTPUT_DTYPES[config.dtype])

    @pipeline_def(enable_conditionals=True)
    def two_views():
        names = input_names(config)
        named = dict(zip(names, fn.external_source(
            source=source, num_outputs=len(names), batch=True, batch_info=True)))
        if config.decode == "full":
            image = fn.decoders.image(named["encoded"], device=decoder_device,
                                      output_type=types.RGB, adjust_orientation=False)
        else:  # only the window both views need: less entropy decoding and IDCT
            image = fn.decoders.image_slice(
                named["encoded"], named["window_start"], named["window_shape"], axis_names="HW",
                normalized_anchor=False, normalized_shape=False, device=decoder_device,
                output_type=types.RGB, adjust_orientation=False)
        views = []
        for v in (1, 2):
            def p(name, v=v):
                return named[f"view{v}_{name}"]
            # Crop and resize in one pass: the view's window is the resize's region of interest.
            x = fn.resize(image, size=size, roi_start=p("roi_start"), roi_end=p("roi_end"),
                          interp_type=types.INTERP_LINEAR, antialias=True)
            x = _colour(x, p, fn, types)
            views.append(fn.crop_mirror_normalize(
                x, mirror=p("flip"), output_layout="CHW", dtype=out_dtype,
                mean=[255.0 * m for m in IMAGENET_MEAN], std=[255.0 * s for s in IMAGENET_STD]))
        return views[0], views[1], named["labels"]

    pipe = two_views(batch_size=batch_size, num_threads=config.num_threads, device_id=device_id,
                     prefetch_queue_depth=config.prefetch, seed=0)
    if build:
        pipe.build()
    return pipe


def _to_torch(tensor_list, dtype: torch.dtype) -> torch.Tensor:
    dense = tensor_list.as_tensor()
    if type(tensor_list).__name__ == "TensorListGPU":
        from nvidia.dali.plugin.pytorch import feed_ndarray
        produced = torch.float16 if dtype == torch.float16 else torch.float32
        out = torch.empty(dense.shape(), dtype=produced, device="cuda")
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
    else:
        out = torch.from_numpy(np.array(dense))  # a copy: DALI reuses its buffers
    return out if out.dtype == dtype else out.to(dtype)


class DaliTwoViewLoader(EpochPositionState):
    """Yields ``(view1, view2, labels)`` per batch of this rank's share of each epoch.

    State: (epoch, position), see EpochPositionState. Files that fail to decode are skipped (or raise, with
    ``on_bad_file="error"``) and listed in ``skipped_files``, with those the index skipped.
    """

    def __init__(self, index: ImageIndex, *, recipe: AugmentationRecipe, image_size: int,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: str = "cpu", num_threads: int = 2, dtype: torch.dtype = torch.float32,
                 on_bad_file: str = "skip", drop_last: bool = True, decode: str = "slice"):
        if device not in ("cpu", "gpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        if dtype not in _OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {list(_OUTPUT_DTYPES)}, got {dtype}")
        if batch_size < 1 or image_size < 1 or num_threads < 1:
            raise ValueError("batch_size, image_size and num_threads must be positive")
        self.index = index
        self.recipe = recipe
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last
        self.on_bad_file = on_bad_file
        self.dtype = dtype
        self.config = PipelineConfig(
            image_size=image_size, blur_window=recipe.blur_kernel_size(image_size),
            device="gpu" if device in ("gpu", "cuda") else "cpu", decode=decode, dtype=dtype,
            num_threads=num_threads, hue=(recipe.view1.hue > 0, recipe.view2.hue > 0))
        self._readers = ThreadPoolExecutor(max(2, num_threads), thread_name_prefix="fmicl-read")
        self.skipped_files: list[str] = list(index.skipped)
        self._undecodable: set[int] = set()
        self.epoch = 0
        self.position = 0
        self.shard_size()  # checks rank and world_size now rather than at the first batch

    # --- protocol ---------------------------------------------------------------------------
    def shard_size(self) -> int:
        """Samples per rank and epoch (DistributedSampler's count)."""
        n, world = len(self.index), self.world_size
        if not 0 <= self.rank < world:
            raise ValueError(f"need 0 <= rank < world_size, got rank {self.rank}, "
                             f"world_size {world}")
        if self.drop_last and n < world:
            raise ValueError(f"{n} samples cannot fill {world} ranks with drop_last")
        return n // world if self.drop_last else math.ceil(n / world)

    def __len__(self) -> int:
        n = self.shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --- iteration --------------------------------------------------------------------------
    def _plan(self, shard: np.ndarray) -> deque[tuple[int, np.ndarray]]:
        """(position after the batch, dataset indices to decode) for the rest of the epoch."""
        end = len(shard) - len(shard) % self.batch_size if self.drop_last else len(shard)
        plan = deque()
        for start in range(self.position, end, self.batch_size):
            stop = min(start + self.batch_size, end)
            batch = shard[start:stop]
            if self._undecodable:
                batch = batch[[int(i) not in self._undecodable for i in batch]]
            plan.append((stop, batch))
        return plan

    def batch_inputs(self, indices: np.ndarray, epoch: int) -> dict[str, object]:
        """Everything the pipeline reads for one batch: encoded bytes, labels, view parameters."""
        params = sample_view_pairs(indices, self.index.widths[indices], self.index.heights[indices],
                                   recipe=self.recipe, seed=self.seed, epoch=epoch)
        inputs = view_inputs(params, self.config)
        # Reads overlap in threads (they release the GIL): one reader can starve a GPU decoder.
        inputs["encoded"] = list(self._readers.map(
            lambda i: np.fromfile(self.index.paths[i], dtype=np.uint8), indices))
        inputs["labels"] = self.index.labels[indices]
        return inputs

    def _start(self, plan):
        epoch = self.epoch
        batches = [b for _, b in plan if len(b)]
        names = input_names(self.config)

        def source(info):
            if info.iteration >= len(batches):
                raise StopIteration
            inputs = self.batch_inputs(batches[info.iteration], epoch)
            return tuple(inputs[name] for name in names)

        device_id = torch.cuda.current_device() if self.config.device == "gpu" else None
        return build_pipeline(source, self.config, self.batch_size, device_id=device_id)

    def _find_undecodable(self, plan) -> bool:
        """After a decoder error: finds the culprits among the batches DALI may have started."""
        from PIL import Image

        found = False
        for _, batch in list(plan)[: self.config.prefetch + 1]:
            for i in batch:
                path = self.index.paths[int(i)]
                try:
                    with Image.open(path) as image:
                        image.convert("RGB").load()
                except (OSError, ValueError) as err:
                    self._undecodable.add(int(i))
                    self.skipped_files.append(path)
                    report_bad_file(path, f"reading or decoding failed: {type(err).__name__}: {err}",
                                    self.on_bad_file)
                    found = True
        return found

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        shard = shard_indices(len(self.index), seed=self.seed, epoch=self.epoch, rank=self.rank,
                              world_size=self.world_size, drop_last=self.drop_last)
        plan = self._plan(shard)
        while plan:
            pipe = self._start(plan)
            try:
                while plan:
                    if not len(plan[0][1]):  # every sample of this batch is undecodable
                        self.position = plan.popleft()[0]
                        continue
                    view1, view2, labels = pipe.run()
                    self.position = plan.popleft()[0]
                    yield (_to_torch(view1, self.dtype), _to_torch(view2, self.dtype),
                           _to_torch(labels, torch.int64))
            except (RuntimeError, OSError):
                # A decoder error (RuntimeError) or a file gone since indexing (OSError, from the
                # reader): DALI cannot continue; find the files, rebuild the pipeline, go on.
                if not self._find_undecodable(plan):
                    raise
                plan = self._plan(shard)
            finally:
                del pipe
