"""The evaluation of a pretrained model, the same every time: ``evaluate(model, cfg, ctx, ...)``.

Downstream accuracy of the frozen encoder's features (weighted kNN, SGD linear probe) on the data
set's held-out split, and the geometry of the embeddings the loss sees (alignment, uniformity,
similarity histograms, MI estimates) on held-out positive pairs: two augmented views of held-out
images, drawn with the training recipe from the run's seed. Rank 0 computes the figures from
features every rank helped extract; ``eval.json`` states the protocol of each figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fmicl_engine.config import Config
from fmicl_engine.eval.features import eval_splits, extract_features
from fmicl_engine.eval.geometry import alignment_uniformity, similarity_histograms
from fmicl_engine.eval.knn import knn_classify
from fmicl_engine.eval.linear_sgd import train_linear_probe
from fmicl_engine.eval.mi_estimates import estimate_mi
from fmicl_engine.atomic_files import write_text_atomically
from fmicl_engine.train.distributed import DistContext


def heldout_pairs(cfg: Config, count: int):
    """A two-view loader over the held-out split (one process), for ``count`` positive pairs."""
    from fmicl_engine.data.digits import DigitsAugmentation, DigitsTwoViewLoader, load_digits_split

    seed = cfg.run.seed
    if cfg.data.dataset == "digits":
        d = cfg.data.digits
        _, test = load_digits_split(d.test_fraction, seed)
        augmentation = DigitsAugmentation(d.image_size, d.crop_scale_min, d.max_rotation_deg, d.noise_std)
        return DigitsTwoViewLoader(test, batch_size=min(count, len(test.labels)), seed=seed,
                                   augmentation=augmentation)
    if cfg.data.dataset == "imagefolder":
        from fmicl_engine.data import build_two_view_loader

        f = cfg.data.imagefolder
        return build_two_view_loader(root=f.val_root, recipe=f.augment, image_size=f.image_size,
                                     batch_size=min(count, 256), seed=seed, device=f.device,
                                     num_threads=f.num_threads, on_bad_file="skip", drop_last=False)
    from fmicl_engine.data.torchvision_sets import build_torchvision_set_loader, open_set

    t = cfg.data.torchvision
    images = open_set(cfg.data.dataset, t.root, "test")
    return build_torchvision_set_loader(cfg.data.dataset, images, augment=t.augment, image_size=t.image_size,
                                        batch_size=min(count, 256, len(images)), seed=seed)


@torch.no_grad()
def pair_embeddings(model, cfg: Config, device: torch.device, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z1, z2): projector embeddings of up to ``count`` held-out positive pairs, model in eval mode."""
    was_training = model.training
    model.eval()
    z1, z2, seen = [], [], 0
    pairs = heldout_pairs(cfg, count)
    try:
        for view1, view2, _ in pairs:
            z1.append(model(view1.to(device))[1].float().cpu())
            z2.append(model(view2.to(device))[1].float().cpu())
            seen += len(view1)
            if seen >= count:
                break
    finally:
        model.train(was_training)
        if hasattr(pairs, "close"):  # a DALI loader's reader threads
            pairs.close()
    return torch.cat(z1)[:count], torch.cat(z2)[:count]


def geometry_figures(model, cfg: Config, device: torch.device) -> dict[str, float]:
    """Alignment and uniformity of held-out pairs (the per-epoch log's figures)."""
    z1, z2 = pair_embeddings(model, cfg, device, cfg.eval.geometry_pairs)
    g = alignment_uniformity(z1, z2)
    return {"alignment": g.alignment, "uniformity": g.uniformity}


def evaluate(model, cfg: Config, ctx: DistContext, *, cache_dir: Path) -> dict[str, Any] | None:
    """Every figure of eval.json on rank 0 (None on the others; every rank must call it)."""
    e = cfg.eval
    splits = eval_splits(cfg)
    extracted = [extract_features(model.encoder, dataset, name=name, cache_dir=cache_dir, ctx=ctx,
                                  batch_size=e.batch_size)
                 for name, dataset in (("train", splits.train), ("test", splits.test))]
    if not ctx.is_main:
        return None
    (train_x, train_y), (test_x, test_y) = extracted
    protocol: dict[str, str] = {}
    report: dict[str, Any] = {"train_images": len(train_y), "test_images": len(test_y), "protocol": protocol}
    if e.knn:
        # bank_chunk: the device holds 65,536 bank rows at a time, not ImageNet's 1.28 M.
        knn = knn_classify(train_x, train_y, test_x, test_y, k=e.knn_k, temperature=e.knn_temperature,
                           num_classes=splits.num_classes, device=ctx.device, bank_chunk=65536)
        report.update({"knn_top1": knn.top1, "knn_top5": knn.top5})
        protocol["knn"] = knn.protocol
    if e.linear_epochs:
        linear = train_linear_probe((train_x, train_y), (test_x, test_y), num_classes=splits.num_classes,
                                    epochs=e.linear_epochs, lr=e.linear_lr, batch_size=e.linear_batch_size,
                                    seed=cfg.run.seed, device=ctx.device)
        report.update({"linear_top1": linear.top1, "linear_top5": linear.top5})
        protocol["linear"] = linear.protocol
    if e.geometry_pairs:
        z1, z2 = pair_embeddings(model, cfg, ctx.device, e.geometry_pairs)
        geometry = alignment_uniformity(z1, z2)
        histograms = similarity_histograms(z1, z2, num_negatives=min(len(z1) * (len(z1) - 1), 100_000),
                                           seed=cfg.run.seed)
        report.update({"alignment": geometry.alignment, "uniformity": geometry.uniformity,
                       "held_out_pairs": len(z1),
                       "similarity_histograms": {"bins": histograms.edges.tolist(),
                                                 "positive": histograms.positive.tolist(),
                                                 "negative": histograms.negative.tolist()}})
        protocol.update({"geometry": geometry.protocol, "histograms": histograms.protocol})
        if e.mi_steps:
            # K: the critic batch; every part of the pairs (train, validation, test) must hold a batch.
            mi = estimate_mi(z1, z2, steps=e.mi_steps, seed=cfg.run.seed, batch_size=max(2, min(128, len(z1) // 20)))
            report.update({"mi_infonce": mi.infonce, "mi_nwj": mi.nwj, "mi_dv": mi.dv})
            protocol["mi"] = mi.protocol
    return report


def evaluate_checkpoint(cfg: Config, checkpoint: str, out_dir: Path, *, log=print) -> dict[str, Any] | None:
    """``fmicl-engine eval``: the model of ``checkpoint`` (a file, or a run directory: its newest
    valid checkpoint) evaluated as ``cfg`` says; eval.json and the figures under ``out_dir``."""
    import json

    from fmicl_engine.config import ConfigError
    from fmicl_engine.eval.export import resolve_checkpoint
    from fmicl_engine.models import build_model
    from fmicl_engine.train.checkpoint import load_checkpoint
    from fmicl_engine.train.distributed import init_distributed, shutdown

    try:
        path = resolve_checkpoint(checkpoint)
    except ValueError as err:
        raise ConfigError("--checkpoint", str(err)) from None
    ctx = init_distributed(cfg.run.device, cfg.run.dist_timeout_s)
    try:
        state = load_checkpoint(path)
        m = cfg.model
        model = build_model(m.arch, in_channels=1 if cfg.data.dataset == "digits" else 3, cnn_width=m.cnn_width,
                            projector_layers=m.projector_layers, projector_hidden_dim=m.projector_hidden_dim,
                            projector_out_dim=m.projector_out_dim, projector_batchnorm=m.projector_batchnorm)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as err:
            raise ConfigError("--checkpoint", f"{path} does not hold this config's model ({m.arch}): "
                              f"{str(err).splitlines()[0]}") from None
        model.to(ctx.device)
        step = int(state.get("step", 0))
        report = evaluate(model, cfg, ctx, cache_dir=Path(out_dir) / "features" / f"step_{step:08d}")
        if ctx.is_main:
            report = {"checkpoint": str(path), "step": step, **report}
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomically(Path(out_dir) / "eval.json", json.dumps(report, indent=2) + "\n")
            from fmicl_engine.eval.report import write_run_figures

            write_run_figures(out_dir, log=log)
        return report
    finally:
        shutdown(ctx)
