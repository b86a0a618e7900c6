"""Pretraining on one process or a torchrun job, then linear-probe evaluation: ``run(cfg)``.

Outputs in ``DIR = cfg.run.out_dir``, written by rank 0 alone:
``config.toml`` (the resolved config), ``metrics.jsonl`` and ``tensorboard/`` (every
``train.log_every`` steps), ``checkpoints/step_*.pt`` (see checkpoint.py), ``results.json``, and
``run.lock`` (held while the run lives).

Rerunning the same command into the same DIR resumes from the newest valid checkpoint. Only keys
that do not change the trajectory may differ (``RESUMABLE_KEYS``: the length of the run, logging
and checkpoint cadence, the output directory, thread counts, evaluation); any other difference
is refused, naming the keys, before anything in DIR changes. SIGTERM, SIGUSR1 and SIGINT write a
checkpoint at the next step boundary and return (``results["stopped_by"]``).

The training step reads in one screen (``train_one_epoch``); data sets, models and objectives
come from their registries. Nothing on the step's path reads a device value on the host except
on logging steps: the loss's value checks are deferred (``DeferredFiniteChecks``) and read there
and before each checkpoint, so a non-finite loss still stops the run, naming sigma/tau, and is
never checkpointed. (fp16's GradScaler reads its infinity flag each step, as it must.)
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from fmicl_engine.config import Config, ConfigError, config_to_dict, dumps_config, save_config
from fmicl_engine.config.loader import (config_from_text, engine_loss_arguments, local_negatives_only,
                                        resume_differences)
from fmicl_engine.data import TrainingData, build_training_data
from fmicl_engine.eval.linear_probe import ProbeData, linear_probe
from fmicl_engine.models import build_model, convert_sync_batchnorm
from fmicl_engine.atomic_files import write_text_atomically
from fmicl_engine.train.checkpoint import CheckpointStore, RunLock, load_checkpoint
from fmicl_engine.train.distributed import (DistContext, any_rank, barrier, from_main, gather_objects,
                                            init_distributed, shutdown)
from fmicl_engine.train.metrics import MetricsLog, MetricWindow
from fmicl_engine.train.optim import build_optimizer
from fmicl_engine.train.prefetch import Prefetcher
from fmicl_engine.train.schedule import learning_rate
from fmicl_engine.train.signals import StopRequest

_REPO_ROOT = Path(__file__).resolve().parents[3]
CHECKPOINT_FORMAT = 1
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# DDP's per-forward buffer broadcast: renamed in torch 2.14 (the old name warns there).
_DDP_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in
                    inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters else "broadcast_buffers")


def git_description() -> str:
    """The repository's commit (with "-dirty" if the tree has changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "-C", str(_REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class PretrainingObjective(nn.Module):
    """Both views through the model as one batch (BatchNorm sees all 2B images, as in SimCLR),
    under autocast when asked; the loss always in float32. DDP wraps this module, so the loss's
    own parameters (a critic) are synchronised with the model's."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, precision: str, device: torch.device):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self.autocast_dtype, self.device_type = AUTOCAST_DTYPES[precision], device.type

    def encode(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder features, projections) of both views, under autocast when asked."""
        with torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return self.model(torch.cat([view1, view2]))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the first view's encoder features, for the online probe)."""
        features, z = self.encode(view1, view2)
        z1, z2 = z.float().chunk(2)
        return self.loss_fn(z1, z2), features[: len(view1)]


@dataclass
class Session:
    """Everything a training step touches, built once by ``run``."""

    cfg: Config
    ctx: DistContext
    data: TrainingData
    model: nn.Module  # the SSLModel itself (its state_dict is what a checkpoint holds)
    loss_fn: nn.Module
    objective: nn.Module  # PretrainingObjective, DDP-wrapped in a torchrun job
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    store: CheckpointStore
    metrics: MetricsLog
    stop: StopRequest
    finite_checks: Any  # loss.DeferredFiniteChecks: the loss's value checks, read on logging steps
    online_probe: Any  # eval.OnlineLinearProbe on detached features, or None
    log: Callable[[str], None]
    config_text: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    step: int = 0
    batches_done: int = 0  # batches of the current epoch already trained on
    # Whole-run figures as of the session's start (from the checkpoint resumed), and that start.
    progress: dict[str, Any] = field(default_factory=lambda: {
        "train_seconds": 0.0, "images_seen": 0, "final_loss": None, "random_init_probe": None})
    session_start: tuple[float, int] = (0.0, 0)  # (time.perf_counter(), step)
    bar: Any = None

    def progress_now(self) -> dict[str, Any]:
        """The whole run's figures so far: this session's training added to the resumed ones."""
        started, first_step = self.session_start
        return {**self.progress,
                "train_seconds": self.progress["train_seconds"] + time.perf_counter() - started,
                "images_seen": self.progress["images_seen"] + (self.step - first_step) * self.cfg.train.batch_size}

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        return learning_rate(step, base_lr=o.lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                             min_lr=o.lr * o.min_lr_ratio)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        return images.to(self.ctx.device, non_blocking=True).contiguous(memory_format=layout)


# ---------------------------------------------------------------------------------- the step


def train_one_epoch(s: Session, epoch: int, window: MetricWindow, epoch_window: MetricWindow) -> str | None:
    """Train from the loader's position to the epoch's end. Returns why it stopped before the
    end (the stop signal's name, or "max_steps"), or None when the epoch is complete."""
    cfg, global_batch = s.cfg.train, s.cfg.train.batch_size
    s.data.loader.set_epoch(epoch)  # (a resumed epoch keeps its restored position)
    batches = Prefetcher(s.data.loader, device=s.ctx.device)
    try:
        while s.step < s.total_steps:
            batch, waited = batches.next()
            if batch is None:
                return None
            loss, lr = train_step(s, batch)
            window.add(loss, global_batch // s.ctx.world_size, waited)
            epoch_window.add(loss, global_batch // s.ctx.world_size, waited)
            if s.step % cfg.log_every == 0 or s.step == s.total_steps:
                s.finite_checks.check()  # a non-finite loss since the last check raises here
                figures = {**window.read(), "lr": lr}  # with the check, the only device syncs of a step
                s.progress["final_loss"] = figures["loss"]
                s.metrics.write(s.step, epoch, figures)
                s.bar.set_postfix(loss=f"{figures['loss']:.4f}", img_s=f"{figures['images_per_s']:.0f}", refresh=False)
            s.bar.update(1)
            if any_rank(s.ctx, s.stop.requested):
                return s.stop.signal_name or "a stop signal on another rank"
            if cfg.checkpoint_every_steps and s.step % cfg.checkpoint_every_steps == 0 and s.step < s.total_steps:
                save_checkpoint(s, epoch)
        return "max_steps"
    finally:
        batches.close()


def train_step(s: Session, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
    """One optimisation step on one (view1, view2, labels) batch: the step a run takes and the
    profiler times. Returns the loss (on the device, not read) and the step's learning rate."""
    view1, view2 = s.to_device(batch[0]), s.to_device(batch[1])
    lr = s.lr_at(s.step)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    loss, features = s.objective(view1, view2)
    if s.online_probe is not None:
        s.online_probe.step(features, batch[2].to(s.ctx.device, non_blocking=True))
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    if s.cfg.train.grad_clip:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in s.objective.parameters() if p.requires_grad],
                                       s.cfg.train.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.step, s.batches_done = s.step + 1, s.batches_done + 1
    return loss, lr


class TrainingDivergedError(FloatingPointError):
    """A non-finite loss or embedding in training; the message names the config keys that
    usually cause it. (The CLI reports it as a training error; no checkpoint holds its weights.)"""

    @classmethod
    def naming_keys(cls, err: Exception, s: Session) -> TrainingDivergedError:
        o, loss_options = s.cfg.optim, s.cfg.loss.kwargs()
        keys = []
        argument = getattr(err, "argument", None)
        if argument in loss_options:  # the hyperparameter the loss found its overflow owed to
            keys.append(f"loss.{argument} ({loss_options[argument]!r})")
        keys.append(f"optim.lr ({o.lr:g}) too high or optim.warmup_epochs ({o.warmup_epochs:g}) too short")
        if s.cfg.train.precision == "fp16":
            keys.append("train.precision = 'fp16' (bf16 has float32's range)")
        if not s.cfg.train.grad_clip:
            keys.append("no train.grad_clip")
        return cls(f"{err}; at step {s.step} of this run; the usual causes: {'; '.join(keys)}. "
                   "No checkpoint holds non-finite weights")


# ---------------------------------------------------------------------------------- checkpoints


def save_checkpoint(s: Session, epoch: int) -> None:
    """Every rank contributes its data position and RNG states; rank 0 writes."""
    s.finite_checks.check()  # never a checkpoint of weights a non-finite loss has touched
    local_batch = s.cfg.train.batch_size // s.ctx.world_size
    rank_state = {"data": {"epoch": epoch, "position": s.batches_done * local_batch},
                  "rng": {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state(s.ctx.device) if s.ctx.device.type == "cuda" else None}}
    ranks = gather_objects(s.ctx, rank_state)
    if s.ctx.is_main:
        s.store.save(s.step, {
            "format": CHECKPOINT_FORMAT, "config": s.config_text, "world_size": s.ctx.world_size,
            "step": s.step, "epoch": epoch, "batches_done": s.batches_done,
            "model": s.model.state_dict(), "loss": s.loss_fn.state_dict(),
            "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "data": [r["data"] for r in ranks], "rng": [r["rng"] for r in ranks],
            "progress": s.progress_now(),
            "online_probe": None if s.online_probe is None else {
                "linear": s.online_probe.state_dict(), "optimizer": s.online_probe.optimizer.state_dict()},
        })
    barrier(s.ctx)  # no rank runs ahead of a checkpoint that may be the last


def restore(s: Session, state: dict[str, Any]) -> int:
    """Load a checkpoint into the session; returns the epoch to continue."""
    s.model.load_state_dict(state["model"])
    s.loss_fn.load_state_dict(state["loss"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    s.step, s.progress = state["step"], dict(state["progress"])
    if s.online_probe is not None and state.get("online_probe") is not None:
        s.online_probe.load_state_dict(state["online_probe"]["linear"])
        s.online_probe.optimizer.load_state_dict(state["online_probe"]["optimizer"])
    epoch, s.batches_done = state["epoch"], state["batches_done"]
    if s.batches_done >= s.steps_per_epoch:  # saved at an epoch's end
        epoch, s.batches_done = epoch + 1, 0
    local_batch = s.cfg.train.batch_size // s.ctx.world_size
    s.data.loader.load_state_dict({"epoch": epoch, "position": s.batches_done * local_batch})
    if state["world_size"] == s.ctx.world_size:  # the same ranks: each takes back its own RNG streams
        rng = state["rng"][s.ctx.rank]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and s.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], s.ctx.device)
    return epoch


def claim_out_dir(cfg: Config, config_text: str, lock: RunLock, log: Callable[[str], None]) -> str | None:
    """Rank 0: lock DIR, find the checkpoint to resume from and check it may be resumed with this
    config, then (only then) write config.toml. Returns the checkpoint's path, or None."""
    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    holder = lock.acquire()
    if holder is not None:
        raise ConfigError("run.out_dir", f"{out_dir} is in use by another run ({holder}); "
                          "wait for it to end or choose another --out")
    store = CheckpointStore(out_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    present = store.steps()
    path = store.newest_valid(log)
    if present and path is None:  # starting over would overwrite the run's logs: the user decides
        lock.release(refused=True)
        raise ConfigError("run.out_dir", f"every checkpoint in {store.directory} is damaged (see the warnings "
                          "above); remove them to start the run over, or choose another --out")
    if path is not None:
        saved = config_from_text(load_checkpoint(path)["config"])
        differences = resume_differences(saved, cfg)
        if differences:
            lock.release(refused=True)
            old, new = _flat(config_to_dict(saved)), _flat(config_to_dict(cfg))
            changed = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differences)
            raise ConfigError("run.out_dir", f"cannot resume {path}: keys that change the training differ "
                              f"from the checkpointed run ({changed}); choose another --out or restore them")
    newer_damaged = [step for step in present if path is not None and store.path(step) > path]
    for step in newer_damaged:  # else the pruning of new saves would count them, and delete good ones
        log(f"warning: set aside {store.set_aside(step)} (damaged)")
    lock.record_holder()
    save_config(cfg, out_dir / "config.toml")
    return None if path is None else str(path)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# ---------------------------------------------------------------------------------- the run


def build_session(cfg: Config, ctx: DistContext, data: TrainingData, *, log: Callable[[str], None],
                  config_text: str = "") -> Session:
    """The model, loss, objective (DDP-wrapped in a torchrun job), optimiser and schedule of
    ``cfg`` on this rank: what ``run`` trains and the profiler times. No checkpoint store yet."""
    torch.manual_seed(cfg.run.seed)  # the same initialisation on every rank (DDP also broadcasts it)
    m = cfg.model
    model = build_model(m.arch, in_channels=data.in_channels, cnn_width=m.cnn_width,
                        projector_layers=m.projector_layers, projector_hidden_dim=m.projector_hidden_dim,
                        projector_out_dim=m.projector_out_dim, projector_batchnorm=m.projector_batchnorm)
    if m.sync_batchnorm and ctx.distributed:
        model = convert_sync_batchnorm(model, ctx.device)
    model = model.to(ctx.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.encoder.compile()  # in place: the state_dict keeps its names

    from fmicl_engine.loss import DeferredFiniteChecks, build_loss

    loss_fn = build_loss(cfg.loss.name, **cfg.loss.kwargs(),
                         **engine_loss_arguments(cfg.loss.name, cfg, ctx.world_size)).to(ctx.device)
    objective = PretrainingObjective(model, loss_fn, cfg.train.precision, ctx.device)
    if ctx.distributed:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            **{_DDP_BUFFER_SYNC: not m.sync_batchnorm})  # synchronised BatchNorm keeps its statistics equal
    steps_per_epoch = len(data.loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    return Session(cfg=cfg, ctx=ctx, data=data, model=model, loss_fn=loss_fn, objective=objective,
                   optimizer=build_optimizer(cfg.optim, [model, loss_fn]),
                   scaler=torch.amp.GradScaler(ctx.device.type, enabled=cfg.train.precision == "fp16"),
                   online_probe=build_online_probe(cfg, model, ctx), store=None, metrics=None, stop=StopRequest(),
                   finite_checks=DeferredFiniteChecks(group=dist.group.WORLD if ctx.distributed else None),
                   log=log, config_text=config_text, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   warmup_steps=min(round(cfg.optim.warmup_epochs * steps_per_epoch), total_steps))


def run(cfg: Config, *, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
        progress: bool = True) -> dict:
    """Pretrain the encoder of ``cfg`` (in every process of a torchrun job), probe it before and
    after, and write the run's files. Returns the run's figures (on every rank)."""
    ctx = init_distributed(cfg.run.device, cfg.run.dist_timeout_s)
    lock = RunLock(Path(cfg.run.out_dir))
    try:
        return _run(cfg, ctx, lock, log if ctx.is_main else (lambda s: None), progress and ctx.is_main)
    finally:
        lock.release()
        shutdown(ctx)


def _run(cfg: Config, ctx: DistContext, lock: RunLock, log: Callable[[str], None], progress: bool) -> dict:
    started = time.perf_counter()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    # ------------------------------------------------------------------------------ data
    # First, before anything is written: a data set found unusable while it is indexed (an empty
    # tree, say) is a config error like the ones load_config finds.
    data = build_training_data(cfg, rank=ctx.rank, world_size=ctx.world_size)
    if len(data.loader) == 0:
        raise ConfigError("train.batch_size", f"the global batch {cfg.train.batch_size} is larger than the "
                          f"{cfg.data.dataset} training set: an epoch would train no step")

    # ------------------------------------------------------------------------------ run directory
    config_text = dumps_config(cfg)
    resume_path = from_main(ctx, lambda: claim_out_dir(cfg, config_text, lock, log))
    out_dir = Path(cfg.run.out_dir)
    log(f"fmicl-engine: git {git_description()}, torch {torch.__version__}, {ctx.world_size} process(es) on "
        f"{ctx.device.type}, {torch.get_num_threads()} threads each, out_dir {out_dir}")
    log("resolved config:\n" + config_text)
    if ctx.distributed and local_negatives_only(cfg.loss.name):
        log(f"warning: objective {cfg.loss.name!r} cannot gather negatives across ranks; each rank's "
            "loss uses its own share of the batch, so the run differs from one process on the global batch")

    # ------------------------------------------------------------------------------ model, loss, optimiser
    session = build_session(cfg, ctx, data, log=log, config_text=config_text)
    session.store = CheckpointStore(out_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    model, objective, total_steps = session.model, session.objective, session.total_steps

    # ------------------------------------------------------------------------------ resume
    epoch = 0
    if resume_path is not None:
        epoch = restore(session, load_checkpoint(resume_path))
        log(f"resumed from {resume_path} at step {session.step} (epoch {epoch})")
    resumed_from = session.step if resume_path is not None else None
    session.metrics = MetricsLog(out_dir, enabled=ctx.is_main, resume_step=session.step, warn=log)

    # ------------------------------------------------------------------------------ random-init probe
    probe_seconds = 0.0
    if cfg.eval.linear_probe and session.progress["random_init_probe"] is None:
        t = time.perf_counter()
        if ctx.is_main:
            session.progress["random_init_probe"] = probe(model, data.probe, cfg, ctx.device)
            log(f"random-init linear probe top-1: {session.progress['random_init_probe']['top1']:.4f}")
        barrier(ctx)
        probe_seconds += time.perf_counter() - t

    # ------------------------------------------------------------------------------ train
    stopped_by = None  # a signal's name, "max_steps", or None
    window, epoch_window = MetricWindow(ctx), MetricWindow(ctx)
    session.session_start = (time.perf_counter(), session.step)
    from fmicl_engine.loss import LossArgumentError, NonFiniteLossError

    try:
        with session.stop, session.finite_checks, _progress_bar(total_steps, session.step, progress) as session.bar:
            objective.train()
            while session.step < total_steps and stopped_by is None:
                first_step = session.step
                epoch_window.reset()
                stopped_by = train_one_epoch(session, epoch, window, epoch_window)
                if session.step > first_step:
                    log_epoch_summary(session, epoch, first_step, epoch_window)
                # At each epoch's end (unless a step cadence is set), at the run's end, and when stopped.
                if cfg.train.checkpoint and (stopped_by is not None or session.step == total_steps
                                             or not cfg.train.checkpoint_every_steps):
                    save_checkpoint(session, epoch)
                if stopped_by is None:
                    epoch, session.batches_done = epoch + 1, 0
    except (NonFiniteLossError, LossArgumentError) as err:
        if isinstance(err, LossArgumentError) and err.argument not in ("z1", "z2"):
            raise  # a wrong argument, not a value that went non-finite
        raise TrainingDivergedError.naming_keys(err, session) from err
    session.metrics.close()
    if hasattr(data.loader, "close"):  # a DALI loader's reader threads
        data.loader.close()
    progress_figures = session.progress_now()
    stopped_by = None if stopped_by == "max_steps" else stopped_by
    if stopped_by is not None:
        log(f"stopped by {stopped_by} at step {session.step}"
            + (": checkpoint written; rerun the same command to resume" if cfg.train.checkpoint else ""))

    # ------------------------------------------------------------------------------ evaluation, results
    results = {"objective": {"name": cfg.loss.name, **cfg.loss.kwargs()}, "arch": cfg.model.arch,
               "dataset": cfg.data.dataset, "seed": cfg.run.seed, "world_size": ctx.world_size,
               "steps": session.step, "total_steps": total_steps, "resumed_from_step": resumed_from,
               "epochs": cfg.train.epochs, "final_loss": progress_figures["final_loss"], "stopped_by": stopped_by}
    if cfg.eval.linear_probe and stopped_by is None:
        t = time.perf_counter()
        if ctx.is_main:
            trained = probe(model, data.probe, cfg, ctx.device)
            for key in trained:  # top1, and top1_all_labels for a few-label probe
                results[f"linear_probe_{key}"] = trained[key]
                results[f"random_init_probe_{key}"] = progress_figures["random_init_probe"][key]
        barrier(ctx)
        probe_seconds += time.perf_counter() - t
    if stopped_by is None and evaluates(cfg):
        t = time.perf_counter()
        from fmicl_engine.eval.evaluate import evaluate

        report = evaluate(model, cfg, ctx, cache_dir=out_dir / "features" / f"step_{session.step:08d}")
        if ctx.is_main:
            write_text_atomically(out_dir / "eval.json", json.dumps({"step": session.step, **report}, indent=2) + "\n")
            results.update({k: report[k] for k in EVAL_SUMMARY if k in report})
            log("evaluation: " + ", ".join(f"{k} {report[k]:.4f}" for k in EVAL_SUMMARY if k in report))
        probe_seconds += time.perf_counter() - t
    train_seconds = progress_figures["train_seconds"]
    results.update({
        "pretrain_seconds": round(train_seconds, 2),  # over every session of the run
        "probe_seconds": round(probe_seconds, 2),
        "session_seconds": round(time.perf_counter() - started, 2),
        "images_per_s": round(progress_figures["images_seen"] / train_seconds, 1) if train_seconds else None,
        "device": ctx.device.type,
        "git": git_description(),
    })
    if ctx.is_main and stopped_by is None:
        write_text_atomically(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
        write_figures(out_dir, log)
    return results


EVAL_SUMMARY = ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "alignment", "uniformity")


def evaluates(cfg: Config) -> bool:
    """Whether the run has a held-out split to evaluate on, and is asked to."""
    e = cfg.eval
    heldout = cfg.data.dataset != "imagefolder" or bool(cfg.data.imagefolder.val_root)
    return heldout and bool(e.knn or e.linear_epochs or e.geometry_pairs)


NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}  # imagefolder: its class folders


def num_classes(cfg: Config) -> int:
    if cfg.data.dataset == "imagefolder":
        return sum(1 for d in Path(cfg.data.imagefolder.root).iterdir() if d.is_dir())
    return NUM_CLASSES[cfg.data.dataset]


def build_online_probe(cfg: Config, model: nn.Module, ctx: DistContext):
    if not cfg.eval.online_probe:
        return None
    from fmicl_engine.eval.linear_sgd import OnlineLinearProbe

    return OnlineLinearProbe(model.encoder.out_dim, num_classes(cfg)).to(ctx.device)


def epoch_figures(s: Session) -> dict[str, float]:
    """The online probe's top-1 and the held-out geometry of the epoch just ended (every rank calls it)."""
    figures = {}
    if s.online_probe is not None:
        figures["online_probe_top1"] = s.online_probe.compute()["online_top1"]
    if s.cfg.eval.geometry_pairs and evaluates(s.cfg):
        if s.ctx.is_main:
            from fmicl_engine.eval.evaluate import geometry_figures

            figures.update(geometry_figures(s.model, s.cfg, s.ctx.device))
        barrier(s.ctx)
    return figures


def write_figures(out_dir: Path, log: Callable[[str], None]) -> None:
    try:
        from fmicl_engine.eval.report import write_run_figures
    except ImportError as err:  # matplotlib is a dependency; a broken install should not lose the run
        log(f"warning: no figures ({err})")
        return
    write_run_figures(out_dir, log=log)


def log_epoch_summary(s: Session, epoch: int, first_step: int, window: MetricWindow) -> None:
    """One line per epoch on stderr, and its record in epochs.jsonl."""
    figures = window.read()
    extra = epoch_figures(s)
    s.metrics.write_epoch({"epoch": epoch, "step": s.step, "loss": figures["loss"], **extra})
    s.log(f"epoch {epoch + 1}/{s.cfg.train.epochs}: steps {first_step + 1}-{s.step} of {s.total_steps}, "
          f"loss {figures['loss']:.4f}, {figures['images_per_s']:.0f} images/s, "
          f"data wait {100 * figures['data_wait_fraction']:.0f}%, lr {s.lr_at(s.step - 1):.3g}"
          + (f", peak GPU memory {figures['peak_gpu_mem_gib']:.2f} GiB" if "peak_gpu_mem_gib" in figures else "")
          + "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in extra.items()))


def probe(model, data: ProbeData, cfg: Config, device: torch.device) -> dict[str, float]:
    e = cfg.eval
    return linear_probe(model, data, which=e.features, c=e.probe_c, max_iter=e.probe_max_iter,
                        batch_size=e.batch_size, device=device, labels_per_class=e.labels_per_class,
                        label_subsets=e.label_subsets, seed=cfg.run.seed)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (a scheduler's log file); the epoch lines remain.
    return tqdm(total=total, initial=initial, disable=None if enabled else True, unit="step", dynamic_ncols=True,
                file=sys.stderr)
