"""Training-loop benchmark: images per second, time per step, data-wait share and peak GPU memory
of f-MICL pretraining (configs/imagenet_kl.toml: ResNet-50, bf16, channels_last by default),
read from the run's metrics.jsonl after the warm-up steps.

    python engine/bench/train.py                          # GPU: resnet50, bf16, 256 images/GPU, 300 steps
    python engine/bench/train.py --nproc 8                # 8 GPUs under torchrun (global batch 2048)
    python engine/bench/train.py --data synthetic         # model + loss + optimiser alone
    python engine/bench/train.py --precision fp32 --no-channels-last --steps 100
    python engine/bench/train.py --smoke                  # CPU smoke: resnet18, 64 px, batch 8, 3 steps

Two modes (--data; auto = imagefolder when DALI and fmicl-engine's DALI operators load, else
synthetic):

  imagefolder  The engine end to end: `fmicl-engine run configs/imagenet_kl.toml` in a subprocess
               (under torchrun when --nproc > 1) on an ImageFolder tree of --images JPEGs cut from
               scikit-learn's two bundled photographs, ImageNet-sized (about 500 x 375), written
               once under --image-root and reused. DALI decodes and augments on the GPU
               (data.imagefolder.device = gpu) when its GPU backend and the FMICL_CUDA=ON DALI
               operators are there, else on the CPU. Measures what a run gets: reading, decoding,
               augmentation, the copy to the device, forward and backward of both views, the loss,
               the optimiser, DDP's all-reduce, logging. Figures from the engine's metrics.jsonl.
  synthetic    No data pipeline: the model, loss, optimiser and training step of the same config
               (the engine's PretrainingObjective: both views as one batch under autocast, loss in
               float32; LARS with the config's warm-up lr) fed random tensors already on the
               device. Measures the compute ceiling of one process: what imagefolder approaches
               when data loading keeps up (data wait 0). One process; timed by CUDA events (the
               wall clock on CPU); peak memory is torch.cuda.max_memory_allocated (it includes
               two input batches, 0.6 GiB at 256 x 224 px). Writes the engine's metrics.jsonl
               lines, so both modes are summarised alike.

images/s counts images (each one two views), over all processes, in the windows after --warmup
steps (the first windows hold cuDNN autotuning, torch.compile and the DALI pipeline's start).
TFLOP/s: model FLOPs (3 x the forward's, counted by torch.utils.flop_counter, x 2 views) per
image times images/s, per process. Each invocation appends its row to OUT/results.jsonl; the run
folders under OUT are replaced by a rerun with the same settings.

On a machine without a GPU, unset sizes take the smoke values (--smoke).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime (see loss.py)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGENET_TRAIN_IMAGES = 1_281_167  # the synthetic mode follows the lr schedule of an ImageNet epoch
GPU_DEFAULTS = dict(arch="resnet50", steps=300, batch_size=256, image_size=224)
SMOKE = dict(arch="resnet18", steps=3, batch_size=8, image_size=64, images=64)
PHOTO_SIZE = (500, 375)  # ImageNet's typical JPEG (width, height); each side varies +-25%


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "imagenet_kl.toml"))
    p.add_argument("--data", choices=("auto", "imagefolder", "synthetic"), default="auto")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) under torchrun; imagefolder only")
    p.add_argument("--arch", help=f"default {GPU_DEFAULTS['arch']} ({SMOKE['arch']} on CPU)")
    p.add_argument("--steps", type=int, help=f"default {GPU_DEFAULTS['steps']} ({SMOKE['steps']} on CPU)")
    p.add_argument("--batch-size", type=int,
                   help=f"images per process and step (global = this x nproc); default {GPU_DEFAULTS['batch_size']}")
    p.add_argument("--image-size", type=int, help=f"view resolution; default {GPU_DEFAULTS['image_size']}")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile the encoder")
    p.add_argument("--images", type=int, help="JPEGs in the generated tree (default: 32 global batches, "
                   "at least 8192, so that epochs are long)")
    p.add_argument("--image-root", default=os.path.join(tempfile.gettempdir(), "fmicl_bench_train_images"),
                   help="where generated trees are cached (one subfolder per size)")
    p.add_argument("--threads", type=int, help="DALI threads per process (default: cores / nproc, at most 8)")
    p.add_argument("--warmup", type=int, help="steps left out of the figures (default: steps / 5, at most 50, "
                   "at least 1; rounded up to whole logging windows)")
    p.add_argument("--log-every", type=int, help="steps per metrics line (default: steps / 30, 1 to 10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="further config overrides; repeatable")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "fmicl_bench_train"))
    p.add_argument("--smoke", action="store_true", help="the tiny CPU sizes: " + ", ".join(
        f"{k}={v}" for k, v in SMOKE.items()))
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    smoke = args.smoke or args.device == "cpu"
    for key, value in (SMOKE if smoke else GPU_DEFAULTS).items():
        if getattr(args, key) is None:  # what the command line sets stays
            setattr(args, key, value)
    if args.nproc < 1 or args.steps < 1 or args.batch_size < 1:
        p.error("--nproc, --steps and --batch-size must be positive")
    args.global_batch = args.batch_size * args.nproc
    if args.images is None:
        args.images = max(8192, 32 * args.global_batch)
    if args.images < args.global_batch:
        p.error(f"--images {args.images} is less than one global batch ({args.global_batch})")
    if args.threads is None:
        args.threads = max(1, min(8, (os.cpu_count() or 1) // args.nproc))
    if args.log_every is None:
        args.log_every = max(1, min(10, args.steps // 30))
    if args.warmup is None:
        args.warmup = max(1, min(50, args.steps // 5))
    args.warmup = math.ceil(args.warmup / args.log_every) * args.log_every
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} (in whole windows of --log-every {args.log_every}) leaves no "
                f"measured step of --steps {args.steps}")
    return args


def dali_device(cuda: bool) -> tuple[str | None, str]:
    """("gpu" | "cpu" | None, why): where the engine's DALI pipeline can run here."""
    try:
        import nvidia.dali  # noqa: F401

        from fmicl_engine.data.dali_ops import load_dali_ops
    except ImportError as err:
        return None, f"DALI is not importable ({err})"
    why = ""
    if cuda:
        try:
            load_dali_ops("gpu")
            return "gpu", "DALI GPU backend"
        except Exception as err:  # ImportError naming the rebuild, or the plugin failing to load
            why = f"no GPU DALI backend ({err}); "
    try:
        load_dali_ops("cpu")
    except Exception as err:
        return None, why + f"fmicl-engine's DALI operators do not load ({err})"
    return "cpu", why + "DALI CPU backend"


# ---------------------------------------------------------------------------------------------
# Data: an ImageFolder tree of ImageNet-sized JPEGs, generated once
# ---------------------------------------------------------------------------------------------


def _make_class(job) -> None:
    from fmicl_engine.data.synthetic import make_image_folder

    root, c, count = job
    part = Path(root) / f".part_{c}"
    shutil.rmtree(part, ignore_errors=True)
    make_image_folder(part, num_classes=1, per_class=count, size=PHOTO_SIZE, size_spread=0.25, seed=c)
    (part / "class_0").rename(Path(root) / f"class_{c:03d}")
    part.rmdir()


def image_tree(base: str, images: int) -> Path:
    """``base/n<images>_<w>x<h>``: ``images`` JPEGs in 10 classes, made in parallel, cached."""
    root = Path(base) / f"n{images}_{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}"
    done = root / "complete.json"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    classes = min(10, images)
    counts = [images // classes + (c < images % classes) for c in range(classes)]
    workers = max(1, min(classes, (os.cpu_count() or 1)))
    start = time.perf_counter()
    print(f"writing {images} JPEGs (~{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}) to {root} with {workers} processes ...",
          file=sys.stderr, flush=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make_class, [(str(root), c, n) for c, n in enumerate(counts)]))
    done.write_text(json.dumps({"images": images, "size": PHOTO_SIZE}) + "\n")
    print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return root


# ---------------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------------


def toml(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def overrides(args, *, mode: str, root: Path, dali: str | None, epochs: int) -> list[str]:
    values = {
        "run.device": args.device,
        "model.arch": args.arch,
        "train.batch_size": args.global_batch,
        "train.epochs": epochs,
        "train.max_steps": args.steps,
        "train.log_every": args.log_every,
        "train.precision": args.precision,
        "train.channels_last": args.channels_last,
        "train.compile": args.compile,
        "train.checkpoint": False,  # a checkpoint's write is no part of a step's cost
        "eval.linear_probe": False,
        "data.dataset": "imagefolder",
        "data.imagefolder.root": str(root),
        "data.imagefolder.image_size": args.image_size,
        "data.imagefolder.num_threads": args.threads,
        "data.imagefolder.device": dali if mode == "imagefolder" else "cpu",
    }
    return [f"{k}={toml(v)}" for k, v in values.items()] + list(args.overrides)


def fresh_run_dir(path: Path) -> Path:
    """An empty folder at ``path``; an old one is removed only if it holds a run's files."""
    if path.exists():
        if not (path / "config.toml").exists() and not (path / "metrics.jsonl").exists() and any(path.iterdir()):
            sys.exit(f"{path} exists and holds no benchmark run: choose another --out")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------------------
# imagefolder: the engine itself
# ---------------------------------------------------------------------------------------------


def run_engine(args, run_dir: Path, sets: list[str]) -> None:
    from fmicl_engine.cli.main import build_parser

    cli = ["-m", "fmicl_engine.cli.main", "run", args.config, "--out", str(run_dir)]
    try:  # no progress bar in a benchmark log, where the option exists
        build_parser().parse_args(["run", args.config, "--no-progress"])
        cli.append("--no-progress")
    except SystemExit:
        pass
    for s in sets:
        cli += ["--set", s]
    if args.nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", *cli]
    else:
        command = [sys.executable, *cli]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=subprocess.DEVNULL)  # stdout: the results JSON; stderr: the log
    if done.returncode != 0:
        sys.exit(f"the engine failed (exit status {done.returncode}); its log is above")


# ---------------------------------------------------------------------------------------------
# synthetic: the engine's step on random tensors
# ---------------------------------------------------------------------------------------------


class _Objective(torch.nn.Module):
    """The engine's step where fmicl_engine.train.loop.PretrainingObjective is absent: both views
    as one batch under autocast, the loss in float32."""

    def __init__(self, model, loss_fn, precision, device):
        super().__init__()
        self.model, self.loss_fn, self.device_type = model, loss_fn, device.type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def forward(self, view1, view2):
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            _, z = self.model(torch.cat([view1, view2]))
        z1, z2 = z.float().chunk(2)
        return self.loss_fn(z1, z2)


def build_parts(cfg, device: torch.device | str):
    """(model, loss, objective) of ``cfg`` as the engine builds them, for one process."""
    from fmicl_engine.config.loader import engine_loss_arguments
    from fmicl_engine.loss import build_loss
    from fmicl_engine.models import build_model

    accepted = inspect.signature(build_model).parameters
    model_args = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k in accepted and k != "arch"}
    model = build_model(cfg.model.arch, in_channels=3, **model_args)
    extra = (engine_loss_arguments(cfg.loss.name, cfg, 1)
             if len(inspect.signature(engine_loss_arguments).parameters) > 2
             else engine_loss_arguments(cfg.loss.name, cfg))
    loss_fn = build_loss(cfg.loss.name, **cfg.loss.kwargs(), **extra)
    if str(device) == "meta":
        return model, loss_fn, None
    model, loss_fn = model.to(device), loss_fn.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.encoder.compile()
    try:
        from fmicl_engine.train.loop import PretrainingObjective as objective_class
    except ImportError:
        objective_class = _Objective
    return model, loss_fn, objective_class(model, loss_fn, cfg.train.precision, torch.device(device))


class WindowTimer:
    """Seconds per logging window: CUDA events around the window's work, or the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start()

    def start(self) -> None:
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.begin = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            seconds = self.begin.elapsed_time(end) / 1e3
        else:
            seconds = time.perf_counter() - self.begin
        self.start()
        return seconds


def run_synthetic(args, cfg, run_dir: Path) -> None:
    from fmicl_engine.train.optim import build_optimizer
    from fmicl_engine.train.schedule import learning_rate

    device = torch.device(args.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    model, loss_fn, objective = build_parts(cfg, device)
    optimizer = build_optimizer(cfg.optim, [model, loss_fn])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    # The lr of the first steps of the config's ImageNet schedule (LARS at its full lr on random
    # inputs could overflow the loss, which stops a run).
    steps_per_epoch = max(1, IMAGENET_TRAIN_IMAGES // args.global_batch)
    total = max(cfg.train.epochs * steps_per_epoch, args.steps + 1)
    warmup = min(round(cfg.optim.warmup_epochs * steps_per_epoch), total)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    b, s = args.batch_size, args.image_size
    # Two input sets in turn; normal noise (never zeros: they can run faster than real data).
    inputs = [[torch.randn(b, 3, s, s, device=device).contiguous(memory_format=layout) for _ in range(2)]
              for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_sum, window_steps = torch.zeros((), dtype=torch.float64, device=device), 0
    timer = WindowTimer(device)
    with open(run_dir / "metrics.jsonl", "w") as metrics:
        for step in range(args.steps):
            lr = learning_rate(step, base_lr=cfg.optim.lr, warmup_steps=warmup, total_steps=total,
                               min_lr=cfg.optim.lr * cfg.optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            view1, view2 = inputs[step % 2]
            loss = objective(view1, view2)
            if isinstance(loss, tuple):  # (loss, features for the online probe): the engine's objective
                loss = loss[0]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            window_steps += 1
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
                seconds = timer.lap()
                line = {"step": step + 1, "epoch": 0, "loss": loss_sum.item() / window_steps, "lr": lr,
                        "images_per_s": round(window_steps * b / max(seconds, 1e-9), 4),
                        "data_wait_fraction": 0.0}
                if device.type == "cuda":
                    line["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 4)
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
                print(f"  step {step + 1}: {line['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
                loss_sum.zero_()
                window_steps = 0
                timer.start()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def summarise(metrics_path: Path, *, warmup: int, global_batch: int) -> dict:
    """Images/s over the windows after ``warmup`` steps (total images / total time), the
    time-weighted data-wait fraction, and the largest peak memory any line reports."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    images = seconds = waiting = 0.0
    measured, previous, peak = [], 0, None
    for line in lines:
        steps, previous = line["step"] - previous, line["step"]
        if "peak_gpu_mem_gib" in line:
            peak = max(peak or 0.0, line["peak_gpu_mem_gib"])
        if line["step"] <= warmup:
            continue
        rate = line.get("images_per_s", line.get("samples_per_s"))
        window_images = steps * global_batch
        window_seconds = window_images / rate
        images, seconds = images + window_images, seconds + window_seconds
        waiting += line.get("data_wait_fraction", 0.0) * window_seconds
        measured.append(line["step"])
    if not measured:
        sys.exit(f"{metrics_path}: no metrics line after the {warmup} warm-up steps "
                 f"({len(lines)} lines): raise --steps or lower --warmup")
    return {"images_per_s": images / seconds, "ms_per_step": 1e3 * seconds * global_batch / images,
            "data_wait_fraction": waiting / seconds, "peak_gpu_mem_gib": peak,
            "measured_steps": f"{warmup + 1}-{measured[-1]}", "windows": len(measured)}


def model_flops_per_image(cfg, image_size: int) -> float | None:
    """3 x the forward FLOPs of one view (forward + backward), x 2 views; None if uncountable."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            model, _, _ = build_parts(cfg, "meta")
            x = torch.empty(2, 3, image_size, image_size)
        with FlopCounterMode(display=False) as counter:
            model.eval()(x)  # (eval: a projector's BatchNorm1d refuses one sample in training)
        return 2 * 3 * counter.get_total_flops() / 2
    except Exception:  # a counting failure must not lose the measurement
        return None


def fmt(x, spec: str = "") -> str:
    if x is None:
        return "—"
    if spec == "%":
        return f"{100 * x:.1f}%"
    return format(x, spec) if spec else str(x)


COLUMNS = [("mode", "mode", ""), ("data", "data", ""), ("device", "device", ""), ("arch", "arch", ""),
           ("precision", "prec", ""), ("channels_last", "NHWC", ""), ("compile", "compile", ""),
           ("batch_per_process", "batch/proc", ""), ("nproc", "procs", ""), ("image_size", "px", ""),
           ("measured_steps", "steps timed", ""), ("images_per_s", "images/s", ".1f"),
           ("ms_per_step", "ms/step", ".1f"), ("data_wait_fraction", "data wait", "%"),
           ("peak_gpu_mem_gib", "peak GiB", ".2f"), ("tflops_per_process", "TFLOP/s/proc", ".3g")]


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the columns of print_table)."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row.get(key), spec) for key, _, spec in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict]) -> None:
    cells = [[fmt(row.get(key), spec) for key, _, spec in COLUMNS] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(COLUMNS)]
    print("  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = parse_args(argv)
    from fmicl_engine.config import ConfigError, load_config

    mode, dali, why = args.data, None, ""
    if mode in ("auto", "imagefolder"):
        dali, why = dali_device(args.device == "cuda")
        if dali is None and mode == "imagefolder":
            sys.exit(f"--data imagefolder: {why}")
        mode = "imagefolder" if dali else "synthetic"
    if mode == "synthetic" and args.nproc != 1:
        sys.exit("--data synthetic runs one process; --nproc is for imagefolder")
    if args.device == "cuda" and args.nproc > torch.cuda.device_count():
        sys.exit(f"--nproc {args.nproc} > {torch.cuda.device_count()} visible GPUs")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (f"{mode}-{args.arch}-{args.precision}{'-nhwc' if args.channels_last else ''}"
           f"{'-compile' if args.compile else ''}-b{args.batch_size}x{args.nproc}-{args.image_size}px")
    if mode == "imagefolder":
        root = image_tree(args.image_root, args.images)
        steps_per_epoch = (args.images // args.nproc) // args.batch_size
        epochs = math.ceil(args.steps / steps_per_epoch)
    else:
        root, epochs = out, 1  # the config needs an existing root; nothing reads it
    sets = overrides(args, mode=mode, root=root, dali=dali, epochs=epochs)
    try:
        cfg = load_config(args.config, sets)
    except ConfigError as err:
        sys.exit(f"config error: {err}")

    print(f"train benchmark: {mode} ({why or 'requested'}), torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, config {args.config}",
          file=sys.stderr, flush=True)
    run_dir = fresh_run_dir(out / tag)
    if mode == "imagefolder":
        run_engine(args, run_dir, sets)
    else:
        run_synthetic(args, cfg, run_dir)

    figures = summarise(run_dir / "metrics.jsonl", warmup=args.warmup, global_batch=args.global_batch)
    flops = model_flops_per_image(cfg, args.image_size)
    row = {"mode": mode, "data": {"imagefolder": f"DALI {dali}", "synthetic": "random tensors"}[mode],
           "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "arch": args.arch, "precision": args.precision, "channels_last": args.channels_last,
           "compile": args.compile, "batch_per_process": args.batch_size, "nproc": args.nproc,
           "image_size": args.image_size, "steps": args.steps, "warmup_steps": args.warmup, **figures,
           "tflops_per_process": (flops * figures["images_per_s"] / args.nproc / 1e12) if flops else None,
           "model_gflop_per_image": flops / 1e9 if flops else None,
           "torch": torch.__version__, "run_dir": str(run_dir), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(out / "results.jsonl", "a") as results:
        results.write(json.dumps(row) + "\n")
    print_table([row])


if __name__ == "__main__":
    main()
