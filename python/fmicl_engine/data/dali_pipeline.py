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
blur to rounding, its window cut at 3 sigma (see view_inputs). Without the project's operator
(dali_ops.colour_backend), DALI's built-in operators do the colour steps (_builtin_colour).

The loader builds its pipeline once and feeds it each epoch's batches (the pipeline's external
source reads them from a ``_Feed``); it rebuilds it only after a decoder error. DALI's error does
not say which file failed, so the loader finds out (``_find_undecodable``), leaves those files
out (or raises BadImageFileError naming one) and resumes at the same position. ``close()`` (or
a ``with`` block) releases the pipeline and the reader threads.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from fmicl_engine.data.dali_ops import (BUILTIN, EXACT, colour_backend, dali_problem, dali_wheel,
                                       load_dali_ops)
from fmicl_engine.data.loader_state import EpochPositionState
from fmicl_engine.data.image_index import ImageIndex, header_size, one_line, report_bad_files
from fmicl_engine.data.recipe import (IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD,
                                      AugmentationRecipe)
from fmicl_engine.data.sampler import (BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewPairParams,
                                       sample_view_pairs, shard_indices)

DECODE_MODES = ("full", "slice")
_VIEW_FIELDS = ("roi_start", "roi_end", "flip", "brightness", "contrast", "saturation",
                "hue_shift", "order", "grayscale", "blur", "sigma", "blur_window", "solarize")
_COLOR_JITTER_ARGS = ("brightness", "contrast", "saturation", "hue_shift", "order", "grayscale")
NO_STEP = -1  # a jitter step that does nothing (fmicl.color_jitter's code)


def input_names(config: PipelineConfig) -> tuple[str, ...]:
    """The pipeline's inputs; "slice" decoding also reads the window both views lie in, and the
    built-in colour operators the hue shift in degrees."""
    window = ("window_start", "window_shape") if config.decode == "slice" else ()
    fields = _VIEW_FIELDS
    if config.colour == BUILTIN:  # fn.hsv takes degrees, not Pillow's 8-bit shift
        fields = tuple("hue_degrees" if name == "hue_shift" else name for name in fields)
    return ("encoded", "labels") + window + tuple(
        f"view{v}_{name}" for v in (1, 2) for name in fields)


def _dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"the DALI data pipeline needs NVIDIA DALI: pip install {dali_wheel()} "
            "(scripts/install.sh installs the one for torch's CUDA)") from err
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
        if config.colour == BUILTIN:  # fn.hsv's hue: degrees, one turn for a factor of 1
            out[prefix + "hue_degrees"] = np.ascontiguousarray(factors[:, 3] * np.float32(360))
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
    # EXACT: fn.fmicl.color_jitter; BUILTIN: DALI's built-in operators (dali_ops.colour_backend).
    colour: str = EXACT


_OUTPUT_DTYPES = {torch.float32: "FLOAT", torch.float16: "FLOAT16", torch.bfloat16: "FLOAT"}


# torchvision's solarize on uint8: values at or above the threshold are inverted.
_SOLARIZE_TABLE = [255 - v if v >= SOLARIZE_THRESHOLD else v for v in range(256)]


def _colour(x, p, fn, types, config: PipelineConfig):
    """ColorJitter in the sampled order and grayscale (fmicl.color_jitter, or DALI's built-in
    operators), blur, solarisation; uint8 HWC in and out."""
    if config.colour == EXACT:
        x = fn.fmicl.color_jitter(x, **{name: p(name) for name in _COLOR_JITTER_ARGS})
    else:
        x = _builtin_colour(x, p, fn, types, gpu=config.device == "gpu")
    if p("blur"):
        x = fn.gaussian_blur(x, sigma=p("sigma"), window_size=p("blur_window"))
    if p("solarize"):
        x = fn.lookup_table(x, keys=list(range(256)), values=_SOLARIZE_TABLE, dtype=types.UINT8)
    return x


def _luma(x, fn, types):
    """Pillow's convert("L") of uint8 RGB: (19595 R + 38470 G + 7471 B + 2^15) >> 16; int32 HW1."""
    xi = fn.cast(x, dtype=types.INT32)
    luma = (xi[:, :, 0] * 19595 + xi[:, :, 1] * 38470 + xi[:, :, 2] * 7471 + 32768) // 65536
    return fn.expand_dims(luma, axes=[2], new_axis_names="C")


def _blend(degenerate, x, factor, fn, types):
    """Pillow's Image.blend(degenerate, x, factor), as ImageEnhance uses it: degenerate +
    factor * (x - degenerate) in float, truncated and clipped to uint8."""
    from nvidia.dali import math as dmath

    y = degenerate + factor * (fn.cast(x, dtype=types.FLOAT) - degenerate)
    return fn.cast(dmath.clamp(dmath.floor(y), 0.0, 255.0), dtype=types.UINT8)


def _builtin_colour(x, p, fn, types, *, gpu: bool):
    """ColorJitter in the sampled order, then RandomGrayscale, from DALI's built-in operators
    (the fallback when fn.fmicl.color_jitter is unavailable; dali_ops.colour_backend).

    Brightness, contrast, saturation and grayscale follow Pillow's formulas (a blend with black,
    with the mean luma, with the luma; the luma itself) in DALI arithmetic, which may round
    differently where the compiler fuses a multiply-add; the hue is fn.hsv's rotation in YIQ
    space, not Pillow's 8-bit HSV shift. So the views are close to torchvision's, not bit-exact.
    Per-sample choices are DALI conditionals; the order comes from view_inputs ("order")."""
    from nvidia.dali import math as dmath

    def arg(name):  # a per-sample factor, on the device of the image for arithmetic
        node = p(name)
        return node.gpu() if gpu else node

    order = p("order")
    for position in range(4):
        step = order[position]
        if step == BRIGHTNESS:
            x = _blend(0.0, x, arg("brightness"), fn, types)
        elif step == CONTRAST:
            mean = fn.reductions.mean(fn.cast(_luma(x, fn, types), dtype=types.FLOAT))
            x = _blend(dmath.floor(mean + 0.5), x, arg("contrast"), fn, types)
        elif step == SATURATION:
            x = _blend(_luma(x, fn, types), x, arg("saturation"), fn, types)
        elif step == HUE:
            x = fn.hsv(x, hue=p("hue_degrees"))
    if p("grayscale"):
        luma = _luma(x, fn, types)
        x = fn.cast(fn.cat(luma, luma, luma, axis=2), dtype=types.UINT8)
    return x


def build_pipeline(source, config: PipelineConfig, batch_size: int, *, device_id: int | None,
                   build: bool = True):
    """The DALI pipeline: ``source(batch_info)`` returns the arrays named by input_names().
    ``device_id``: the CUDA device of a "gpu" pipeline (None without a GPU)."""
    fn, pipeline_def, types = _dali()
    if config.colour == EXACT:
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
            x = _colour(x, p, fn, types, config)
            views.append(fn.crop_mirror_normalize(
                x, mirror=p("flip"), output_layout="CHW", dtype=out_dtype,
                mean=[255.0 * m for m in IMAGENET_MEAN], std=[255.0 * s for s in IMAGENET_STD]))
        return views[0], views[1], named["labels"]

    pipe = two_views(batch_size=batch_size, num_threads=config.num_threads, device_id=device_id,
                     prefetch_queue_depth=config.prefetch, seed=0)
    if build:
        pipe.build()
    return pipe


def _dali_cause(error: Exception) -> str:
    """A DALI error's cause in one line, without the pipeline's traceback before it and the
    "no longer valid" lines after it."""
    text = str(error).split("encountered:", 1)[-1]
    cause = one_line(" ".join(line for line in text.splitlines() if "no longer valid" not in line))
    return cause.rstrip(" :") or f"{type(error).__name__}: {one_line(str(error))}"


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


class _BatchReader:
    """Everything the pipeline reads for one batch: encoded bytes, labels, view parameters.
    Reads overlap in threads (they release the GIL): one reader can starve a GPU decoder."""

    def __init__(self, index: ImageIndex, recipe: AugmentationRecipe, seed: int,
                 config: PipelineConfig, threads: int):
        self.index, self.recipe, self.seed, self.config = index, recipe, seed, config
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fmicl-read")

    def __call__(self, indices: np.ndarray, epoch: int) -> dict[str, object]:
        params = sample_view_pairs(indices, self.index.widths[indices],
                                   self.index.heights[indices], recipe=self.recipe,
                                   seed=self.seed, epoch=epoch)
        inputs = view_inputs(params, self.config)
        inputs["encoded"] = list(self.pool.map(
            lambda i: np.fromfile(self.index.paths[i], dtype=np.uint8), indices))
        inputs["labels"] = self.index.labels[indices]
        return inputs


class _Feed:
    """The pipeline's external source: the batches of the epoch being read, in order, then
    StopIteration, which ends DALI's epoch (``pipe.reset()`` starts the next one). It holds no
    reference to the loader, so that a dropped loader is collected (and closed) at once."""

    def __init__(self, read: _BatchReader, names: tuple[str, ...]):
        self.read, self.names = read, names
        self.batches: list[np.ndarray] = []
        self.epoch = 0

    def __call__(self, info):
        if info.iteration >= len(self.batches):
            raise StopIteration
        inputs = self.read(self.batches[info.iteration], self.epoch)
        return tuple(inputs[name] for name in self.names)


class DaliTwoViewLoader(EpochPositionState):
    """Yields ``(view1, view2, labels)`` per batch of this rank's share of each epoch.

    State: (epoch, position), see EpochPositionState. Files that fail to decode are skipped (or
    raise BadImageFileError, with ``on_bad_file="error"``) and listed in ``skipped_files``, with
    those the index skipped.

    The DALI pipeline is built at the first iteration and kept: each epoch feeds it that epoch's
    batches; a decoder error rebuilds it. One iteration at a time: starting a new one ends the
    previous one (which then raises if resumed). ``close()``, or leaving a ``with`` block,
    releases the pipeline and the file reader threads; a closed loader cannot iterate.
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
        self._closed = True  # until the reader threads exist: close() and __del__ are safe
        self.index = index
        self.recipe = recipe
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last
        self.on_bad_file = on_bad_file
        self.dtype = dtype
        self.epoch = 0
        self.position = 0
        self.shard_size()  # checks rank and world_size now rather than at the first batch
        device = "gpu" if device in ("gpu", "cuda") else "cpu"
        if (problem := dali_problem()) is not None:
            raise ImportError(f"the DALI data pipeline cannot run: {problem}")
        self.config = PipelineConfig(
            image_size=image_size, blur_window=recipe.blur_kernel_size(image_size),
            device=device, decode=decode, dtype=dtype, num_threads=num_threads,
            hue=(recipe.view1.hue > 0, recipe.view2.hue > 0), colour=colour_backend(device))
        self.skipped_files: list[str] = list(index.skipped)
        self._undecodable: set[int] = set()
        self._read = _BatchReader(index, recipe, seed, self.config, max(2, num_threads))
        self._feed = _Feed(self._read, input_names(self.config))
        self._pipe = None
        self._mid_epoch = False  # the pipeline was fed an epoch it has not finished
        self._generation = 0     # of the iteration in progress
        self.pipelines_built = 0
        self._closed = False

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

    # --- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Releases the DALI pipeline and shuts the reader threads down. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1  # an iteration in progress raises if resumed
        self._pipe = None
        self._read.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DaliTwoViewLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

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
        return self._read(indices, epoch)

    def _pipeline(self):
        """The pipeline, ready for a new epoch: built once (again after a decoder error)."""
        if self._pipe is not None and self._mid_epoch:
            self._end_epoch()
        if self._pipe is None:
            device_id = torch.cuda.current_device() if self.config.device == "gpu" else None
            self._pipe = build_pipeline(self._feed, self.config, self.batch_size,
                                        device_id=device_id)
            self.pipelines_built += 1
        return self._pipe

    def _end_epoch(self) -> None:
        """Ends DALI's epoch and resets the pipeline for the next one. After the last batch
        nothing is left to read; after an epoch left unfinished, the batches DALI read ahead
        (at most its prefetch depth) are decoded and dropped."""
        self._feed.batches = []  # DALI's next read of the feed ends its epoch
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except (RuntimeError, OSError):  # a decoder error in a dropped batch: start afresh
            self._pipe = None
        self._mid_epoch = False

    def _find_undecodable(self, plan, error: Exception) -> None:
        """After a decoder error: finds the culprits among the batches DALI may have started,
        leaves them out of the epoch, and reports them (report_bad_files). First from their
        headers (a file gone, replaced by another size or by content the decoder cannot read
        since it was indexed), else by decoding each alone in a one-sample copy of the pipeline
        (a corrupt body). Raises RuntimeError in one line when no file explains the error."""
        suspects = [int(i) for _, batch in list(plan)[: self.config.prefetch + 1] for i in batch]
        bad = [(i, reason) for i in suspects if (reason := self._header_problem(i))]
        if not bad:
            bad = self._decode_alone(suspects)
        if not bad:
            raise RuntimeError(f"the DALI pipeline failed although each file of its batches "
                               f"decodes alone: {_dali_cause(error)}") from error
        for i, _ in bad:
            self._undecodable.add(i)
            self.skipped_files.append(self.index.paths[i])
        report_bad_files([(self.index.paths[i], reason) for i, reason in bad], self.on_bad_file)

    def _header_problem(self, i: int) -> str:
        width, height, reason = header_size(self.index.paths[i])
        if reason:
            return reason
        indexed = (int(self.index.widths[i]), int(self.index.heights[i]))
        if (width, height) != indexed:  # its crops would lie outside the new image
            return (f"replaced since it was indexed ({width}x{height} now, {indexed[0]}x"
                    f"{indexed[1]} then; the next run indexes it again)")
        return ""

    def _decode_alone(self, suspects: list[int]) -> list[tuple[int, str]]:
        """(index, DALI's error) for each suspect that fails alone, with its own views, in a
        one-sample copy of the pipeline (rebuilt after each failure: DALI's is then invalid)."""
        feed = _Feed(self._read, input_names(self.config))
        feed.epoch = self.epoch
        device_id = torch.cuda.current_device() if self.config.device == "gpu" else None
        config = dataclasses.replace(self.config, prefetch=1)
        bad, pipe = [], None
        for i in suspects:
            if pipe is None:
                pipe = build_pipeline(feed, config, 1, device_id=device_id)
            feed.batches = [np.array([i])]
            try:
                while True:  # the sample, then the end of this one-batch epoch
                    pipe.run()
            except StopIteration:
                pipe.reset()
            except (RuntimeError, OSError) as err:
                bad.append((i, f"the image decoder failed: {_dali_cause(err)}"))
                pipe = None
        return bad

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._closed:
            raise RuntimeError("this DaliTwoViewLoader is closed")
        self._generation += 1
        return self._iterate(self._generation)

    def _iterate(self, generation: int):
        shard = shard_indices(len(self.index), seed=self.seed, epoch=self.epoch, rank=self.rank,
                              world_size=self.world_size, drop_last=self.drop_last)
        plan = self._plan(shard)
        while plan:
            if generation != self._generation:
                raise RuntimeError("this iteration over a DaliTwoViewLoader was ended by a newer "
                                   "one, or by close(); iterate one at a time")
            pipe = self._pipeline()
            self._feed.batches = [b for _, b in plan if len(b)]
            self._feed.epoch = self.epoch
            left = len(self._feed.batches)
            try:
                while plan:
                    if not len(plan[0][1]):  # every sample of this batch is undecodable
                        self.position = plan.popleft()[0]
                        continue
                    if generation != self._generation:
                        raise RuntimeError(
                            "this iteration over a DaliTwoViewLoader was ended by a newer one, "
                            "or by close(); iterate one at a time")
                    self._mid_epoch = True
                    view1, view2, labels = pipe.run()
                    self.position = plan.popleft()[0]
                    left -= 1
                    batch = (_to_torch(view1, self.dtype), _to_torch(view2, self.dtype),
                             _to_torch(labels, torch.int64))
                    if not left:  # the feed's last batch
                        self._end_epoch()
                    yield batch
            except (RuntimeError, OSError) as err:
                # A decoder error (RuntimeError) or a file gone since indexing (OSError, from the
                # reader): DALI cannot continue; find the files, rebuild the pipeline, go on.
                if generation != self._generation:
                    raise
                self._pipe, self._mid_epoch = None, False
                self._find_undecodable(plan, err)
                plan = self._plan(shard)
