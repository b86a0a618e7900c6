"""Pretraining, then linear-probe evaluation: ``run(cfg)`` reads top to bottom.

Outputs in ``cfg.run.out_dir``: ``config.toml`` (the resolved config), ``metrics.jsonl`` (one JSON
line every ``train.log_every`` steps), ``checkpoint.pt`` (each epoch end, atomic; a rerun with the
same config resumes from it) and ``results.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from fmicl_engine.config import Config, ConfigError, dumps_config, save_config
from fmicl_engine.config.loader import engine_loss_arguments
from fmicl_engine.eval.linear_probe import ProbeData, linear_probe
from fmicl_engine.models import build_model
from fmicl_engine.train.checkpoint import load_checkpoint, save_checkpoint
from fmicl_engine.train.optim import build_optimizer
from fmicl_engine.train.schedule import learning_rate

_REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class TrainingData:
    loader: Iterable  # the loader protocol: set_epoch, len, state_dict / load_state_dict, (v1, v2, labels)
    in_channels: int
    probe: ProbeData | None  # None: this dataset has no in-memory probe sets


def build_data(cfg: Config) -> TrainingData:
    if cfg.data.dataset == "digits":
        from fmicl_engine.data.digits import DigitsAugmentation, DigitsTwoViewLoader, load_digits_split, resize

        d = cfg.data.digits
        train, test = load_digits_split(d.test_fraction, cfg.run.seed)
        augmentation = DigitsAugmentation(d.image_size, d.crop_scale_min, d.max_rotation_deg, d.noise_std)
        loader = DigitsTwoViewLoader(train, batch_size=cfg.train.batch_size, seed=cfg.run.seed,
                                     augmentation=augmentation)
        probe = ProbeData(resize(train.images, d.image_size), train.labels, resize(test.images, d.image_size),
                          test.labels)
        return TrainingData(loader, in_channels=1, probe=probe)
    from fmicl_engine.data import build_two_view_loader

    f = cfg.data.imagefolder
    try:
        loader = build_two_view_loader(root=f.root, recipe=f.augment, image_size=f.image_size,
                                       batch_size=cfg.train.batch_size, seed=cfg.run.seed, device=f.device,
                                       num_threads=f.num_threads, on_bad_file=f.on_bad_file)
    except ValueError as err:  # an empty tree, no readable image: found while indexing, before training
        raise ConfigError("data.imagefolder.root", str(err)) from None
    return TrainingData(loader, in_channels=3, probe=None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def run(cfg: Config, *, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
        progress: bool = True) -> dict:
    """Pretrain the encoder of ``cfg``, probe it before and after, and write the run's files."""
    started = time.perf_counter()
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    # ------------------------------------------------------------------------------ data
    # First, before anything is logged or written: a dataset found unusable while it is indexed
    # (an empty tree, say) is a config error like the ones load_config finds.
    data = build_data(cfg)
    loader = data.loader

    out_dir = Path(cfg.run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_text = dumps_config(cfg)
    log(f"fmicl-engine: git {git_description()}, torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, out_dir {out_dir}")
    log("resolved config:\n" + config_text)
    save_config(cfg, out_dir / "config.toml")
    torch.manual_seed(cfg.run.seed)  # model and critic initialisation

    # ------------------------------------------------------------------------------ model
    model = build_model(cfg.model.arch, in_channels=data.in_channels, cnn_width=cfg.model.cnn_width,
                        projector_hidden_dim=cfg.model.projector_hidden_dim,
                        projector_out_dim=cfg.model.projector_out_dim).to(device)

    # ------------------------------------------------------------------------------ loss
    from fmicl_engine.loss import build_loss

    loss_fn = build_loss(cfg.loss.name, **cfg.loss.kwargs(), **engine_loss_arguments(cfg.loss.name, cfg)).to(device)

    # ------------------------------------------------------------------------------ optimiser
    optimizer = build_optimizer(cfg.optim, [model, loss_fn])

    # ------------------------------------------------------------------------------ schedule
    steps_per_epoch = len(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup_steps = min(round(cfg.optim.warmup_epochs * steps_per_epoch), total_steps)

    def lr_at(step: int) -> float:
        return learning_rate(step, base_lr=cfg.optim.lr, warmup_steps=warmup_steps, total_steps=total_steps,
                             min_lr=cfg.optim.lr * cfg.optim.min_lr_ratio)

    # ------------------------------------------------------------------------------ resume
    checkpoint_path = out_dir / "checkpoint.pt"
    metrics_path = out_dir / "metrics.jsonl"
    step, start_epoch, resumed_epoch, random_init = 0, 0, None, None
    if cfg.train.checkpoint and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state["config"] != config_text:
            raise ConfigError("run.out_dir", f"{checkpoint_path} belongs to a different config; "
                              "delete it or choose another --out")
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["data"])
        torch.set_rng_state(state["torch_rng"])
        step, random_init = state["step"], state["random_init_probe"]
        start_epoch = resumed_epoch = state["data"]["epoch"]
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        kept = [line for line in lines if json.loads(line)["step"] <= step]  # drop steps after the checkpoint
        metrics_path.write_text("".join(line + "\n" for line in kept))
        log(f"resumed from {checkpoint_path} at step {step} (epoch {start_epoch})")
    else:
        metrics_path.write_text("")

    # ------------------------------------------------------------------------------ random-init probe
    probe_seconds = 0.0
    if cfg.eval.linear_probe and random_init is None:
        t = time.perf_counter()
        random_init = probe(model, data.probe, cfg, device)
        probe_seconds += time.perf_counter() - t
        log(f"random-init linear probe top-1: {random_init['top1']:.4f}")

    # ------------------------------------------------------------------------------ loop
    model.train()
    start_step, train_started = step, time.perf_counter()
    window_start, window_samples, last_loss = time.perf_counter(), 0, None  # None: no step ran here
    bar = _progress_bar(total_steps, step, progress)
    with metrics_path.open("a") as metrics:
        for epoch in range(start_epoch, cfg.train.epochs):
            if step >= total_steps:
                break
            if epoch != resumed_epoch:  # a resumed epoch continues from the restored position
                loader.set_epoch(epoch)
            for view1, view2, _ in loader:
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                view1, view2 = view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)
                _, z1 = model(view1)
                _, z2 = model(view2)
                loss = loss_fn(z1, z2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                window_samples += view1.shape[0]
                if step % cfg.train.log_every == 0 or step == total_steps:
                    last_loss = loss.item()  # a device sync point: only every log_every steps
                    now = time.perf_counter()
                    samples_per_s = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    metrics.write(json.dumps({"step": step, "epoch": epoch, "loss": last_loss, "lr": lr,
                                              "samples_per_s": round(samples_per_s, 2)}) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{samples_per_s:.0f}", refresh=False)
                bar.update(1)
                if step == total_steps:  # max_steps: stop before fetching a batch that would not be used
                    break
            if cfg.train.checkpoint:  # at the epoch's end, or where max_steps stopped it
                save_checkpoint(checkpoint_path, {
                    "config": config_text, "step": step, "model": model.state_dict(),
                    "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
                    "data": loader.state_dict(), "torch_rng": torch.get_rng_state(),
                    "random_init_probe": random_init,
                })
    bar.close()
    train_seconds = time.perf_counter() - train_started

    # ------------------------------------------------------------------------------ linear probe
    results = {"objective": {"name": cfg.loss.name, **cfg.loss.kwargs()}, "arch": cfg.model.arch,
               "dataset": cfg.data.dataset,
               "seed": cfg.run.seed, "steps": step, "resumed_from_step": start_step, "epochs": cfg.train.epochs,
               "final_loss": last_loss}
    if cfg.eval.linear_probe:
        t = time.perf_counter()
        trained = probe(model, data.probe, cfg, device)
        probe_seconds += time.perf_counter() - t
        for key in trained:  # top1, and top1_all_labels for a few-label probe
            results[f"linear_probe_{key}"] = trained[key]
            results[f"random_init_probe_{key}"] = random_init[key]
    results.update({
        "pretrain_seconds": round(train_seconds, 2),
        "probe_seconds": round(probe_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "samples_per_s": round((step - start_step) * cfg.train.batch_size / max(train_seconds, 1e-9), 1),
        "device": str(device),
        "git": git_description(),
    })
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def probe(model, data: ProbeData, cfg: Config, device: torch.device) -> dict[str, float]:
    e = cfg.eval
    return linear_probe(model, data, which=e.features, c=e.probe_c, max_iter=e.probe_max_iter,
                        batch_size=e.batch_size, device=device, labels_per_class=e.labels_per_class,
                        label_subsets=e.label_subsets, seed=cfg.run.seed)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, file=sys.stderr)
