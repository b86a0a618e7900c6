"""Where a training step's time goes: ``fmicl-engine profile CONFIG`` (``profile(cfg, ...)``).

The profiler builds what ``run`` builds (the config's data pipeline, model, loss, objective,
optimiser; DDP under torchrun) and times the run's own step (``loop.train_step``) two ways:

- **in the step**: after ``warmup`` steps, ``steps`` plain steps and ``steps`` instrumented ones,
  alternated so that both meet the same machine load. Hooks on the model, the loss and the
  optimiser mark the parts' boundaries inside the instrumented steps: data wait, host-to-device
  copy, encoder forward (encoder + projector, under autocast), loss forward + backward, encoder
  backward (with DDP's gradient all-reduce and clipping), optimiser step, and what remains
  (the online probe, zero_grad, casts) as "other". The step's time and its data wait come from
  the plain steps; the parts' sum is checked against it.
- **alone**: each part by itself, ``steps`` times after two untimed calls: the data pipeline
  (batches from the loader, nothing else; two-view images/s), the copy of one batch, the encoder
  forward, the loss forward + backward on the projections of a real batch, the encoder backward
  from a fixed gradient, the optimiser step; under torchrun also the distributed loss's
  all-gather (forward) and reduce-scatter (backward) of the projections.

Timing: on a GPU, CUDA events recorded without a synchronisation and read once at the end (the
"data wait" is then the time the GPU idles for data); on the CPU, the wall clock. Figures are
medians over steps with their 10th-90th percentile spread; peak GPU memory per part (the
allocator's peak, read and reset at each mark, a host-side counter: no sync). Under torchrun each
rank measures itself; rank 0 prints and writes the per-rank figures and the aggregate (images/s
of the job from the slowest rank's step).

The verdict names the bottleneck in one sentence: data-bound when the loader alone delivers fewer
images/s than the step's compute needs, or the step waits for data more than 10% of its time;
otherwise the largest share among the model (forward + backward), the loss, the optimiser, the
copy and the rest.

``--trace`` records a few more steps with torch.profiler into ``DIR/trace/rank<r>.pt.trace.json``
(Chrome trace format: Perfetto, chrome://tracing, TensorBoard's profiler plugin).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from fmicl_engine.config import Config, ConfigError
from fmicl_engine.data import TrainingData, build_training_data
from fmicl_engine.atomic_files import write_text_atomically
from fmicl_engine.train.distributed import DistContext, gather_objects, init_distributed, shutdown
from fmicl_engine.train.loop import Session, build_session, train_step
from fmicl_engine.train.prefetch import Prefetcher

# Parts of a step, in its order; each is timed in the step, all but data_wait and other also alone.
PARTS = ("data_wait", "host_to_device", "forward", "loss", "backward", "optimizer", "other")
PART_NAMES = {"data_wait": "data wait", "host_to_device": "host-to-device copy", "forward": "encoder forward",
              "loss": "loss forward+backward", "backward": "encoder backward", "optimizer": "optimiser step",
              "other": "other (probe, zero_grad, casts)", "data": "data pipeline (one batch)",
              "all_gather": "loss all-gather", "reduce_scatter": "loss reduce-scatter"}
DATA_BOUND_WAIT = 0.10  # a step that waits for data longer than this share of its time is data-bound
TRACE_STEPS = 3
MAX_STEPS = 100_000  # medians need no more; the timings are held in memory


class Clock:
    """CUDA events on a GPU (recorded without a sync, read after ``wait``), else the wall clock."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def peak_gib(self) -> float | None:
        """The allocator's peak since the last call, then reset (host-side counters: no sync)."""
        if not self.cuda:
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        torch.cuda.reset_peak_memory_stats(self.device)
        return peak


class StepMarks:
    """Marks the boundaries of a step's parts from hooks on the model, the loss and the optimiser,
    while ``marks`` is a dict (an instrumented step); the hooks do nothing otherwise."""

    def __init__(self, s: Session, clock: Clock):
        self.clock = clock
        self.marks: dict[str, Any] | None = None
        self.peaks: dict[str, float | None] = {}
        self._handles = [
            s.model.register_forward_pre_hook(lambda module, args: self.mark("forward_start")),
            s.model.register_forward_hook(self._model_done),
            s.loss_fn.register_forward_pre_hook(lambda module, args: self.mark("loss_start")),
            s.loss_fn.register_forward_hook(self._loss_done),
            s.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self.mark("optimizer_start")),
        ]

    def mark(self, name: str) -> None:
        if self.marks is not None and name not in self.marks:  # the first time in the step
            self.marks[name] = self.clock.now()
            self.peaks[name] = self.clock.peak_gib()

    def _model_done(self, module, args, output) -> None:
        self.mark("forward_end")
        projections = output[1]
        if self.marks is not None and projections.requires_grad:  # its gradient: the loss's backward is done
            projections.register_hook(lambda grad: self.mark("loss_backward_end"))

    def _loss_done(self, module, args, loss) -> None:
        self.mark("loss_end")
        if self.marks is not None and loss.requires_grad:  # backward starts at the loss
            loss.register_hook(lambda grad: self.mark("backward_start"))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def step_parts(clock: Clock, m: dict[str, Any]) -> dict[str, float] | None:
    """Milliseconds of each part of one instrumented step (None if a mark is missing: a step the
    fp16 GradScaler skipped)."""
    names = ("step_start", "data_ready", "forward_start", "forward_end", "loss_start", "loss_end",
             "backward_start", "loss_backward_end", "optimizer_start", "step_end")
    if any(n not in m for n in names):
        return None

    def span(a: str, b: str) -> float:
        return clock.ms(m[a], m[b])

    parts = {"data_wait": span("step_start", "data_ready"), "host_to_device": span("data_ready", "forward_start"),
             "forward": span("forward_start", "forward_end"),
             "loss": span("loss_start", "loss_end") + span("backward_start", "loss_backward_end"),
             "backward": span("loss_backward_end", "optimizer_start"),
             "optimizer": span("optimizer_start", "step_end")}
    parts["other"] = max(0.0, span("step_start", "step_end") - sum(parts.values()))
    return parts


PART_PEAK_MARK = {"host_to_device": "forward_start", "forward": "forward_end", "loss": "loss_backward_end",
                  "backward": "optimizer_start", "optimizer": "step_end"}  # the mark that closes each part


def summary(values: list[float]) -> dict[str, float]:
    """Median and 10th-90th percentile spread (ms)."""
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median": statistics.median(ordered), "p10": pick(0.1), "p90": pick(0.9)}


def endless_batches(loader, first_epoch: int, delay_s: float = 0.0) -> Iterator[tuple]:
    """The loader's batches over epochs first_epoch, first_epoch + 1, ... (``delay_s``: a slower
    loader, to see where it would become the bottleneck)."""
    epoch = first_epoch
    while True:
        loader.set_epoch(epoch)
        for batch in loader:
            if delay_s:
                time.sleep(delay_s)
            yield batch
        epoch += 1


class SyntheticTwoViews:
    """In place of the data pipeline: two fixed random batches of the config's view shape, already
    on the device, handed out in turn (the compute ceiling, what a loader that keeps up gives)."""

    def __init__(self, batch_size: int, in_channels: int, image_size: int, device: torch.device):
        shape = (batch_size, in_channels, image_size, image_size)
        self.batches = [(torch.randn(shape, device=device), torch.randn(shape, device=device),
                         torch.zeros(batch_size, dtype=torch.long, device=device)) for _ in range(2)]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 1000

    def __iter__(self):
        for i in range(len(self)):
            yield self.batches[i % 2]


def view_shape(cfg: Config) -> tuple[int, int]:
    """(channels, pixels) of the views the config's data set gives."""
    d = cfg.data
    if d.dataset == "digits":
        return 1, d.digits.image_size
    if d.dataset == "imagefolder":
        return 3, d.imagefolder.image_size
    return 3, d.torchvision.image_size or {"stl10": 96}.get(d.dataset, 32)


# ---------------------------------------------------------------------------------- measuring


def measure_steps(s: Session, clock: Clock, batches: Prefetcher, steps: int, warmup: int) -> dict[str, Any]:
    """The run's step, plain and instrumented in turn: step time, data wait, parts, peaks."""
    probe = StepMarks(s, clock)
    plain, instrumented = [], []
    try:
        for i in range(warmup + 2 * steps):
            timed = i >= warmup
            marks = {} if timed and (i - warmup) % 2 else None
            probe.marks, probe.peaks = marks, {}
            clock.peak_gib()
            start = clock.now()
            batch, _ = batches.next()
            ready = clock.now()
            train_step(s, batch)
            end = clock.now()
            if marks is not None:
                marks.update(step_start=start, data_ready=ready, step_end=end)
                instrumented.append((marks, dict(probe.peaks, step_end=clock.peak_gib())))
            elif timed:
                plain.append((start, ready, end, clock.peak_gib()))
        probe.marks = None
        s.finite_checks.check()  # (one sync) a non-finite loss makes the figures meaningless
        clock.wait()
    finally:
        probe.remove()
    step_ms = [clock.ms(a, c) for a, _, c, _ in plain]
    wait_ms = [clock.ms(a, b) for a, b, _, _ in plain]

    parts = [p for p in (step_parts(clock, m) for m, _ in instrumented) if p is not None]
    if not parts:
        raise RuntimeError("no instrumented step completed (every step was skipped by the fp16 GradScaler)")
    parts_in_step = {name: summary([p[name] for p in parts]) for name in PARTS}
    parts_in_step["data_wait"] = summary(wait_ms)  # the plain steps': the step time's own wait
    peaks = {name: max((pk.get(mark) or 0.0) for _, pk in instrumented) for name, mark in PART_PEAK_MARK.items()}
    return {"step": summary(step_ms), "data_wait": summary(wait_ms),
            "data_wait_fraction": statistics.median(wait_ms) / statistics.median(step_ms),
            "instrumented_step": summary([sum(p.values()) for p in parts]),
            "parts": parts_in_step,
            "peak_gib": peaks if clock.cuda else None,
            "step_peak_gib": max((p or 0.0) for *_, p in plain) if clock.cuda else None}


def time_alone(clock: Clock, run: Callable[[Any], Any], setup: Callable[[], Any] = lambda: None,
               reps: int = 10) -> dict[str, Any]:
    """``run(setup())`` by itself: two untimed calls, then ``reps`` timed ones (setup untimed)."""
    for _ in range(2):
        run(setup())
    clock.wait()
    clock.peak_gib()
    spans = []
    for _ in range(reps):
        state = setup()
        start = clock.now()
        run(state)
        spans.append((start, clock.now()))
    peak = clock.peak_gib()
    clock.wait()
    return {**summary([clock.ms(a, b) for a, b in spans]), "peak_gib": peak}


def measure_data_alone(s: Session, batches: Iterator[tuple], reps: int) -> dict[str, Any]:
    """The loader by itself, on the wall clock (its work may run on several threads or streams)."""
    for _ in range(2):
        next(batches)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        next(batches)
        if s.ctx.device.type == "cuda":
            torch.cuda.synchronize(s.ctx.device)
        times.append((time.perf_counter() - start) * 1e3)
    return summary(times)


def measure_parts_alone(s: Session, clock: Clock, batch: tuple, reps: int) -> dict[str, Any]:
    """Copy, encoder forward, loss forward+backward, encoder backward and optimiser step, each by
    itself on this rank (no DDP communication: the objective is called unwrapped)."""
    objective = s.objective.module if isinstance(s.objective, nn.parallel.DistributedDataParallel) else s.objective
    host = tuple(t.pin_memory() if clock.cuda and t.device.type == "cpu" else t for t in batch[:2])
    view1, view2 = s.to_device(host[0]), s.to_device(host[1])
    with torch.no_grad():
        projections = objective.encode(view1, view2)[1].float()
    upstream = torch.randn_like(projections) / projections.numel()  # a loss's gradient, of a plausible size

    def loss_step(_):
        z = projections.detach().requires_grad_()
        s.loss_fn(*z.chunk(2)).backward()

    def encoder_backward(z):
        z.backward(upstream.to(z.dtype))

    s.optimizer.zero_grad(set_to_none=True)
    alone = {
        "host_to_device": time_alone(clock, lambda _: (s.to_device(host[0]), s.to_device(host[1])), reps=reps),
        "forward": time_alone(clock, lambda _: objective.encode(view1, view2), reps=reps),
        "loss": time_alone(clock, loss_step, reps=reps),
        "backward": time_alone(clock, encoder_backward, setup=lambda: objective.encode(view1, view2)[1], reps=reps),
        "optimizer": time_alone(clock, lambda _: s.optimizer.step(), reps=reps),
    }
    s.optimizer.zero_grad(set_to_none=True)
    if s.ctx.distributed and getattr(s.loss_fn, "hparams", {}).get("gather_distributed"):
        from fmicl_engine.loss.distributed import gather_global_batch, sum_row_grads

        z1, z2 = projections.detach().chunk(2)
        gathered = gather_global_batch(z1, z2, dist.group.WORLD)
        alone["all_gather"] = time_alone(clock, lambda _: gather_global_batch(z1, z2, dist.group.WORLD), reps=reps)
        alone["reduce_scatter"] = time_alone(clock, lambda _: sum_row_grads(gathered, dist.group.WORLD), reps=reps)
    return alone


def record_trace(s: Session, batches: Prefetcher, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.ctx.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(TRACE_STEPS):
            with record_function("data_wait"):
                batch, _ = batches.next()
            with record_function("train_step"):
                train_step(s, batch)
        s.finite_checks.check()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))


# ---------------------------------------------------------------------------------- the report


def verdict(loader_img_s: float, step_img_s: float, compute_img_s: float, wait_fraction: float,
            parts: dict[str, float]) -> tuple[str, str]:
    """(bottleneck, one sentence)."""
    if loader_img_s < compute_img_s or wait_fraction > DATA_BOUND_WAIT:
        why = (f"the loader delivers {loader_img_s:,.0f} img/s, the model step needs {compute_img_s:,.0f} img/s"
               if loader_img_s < compute_img_s else
               f"the step waits for data {100 * wait_fraction:.0f}% of its time although the loader alone "
               f"delivers {loader_img_s:,.0f} img/s and the model step needs {compute_img_s:,.0f} img/s "
               f"(they compete for the CPU)")
        return "data", f"data-bound: {why}"
    groups = {"model": ("encoder forward+backward", parts["forward"] + parts["backward"]),
              "loss": ("the loss forward+backward", parts["loss"]),
              "optimizer": ("the optimiser step", parts["optimizer"]),
              "copy": ("the host-to-device copy", parts["host_to_device"]),
              "overhead": ("other work (probe, zero_grad, casts)", parts["other"])}
    compute = sum(ms for _, ms in groups.values())
    name, (what, ms) = max(groups.items(), key=lambda item: item[1][1])
    return name, (f"{name}-bound: {what} take {100 * ms / compute:.0f}% of the step's compute "
                  f"({ms:.2f} of {compute:.2f} ms; {step_img_s:,.0f} img/s, loader alone {loader_img_s:,.0f} img/s)")


def rank_report(s: Session, measured: dict[str, Any], data_alone: dict[str, float],
                alone: dict[str, Any]) -> dict[str, Any]:
    local_batch = s.cfg.train.batch_size // s.ctx.world_size
    parts = {name: measured["parts"][name]["median"] for name in PARTS}
    step_ms = measured["step"]["median"]
    return {"rank": s.ctx.rank, "step_ms": step_ms, "parts": parts, "spread": measured["parts"],
            "step_spread": measured["step"], "instrumented_step_ms": measured["instrumented_step"]["median"],
            "data_wait_fraction": measured["data_wait_fraction"],
            "images_per_s": 1e3 * local_batch / step_ms,
            "compute_images_per_s": 1e3 * local_batch / sum(v for k, v in parts.items() if k != "data_wait"),
            "loader_images_per_s": 1e3 * local_batch / data_alone["median"],
            "alone": {"data": data_alone, **alone},
            "peak_gpu_gib": measured["peak_gib"], "step_peak_gpu_gib": measured["step_peak_gib"]}


def aggregate(cfg: Config, ctx: DistContext, ranks: list[dict[str, Any]], *, steps: int, warmup: int,
              synthetic: bool, timing: str) -> dict[str, Any]:
    """The job's figures from every rank's: the slowest rank sets the pace."""
    slowest = max(ranks, key=lambda r: r["step_ms"])
    step_ms = slowest["step_ms"]
    parts = slowest["parts"]  # one rank's step, so that its parts add up to it
    loader = sum(r["loader_images_per_s"] for r in ranks)
    compute = slowest["compute_images_per_s"] * ctx.world_size
    images_per_s = 1e3 * cfg.train.batch_size / step_ms
    wait = slowest["data_wait_fraction"]
    bottleneck, sentence = verdict(loader, images_per_s, compute, wait, parts)
    report = {
        "config": {"loss": {"name": cfg.loss.name, **cfg.loss.kwargs()}, "arch": cfg.model.arch,
                   "dataset": "synthetic" if synthetic else cfg.data.dataset, "global_batch": cfg.train.batch_size,
                   "precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
                   "compile": cfg.train.compile},
        "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "world_size": ctx.world_size, "timing": timing,
        "steps": steps, "warmup": warmup,
        "step_ms": step_ms, "parts": parts, "parts_sum_ms": sum(parts.values()),
        "images_per_s": images_per_s, "loader_images_per_s": loader, "compute_images_per_s": compute,
        "data_wait_fraction": wait, "bottleneck": bottleneck, "verdict": sentence,
        "alone": {name: max(r["alone"][name]["median"] for r in ranks) for name in ranks[0]["alone"]},
        "peak_gpu_gib": slowest["step_peak_gpu_gib"],
        "ranks": ranks,
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    r0 = report["ranks"][0] if report["world_size"] == 1 else None
    step = report["step_ms"]
    gpu = report["peak_gpu_gib"] is not None
    lines = [f"profile: {report['config']['arch']}, {report['config']['loss']['name']}, global batch "
             f"{report['config']['global_batch']}, {report['config']['precision']}, {report['world_size']} "
             f"process(es) on {report['device']}; {report['steps']} steps after {report['warmup']} "
             f"({report['timing']})",
             f"{'part':<34}{'alone ms':>10}{'in step ms':>12}{'p10-p90':>16}{'% step':>8}"
             + (f"{'peak GiB':>10}" if gpu else "")]
    for name in PARTS:
        alone = report["alone"].get(name)
        spread = (r0 or max(report["ranks"], key=lambda r: r["step_ms"]))["spread"][name]
        spread_text = "" if spread is None else f"{spread['p10']:.2f}-{spread['p90']:.2f}"
        peak = (r0 or report["ranks"][0])["peak_gpu_gib"] or {}
        lines.append(f"{PART_NAMES[name]:<34}{'' if alone is None else f'{alone:.2f}':>10}"
                     f"{report['parts'][name]:>12.2f}{spread_text:>16}"
                     f"{100 * report['parts'][name] / step:>7.0f}%"
                     + (f"{peak.get(name, 0.0) or 0.0:>10.2f}" if gpu and name in peak else ""))
    for name in ("all_gather", "reduce_scatter"):
        if name in report["alone"]:
            lines.append(f"{PART_NAMES[name]:<34}{report['alone'][name]:>10.2f}")
    lines.append(f"{'full step':<34}{'':>10}{step:>12.2f}{'':>16}{'100':>7}%"
                 + (f"{report['peak_gpu_gib']:>10.2f}" if gpu else ""))
    lines.append(f"images/s: {report['images_per_s']:,.0f} (step) | loader alone {report['loader_images_per_s']:,.0f} | "
                 f"model step alone {report['compute_images_per_s']:,.0f} | data wait "
                 f"{100 * report['data_wait_fraction']:.0f}% | parts sum {report['parts_sum_ms']:.2f} ms of "
                 f"{step:.2f} ms")
    if report["world_size"] > 1:
        for r in report["ranks"]:
            lines.append(f"  rank {r['rank']}: step {r['step_ms']:.2f} ms, {r['images_per_s']:,.0f} img/s, data wait "
                         f"{100 * r['data_wait_fraction']:.0f}%, loader alone {r['loader_images_per_s']:,.0f} img/s")
    lines.append(report["verdict"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the command


def profile(cfg: Config, *, steps: int = 20, warmup: int = 5, out_dir: str | Path | None = None,
            trace: bool = False, synthetic_data: bool = False, data_delay_s: float = 0.0,
            log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Profile the training step of ``cfg`` (every rank of a torchrun job calls it). Writes
    ``out_dir/profile.json`` (default: run.out_dir/profile) on rank 0 and returns the report
    (``format_table(report)`` is what the command prints)."""
    if not (2 <= steps <= MAX_STEPS and 0 <= warmup <= MAX_STEPS):
        raise ConfigError("profile", f"--steps must be in [2, {MAX_STEPS}] and --warmup in [0, {MAX_STEPS}], "
                          f"got {steps} and {warmup}")
    ctx = init_distributed(cfg.run.device, cfg.run.dist_timeout_s)
    try:
        return _profile(cfg, ctx, steps, warmup, Path(out_dir or Path(cfg.run.out_dir) / "profile"), trace,
                        synthetic_data, data_delay_s, log if ctx.is_main else (lambda line: None))
    finally:
        shutdown(ctx)


def _profile(cfg: Config, ctx: DistContext, steps: int, warmup: int, out_dir: Path, trace: bool,
             synthetic: bool, delay_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if synthetic:
        channels, size = view_shape(cfg)
        data = TrainingData(SyntheticTwoViews(cfg.train.batch_size // ctx.world_size, channels, size, ctx.device),
                            in_channels=channels, image_size=size, probe=None)
    else:
        data = build_training_data(cfg, rank=ctx.rank, world_size=ctx.world_size)
        if len(data.loader) == 0:
            raise ConfigError("train.batch_size", f"the global batch {cfg.train.batch_size} is larger than the "
                              f"{cfg.data.dataset} training set: an epoch would train no step")
    s = build_session(cfg, ctx, data, log=log)
    if synthetic:
        s.online_probe = None  # random images have no labels to probe
    clock = Clock(ctx.device)
    log(f"profiling {steps} steps after {warmup} warm-up steps on {ctx.world_size} process(es), {ctx.device.type}")
    s.objective.train()
    data_alone = measure_data_alone(s, endless_batches(data.loader, 0, delay_s), steps)
    batches = Prefetcher(endless_batches(data.loader, 1_000_000, delay_s), device=ctx.device)
    try:
        with s.finite_checks:
            measured = measure_steps(s, clock, batches, steps, warmup)
            batch, _ = batches.next()
            alone = measure_parts_alone(s, clock, batch, steps)
            ranks = gather_objects(ctx, rank_report(s, measured, data_alone, alone))
            report = aggregate(cfg, ctx, ranks, steps=steps, warmup=warmup, synthetic=synthetic,
                               timing="CUDA events" if clock.cuda else "wall clock")
            report["trace"] = str(out_dir / "trace") if trace else None
            if ctx.is_main:  # first: a trace that fills the disk loses no figure
                out_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomically(out_dir / "profile.json", json.dumps(report, indent=2) + "\n")
                log(f"wrote {out_dir / 'profile.json'}")
            if trace:
                trace_path = out_dir / "trace" / f"rank{ctx.rank}.pt.trace.json"
                try:
                    record_trace(s, batches, trace_path)
                    log(f"wrote traces under {out_dir / 'trace'}")
                except OSError as err:
                    trace_path.with_name(trace_path.name + ".tmp").unlink(missing_ok=True)
                    log(f"warning: no trace: cannot write {trace_path}: {err.strerror or err}")
    finally:
        batches.close()
        if hasattr(data.loader, "close"):
            data.loader.close()
    return report

