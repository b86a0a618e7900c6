"""Data-pipeline benchmark: the C++ sampler's rate, and two-view images per second of the DALI
pipeline against the torchvision DataLoader, same recipe, resolution and threads, in one run.

    python engine/bench/data.py                       # CPU: sampler + 64 and 224 px
    python engine/bench/data.py --device gpu          # DALI mixed/GPU backend (needs a GPU)
    python engine/bench/data.py --images 2000 --sizes 224 --threads 8

The dataset is an ImageFolder of JPEGs (quality 90) cut from scikit-learn's two bundled photos,
resized to about ImageNet's typical shape (500 x 375 +-25%; --image-width/--image-height), written once
to --root (default: a folder under the system temp dir) and reused. Use --root on a real
ImageNet folder to measure that instead (it is only read). Each loader runs a warm-up pass over
--warmup batches (page cache, code paths), then times an epoch from its first batch to its end
(the steady-state rate); the start-up to the first batch is printed apart. A last DALI row runs
the recipe without hue jitter (decode=slice): the cost of torchvision's exact HSV hue shift.
Before the loaders, the colour operator alone (fn.fmicl.color_jitter) against torchvision's
ColorJitter + RandomGrayscale on PIL images, one thread, same images and parameters.

Without DALI (or without fmicl-engine's DALI operators) the DALI rows and the colour operator
read "not run" with the reason, and the torchvision rows are still measured. A DALI row that
fails where DALI is installed reads "error" and the exit status is 1. --json appends one line
per measurement; --markdown writes the tables (scripts/gpu_check.sh puts them in its report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from report import shown_command  # noqa: E402  (engine/bench/report.py, beside this script)

from fmicl_engine.data import build_image_index, sample_view_pairs
from fmicl_engine.data.dali_pipeline import DaliTwoViewLoader
from fmicl_engine.data.recipe import resolve_recipe
from fmicl_engine.data.synthetic import make_image_folder
from fmicl_engine.data.torchvision_reference import TorchvisionTwoViewLoader


def bench_sampler(recipe, n: int, threads: int) -> float:
    """Views per second of sample_view_pairs on n samples (2n views)."""
    rng = np.random.default_rng(0)
    indices = rng.permutation(n)
    widths, heights = rng.integers(200, 1000, n), rng.integers(200, 1000, n)
    sample_view_pairs(indices[:1000], widths[:1000], heights[:1000], recipe=recipe, seed=0, epoch=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sample_view_pairs(indices, widths, heights, recipe=recipe, seed=0, epoch=0,
                          num_threads=threads)
        best = min(best, time.perf_counter() - start)
    return 2 * n / best


def bench_colour(index, size: int, device: str, batch: int = 32) -> tuple[float, float]:
    """(ms per view of fn.fmicl.color_jitter, of torchvision's ColorJitter + RandomGrayscale on
    PIL images) on one thread, the same images and parameters: all four jitter steps in random
    orders, SimCLR's factor ranges, grayscale on one view in five."""
    from nvidia.dali import fn, pipeline_def
    from PIL import Image

    from fmicl_engine.data.dali_ops import load_dali_ops
    from fmicl_engine.data.dali_pipeline import hue_shifts
    from fmicl_engine.data.torchvision_reference import colour_jitter

    load_dali_ops(device)
    rng = np.random.default_rng(0)
    images = [np.asarray(Image.open(index.paths[k % len(index)]).convert("RGB")
                         .resize((size, size), Image.BILINEAR)) for k in range(batch)]
    factors = rng.uniform(0.6, 1.4, (batch, 3)).astype(np.float32)
    hue = rng.uniform(-0.1, 0.1, batch).astype(np.float32)
    args = dict(brightness=list(factors[:, 0]), contrast=list(factors[:, 1]),
                saturation=list(factors[:, 2]), hue_shift=list(hue_shifts(hue).astype(np.int32)),
                order=[rng.permutation(4).astype(np.int32) for _ in range(batch)],
                grayscale=list(rng.random(batch) < 0.2))

    @pipeline_def(batch_size=batch, num_threads=1, device_id=0 if device == "gpu" else None)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC", device=device)
        named = {k: fn.external_source(source=(lambda v: lambda: v)(v), batch=True)
                 for k, v in args.items()}
        return fn.fmicl.color_jitter(x, **named)

    built = pipe()
    built.build()
    built.run()
    start, runs = time.perf_counter(), 5
    for _ in range(runs):
        built.run()
    ours = (time.perf_counter() - start) / (runs * batch)

    pil = [Image.fromarray(image) for image in images]
    start = time.perf_counter()
    for k, image in enumerate(pil):
        colour_jitter(image, args["order"][k], [*factors[k], hue[k]], args["grayscale"][k])
    reference = (time.perf_counter() - start) / batch
    return 1e3 * ours, 1e3 * reference


def time_epoch(loader, warmup: int) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds from it to the end, images after it) of one epoch,
    after `warmup` batches of a previous pass. Steady-state rate = images / seconds: per-epoch
    start-up (DALI pipeline construction, DataLoader worker start) is reported apart."""
    loader.set_epoch(0)
    for k, _ in enumerate(loader):
        if k + 1 >= warmup:
            break
    loader.set_epoch(1)
    images, first = 0, None
    start = time.perf_counter()
    for view1, _, labels in loader:
        if view1.is_cuda:
            torch.cuda.synchronize()
        if first is None:
            first = time.perf_counter()
        else:
            images += len(labels)
    if first is None or images == 0:
        raise RuntimeError("the epoch has fewer than two batches: raise --images or lower --batch-size")
    return first - start, time.perf_counter() - first, images


def dali_missing(device: str) -> str | None:
    """Why the DALI rows cannot run here, or None."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return f"DALI is not installed ({err})"
    if device == "gpu" and not torch.cuda.is_available():
        return "no GPU"
    return None


def _make_class(job) -> None:
    root, c, count, size = job
    part = Path(root) / f".part_{c}"
    shutil.rmtree(part, ignore_errors=True)
    make_image_folder(part, num_classes=1, per_class=count, size=size, size_spread=0.25, seed=c)
    (part / "class_0").rename(Path(root) / f"class_{c}")
    part.rmdir()


def write_image_folder(root: str, images: int, size: tuple[int, int], classes: int = 4) -> None:
    """``images`` JPEGs in ``classes`` folders, one process per class (up to the cores)."""
    os.makedirs(root, exist_ok=True)
    per_class = max(1, images // classes)
    print(f"# writing {classes * per_class} JPEGs to {root}", flush=True)
    workers = max(1, min(classes, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make_class, [(root, c, per_class, size) for c in range(classes)]))




class Report:
    """Printed lines, and the same measurements as JSON lines and Markdown tables."""

    def __init__(self, args):
        self.args, self.json_rows, self.colour, self.loaders, self.notes = args, [], [], [], []

    def add(self, kind: str, **row) -> None:
        row = {"kind": kind, **row}
        self.json_rows.append(row)
        if self.args.json:
            with open(self.args.json, "a") as out:
                out.write(json.dumps(row) + "\n")

    def write_markdown(self, header: list[str]) -> None:
        if not self.args.markdown:
            return
        lines = [f"`{shown_command('data.py', sys.argv[1:])}`", "", *header, ""]
        if self.colour:
            lines += ["| px | fn.fmicl.color_jitter ms/view | torchvision on PIL ms/view | ratio |",
                      "|---|---|---|---|", *self.colour, ""]
        lines += ["| px | loader | two-view images/s | vs torchvision | start-up s |",
                  "|---|---|---|---|---|", *self.loaders, ""]
        lines += [f"- {note}" for note in self.notes]
        with open(self.args.markdown, "w") as out:
            out.write("\n".join(lines).rstrip() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fmicl_bench_data"))
    parser.add_argument("--images", type=int, default=1024, help="images to generate")
    parser.add_argument("--image-width", type=int, default=500)
    parser.add_argument("--image-height", type=int, default=375)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--threads", type=int, default=2,
                        help="DALI threads = DataLoader workers = sampler threads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--recipe", default="simclr")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="batches before the timed epoch")
    parser.add_argument("--sampler-samples", type=int, default=1_000_000)
    parser.add_argument("--no-colour", action="store_true", help="skip the colour operator's timing")
    parser.add_argument("--json", help="append one JSON line per measurement to this file")
    parser.add_argument("--markdown", help="write the tables to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; workers do the work
    recipe = resolve_recipe(args.recipe)
    report = Report(args)
    failures = 0

    print(f"# torch {torch.__version__}, {os.cpu_count()} CPUs visible, recipe {recipe.name}")
    one = bench_sampler(recipe, args.sampler_samples, 1)
    many = bench_sampler(recipe, args.sampler_samples, args.threads)
    sampler = (f"sampler: {one / 1e6:.2f} M views/s on 1 thread, {many / 1e6:.2f} M views/s on "
               f"{args.threads} threads ({args.sampler_samples:,} samples x 2 views)")
    print(sampler)
    report.add("sampler", samples=args.sampler_samples, views_per_s_1_thread=one,
               threads=args.threads, views_per_s=many)

    if not os.path.isdir(args.root) or not any(e.is_dir() for e in os.scandir(args.root)):
        write_image_folder(args.root, args.images, (args.image_width, args.image_height))
    index = build_image_index(root=args.root)
    setting = (f"{len(index)} images, median {int(np.median(index.widths))} x "
               f"{int(np.median(index.heights))}, batch {args.batch_size}, {args.threads} threads, "
               f"DALI device {args.device}")
    print("# " + setting)
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "gpu" and torch.cuda.is_available() else ""
    header = [f"torch {torch.__version__}, {os.cpu_count()} CPUs{gpu}, recipe {recipe.name}; {setting}.",
              "", sampler + "."]
    missing = dali_missing(args.device)
    if missing:
        print(f"DALI rows not run: {missing}")
        report.notes.append(f"DALI rows not run: {missing}.")

    for size in args.sizes:
        if missing or args.no_colour:
            break
        try:
            ours, reference = bench_colour(index, size, args.device)
        except Exception as err:  # noqa: BLE001  (the operators may be missing; the loaders still run)
            why = str(err).splitlines()[0][:200]
            print(f"colour operator not timed: {why}")
            report.notes.append(f"fn.fmicl.color_jitter not timed: {why}")
            break
        print(f"colour jitter + grayscale, {size} px, 1 thread: fn.fmicl.color_jitter "
              f"({args.device}) {ours:.3f} ms/view, torchvision on PIL {reference:.3f} ms/view "
              f"({reference / ours:.1f}x)", flush=True)
        report.add("colour", image_size=size, device=args.device, ours_ms_per_view=ours,
                   torchvision_ms_per_view=reference)
        report.colour.append(f"| {size} | {ours:.3f} ({args.device}) | {reference:.3f} | {reference / ours:.1f}x |")

    print(f"{'size':>5} {'loader':<26} {'img/s':>8} {'vs torchvision':>15} {'start-up s':>11}")
    for size in args.sizes:
        common = dict(image_size=size, batch_size=args.batch_size, seed=0)
        startup, seconds, images = time_epoch(TorchvisionTwoViewLoader(
            index, recipe=recipe, num_workers=args.threads, **common), args.warmup)
        reference = images / seconds
        label = f"torchvision DataLoader ({args.threads} workers)"
        print(f"{size:>5} {'torchvision DataLoader':<26} {reference:>8.0f} {1.0:>14.2f}x "
              f"{startup:>11.2f}", flush=True)
        report.add("loader", image_size=size, loader="torchvision", images_per_s=reference, startup_s=startup)
        report.loaders.append(f"| {size} | {label} | {reference:.0f} | 1.00x | {startup:.2f} |")
        no_hue = dataclasses.replace(recipe, view1=dataclasses.replace(recipe.view1, hue=0.0),
                                     view2=dataclasses.replace(recipe.view2, hue=0.0))
        for label, decode, dali_recipe in (("decode=full", "full", recipe),
                                           ("decode=slice", "slice", recipe),
                                           ("slice, hue=0", "slice", no_hue)):
            name = f"DALI {args.device} {label}"
            if missing:
                report.loaders.append(f"| {size} | {name} | not run | — | — |")
                continue
            try:
                loader = DaliTwoViewLoader(index, device=args.device, num_threads=args.threads,
                                           decode=decode, recipe=dali_recipe, **common)
                startup, seconds, images = time_epoch(loader, args.warmup)
            except Exception as err:  # noqa: BLE001  (reported; the exit status says it failed)
                why = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                print(f"{size:>5} {name:<26} error: {why}", flush=True)
                report.loaders.append(f"| {size} | {name} | error | — | — |")
                report.notes.append(f"{name}, {size} px: {why}")
                failures += 1
                continue
            rate = images / seconds
            print(f"{size:>5} {name:<26} {rate:>8.0f} {rate / reference:>14.2f}x {startup:>11.2f}", flush=True)
            report.add("loader", image_size=size, loader=name, images_per_s=rate,
                       vs_torchvision=rate / reference, startup_s=startup)
            report.loaders.append(f"| {size} | {name} | {rate:.0f} | {rate / reference:.2f}x | {startup:.2f} |")
    report.notes.append("two-view images/s: images (each two augmented views) per second over one epoch "
                        f"after {args.warmup} warm-up batches; start-up: to the epoch's first batch.")
    report.write_markdown(header)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
