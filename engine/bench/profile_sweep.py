"""Step-profile sweep: where a pretraining step's time goes, for ResNet-18 and ResNet-50 at 224 px
across batch sizes, for f-MICL KL, f-MICL JS and InfoNCE, with the fused loss op against the
PyTorch reference (loss.backend), side by side in one run, in one Markdown table.

    python engine/bench/profile_sweep.py                       # GPU: resnet50 + resnet18, batch 256 128 64
    python engine/bench/profile_sweep.py --archs resnet50 --batches 512 256 --objectives fmicl-kl
    python engine/bench/profile_sweep.py --time-budget 120 --steps 10 --warmup 3 \
        --json profile.jsonl --markdown profile.md
    python engine/bench/profile_sweep.py --smoke               # CPU smoke: resnet18, 32 px, batch 4, 2 steps

Each row is one `fmicl-engine profile` of the ImageNet config of its objective (fmicl-kl:
configs/imagenet_kl.toml, fmicl-js: imagenet_js.toml, infonce: imagenet_simclr.toml; bf16,
channels_last, SimCLR v2's head, LARS) with --synthetic-data: random batches already on the
device in place of the data pipeline, so the table is the compute ceiling of one process (the
loader's own figures: engine/bench/data.py). --batches are images per GPU and step (two views
each; one process: train.batch_size = the batch). The runs follow each other in this process;
GPU memory is released between them. A run that runs out of GPU memory reads OOM in its row and
the sweep goes on.

Order: for each batch (in the order given), for each arch, for each objective, both backends.
--time-budget S: before each run its time is predicted from the last run of the same arch
(scaled by the batch), and the runs that would pass the budget are skipped (the notes say so).

Columns: step ms (median of the plain steps), img/s (images, each two views, per second),
loss fwd+bwd ms (the loss's forward and backward inside the step), its share of the step, peak
GiB (the allocator's peak during a step), the bottleneck (the profile's verdict). Below the table:
the fused op against the reference per (arch, batch, objective): the step-time and loss-time ratios
(reference / fused: above 1 = fused faster), then the full profile table of the largest ResNet-50
f-MICL KL fused run (the ImageNet config; `fmicl-engine profile` prints the same).

The machine is shared: timings move with the load of other processes; compare ratios within one
run. OMP_WAIT_POLICY=PASSIVE is set before torch loads (see loss.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime (see loss.py)

import torch  # noqa: E402

from report import shown_command  # noqa: E402  (engine/bench/report.py, beside this script)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"fmicl-kl": "imagenet_kl.toml", "fmicl-js": "imagenet_js.toml", "infonce": "imagenet_simclr.toml"}
BACKENDS = ("fused", "reference")
GPU_DEFAULTS = dict(archs=["resnet50", "resnet18"], batches=[256, 128, 64], image_size=224, steps=20, warmup=5,
                    objectives=list(CONFIGS))
SMOKE = dict(archs=["resnet18"], batches=[4], image_size=32, steps=2, warmup=1, objectives=["fmicl-kl"])

HEADER = ("| arch | batch | objective | backend | step ms | img/s | loss fwd+bwd ms | loss % of step "
          "| peak GiB | bottleneck | notes |")
RATIO_HEADER = ("| arch | batch | objective | step ms fused | step ms reference | step reference/fused "
                "| loss ms fused | loss ms reference | loss reference/fused | peak GiB fused | peak GiB reference |")
LEGEND = [
    "batch: images per GPU and step (each two views); synthetic data: random batches already on the device "
    "(the compute ceiling, no data loading).",
    "step ms: median of the plain steps; loss fwd+bwd ms: the loss's forward and backward inside the "
    "instrumented steps (median); peak GiB: the allocator's peak during a step; OOM: out of GPU memory; "
    "—: not run (notes).",
    "reference/fused: the PyTorch reference's time divided by the fused op's (above 1 = fused faster).",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", choices=("resnet18", "resnet50"),
                   help=f"default {' '.join(GPU_DEFAULTS['archs'])} ({' '.join(SMOKE['archs'])} with --smoke)")
    p.add_argument("--batches", nargs="+", type=int, help="images per GPU and step, in the order run; default "
                   f"{' '.join(map(str, GPU_DEFAULTS['batches']))} ({SMOKE['batches'][0]} with --smoke)")
    p.add_argument("--objectives", nargs="+", choices=tuple(CONFIGS),
                   help="default all three (fmicl-kl with --smoke)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--image-size", type=int, help="view resolution; default 224 (32 with --smoke)")
    p.add_argument("--steps", type=int, help="timed steps of each run (profile --steps); default 20 (2 with --smoke)")
    p.add_argument("--warmup", type=int, help="untimed steps first (profile --warmup); default 5 (1 with --smoke)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp32", "fp16"),
                   help="default bf16 on CUDA (the config's), fp32 on the CPU (bf16 autocast is slow there)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (run.threads; 0: torch's default)")
    p.add_argument("--time-budget", type=float, default=0, help="seconds for the whole sweep (0: none); the runs "
                   "predicted to pass it are skipped")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="further config overrides for every run; repeatable")
    p.add_argument("--json", help="append one JSON line per row (with the full profile report)")
    p.add_argument("--markdown", help="write the Markdown (rewritten after every row)")
    p.add_argument("--smoke", action="store_true", help="the tiny CPU sizes: " + ", ".join(
        f"{k}={v}" for k, v in SMOKE.items()) + ", both backends")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    for key, value in (SMOKE if args.smoke else GPU_DEFAULTS).items():
        if getattr(args, key) is None:  # what the command line sets stays
            setattr(args, key, value)
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    if args.steps < 2 or args.warmup < 0 or min(args.batches) < 1:
        p.error("--steps must be >= 2, --warmup >= 0 and every --batches value positive")
    return args


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()  # cuDNN or a CPU allocator may wrap it
    return "out of memory" in text or "can't allocate memory" in text


def release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def overrides_for(args, arch: str, batch: int, backend: str, out_dir: str) -> list[str]:
    return ["data.imagefolder.root=" + str(REPO),  # validated to exist; synthetic data reads nothing
            "data.imagefolder.device=cpu", f"data.imagefolder.image_size={args.image_size}",
            f"run.device={args.device}", f"run.threads={args.threads}", f"run.out_dir={out_dir}",
            f"model.arch={arch}", f"train.batch_size={batch}", f"train.precision={args.precision}",
            f"loss.backend={backend}", "eval.online_probe=false", *args.overrides]


def profile_one(args, arch: str, batch: int, objective: str, backend: str, work: str) -> dict:
    """One run: {status: ok | OOM | FAILED, report, seconds, error}."""
    from fmicl_engine.config import load_config
    from fmicl_engine.train.profile import profile

    start = time.monotonic()
    row: dict = {"status": "ok", "report": None, "error": ""}
    try:
        cfg = load_config(REPO / "configs" / CONFIGS[objective], overrides_for(args, arch, batch, backend, work))
        row["report"] = profile(cfg, steps=args.steps, warmup=args.warmup, out_dir=work, synthetic_data=True,
                                log=lambda line: None)
    except Exception as err:  # noqa: BLE001  (recorded in the row; the sweep goes on)
        row["status"] = "OOM" if is_out_of_memory(err) else "FAILED"
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        print(f"  {row['status']}: {row['error']}", flush=True)
    # Outside the except block: the traceback, which holds the run's tensors, is gone.
    release_memory(args.device)
    row["seconds"] = time.monotonic() - start
    return row


def table_row(r: dict) -> str:
    rep = r.get("report")
    cells = [r["arch"], str(r["batch"]), r["objective"], r["backend"]]
    if rep is None:
        status = r["status"] if r["status"] != "skipped" else "—"
        cells += [status, status, status, status, status, "—"]
    else:
        loss = rep["parts"]["loss"]
        cells += [fmt(rep["step_ms"]), fmt(rep["images_per_s"]), fmt(loss), f"{100 * loss / rep['step_ms']:.1f}%",
                  fmt(rep["peak_gpu_gib"]), rep["bottleneck"]]
    cells.append("; ".join(r["notes"]))
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def ratio_rows(rows: list[dict]) -> list[str]:
    """The fused op against the reference, per (arch, batch, objective) where both were run (a
    backend that ran out of memory reads OOM)."""
    by_key: dict = {}
    for r in rows:
        if r["status"] in ("ok", "OOM"):
            by_key.setdefault((r["arch"], r["batch"], r["objective"]), {})[r["backend"]] = r
    lines = []
    for (arch, batch, objective), pair in sorted(by_key.items(), key=lambda kv: (kv[0][0] != "resnet50", kv[0][0],
                                                                                  -kv[0][1], kv[0][2])):
        if set(pair) != set(BACKENDS):
            continue
        f, ref = pair["fused"].get("report"), pair["reference"].get("report")

        def cell(rep, value):
            return "OOM" if rep is None else fmt(value(rep))

        def ratio(value, digits):
            return "—" if f is None or ref is None else f"{value(ref) / value(f):.{digits}f}x"

        step, loss, peak = (lambda r: r["step_ms"]), (lambda r: r["parts"]["loss"]), (lambda r: r["peak_gpu_gib"])
        lines.append(f"| {arch} | {batch} | {objective} | {cell(f, step)} | {cell(ref, step)} | {ratio(step, 3)} "
                     f"| {cell(f, loss)} | {cell(ref, loss)} | {ratio(loss, 2)} | {cell(f, peak)} "
                     f"| {cell(ref, peak)} |")
    return lines


def full_profile(rows: list[dict]) -> dict | None:
    """The report shown in full: the largest-batch ResNet-50 f-MICL KL fused run (else the largest run)."""
    done = [r for r in rows if r.get("report")]
    preferred = [r for r in done if (r["arch"], r["objective"], r["backend"]) == ("resnet50", "fmicl-kl", "fused")]
    pool = preferred or [r for r in done if r["objective"] == "fmicl-kl" and r["backend"] == "fused"] or done
    return max(pool, key=lambda r: (r["arch"] == "resnet50", r["batch"]), default=None)


def describe_device(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"


def markdown(args, argv, rows: list[dict], notes: list[str]) -> str:
    from fmicl_engine.train.profile import format_table

    command = shown_command("profile_sweep.py", sys.argv[1:] if argv is None else list(argv))
    order = sorted(rows, key=lambda r: (r["arch"] != "resnet50", r["arch"], -r["batch"],
                                        list(CONFIGS).index(r["objective"]), BACKENDS.index(r["backend"])))
    text = [f"`{command}`", "",
            f"torch {torch.__version__}, {describe_device(args.device)}, {args.precision}, {args.image_size} px, "
            f"synthetic data, {args.steps} steps after {args.warmup} per run.", "", HEADER, "|" + "---|" * 11,
            *(table_row(r) for r in order), ""]
    ratios = ratio_rows(rows)
    if ratios:
        text += ["Fused op against the PyTorch reference (same arch, batch, objective):", "", RATIO_HEADER,
                 "|" + "---|" * 11, *ratios, ""]
    text += [*(f"- {n}" for n in notes), *(f"- {t}" for t in LEGEND), ""]
    full = full_profile(rows)
    if full:
        text += [f"Full profile: {full['arch']}, batch {full['batch']}, {full['objective']}, {full['backend']} "
                 f"(configs/{CONFIGS[full['objective']]}, synthetic data; `fmicl-engine profile` prints the same):",
                 "", "```", format_table(full["report"]), "```", ""]
    return "\n".join(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = [(arch, batch, objective, backend) for batch in args.batches for arch in args.archs
            for objective in args.objectives for backend in args.backends]
    print(f"torch {torch.__version__}, {describe_device(args.device)}, {args.precision}: {len(plan)} runs", flush=True)
    print(HEADER, flush=True)
    deadline = time.monotonic() + args.time_budget if args.time_budget > 0 else math.inf
    rows: list[dict] = []
    notes: list[str] = []
    last: dict = {}  # arch -> (batch, seconds) of its last completed run ("any": of any arch)
    skipped: dict = {}  # (arch, batch) -> runs skipped for the time budget

    def write() -> None:  # after every row: a sweep stopped from outside keeps its table
        if args.markdown:
            Path(args.markdown).write_text(markdown(args, argv, rows, notes))

    with tempfile.TemporaryDirectory(prefix="fmicl_profile_sweep_") as work:
        for arch, batch, objective, backend in plan:
            r = {"arch": arch, "batch": batch, "objective": objective, "backend": backend, "notes": []}
            batch_s = last.get(arch, last.get("any"))
            predicted = batch_s[1] * batch / batch_s[0] if batch_s else 0.0
            left = deadline - time.monotonic()
            if predicted > left or left <= 0:
                skipped[arch, batch] = skipped.get((arch, batch), 0) + 1
                continue
            r.update(profile_one(args, arch, batch, objective, backend, work))
            if r["status"] == "ok":
                last[arch] = last["any"] = (batch, r["seconds"])
            elif r["error"]:
                r["notes"].append(r["error"])
            rows.append(r)
            print(table_row(r) + f"  ({r['seconds']:.1f} s)", flush=True)
            if args.json:
                with open(args.json, "a") as out:
                    out.write(json.dumps(r | {
                        "image_size": args.image_size, "precision": args.precision, "steps": args.steps,
                        "warmup": args.warmup, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
            write()
    if skipped:
        notes.append(f"--time-budget {args.time_budget:.0f} s: {sum(skipped.values())} of {len(plan)} runs skipped "
                     "(their time predicted from the last run of the same arch would pass it), not in the table: "
                     + ", ".join(f"{arch} at batch {batch} ({n} run{'s' if n > 1 else ''})"
                                 for (arch, batch), n in skipped.items()) + ".")
    write()
    print()
    for line in ratio_rows(rows):
        print(line)
    for note in notes:
        print(note)
    full = full_profile(rows)
    if full:
        from fmicl_engine.train.profile import format_table

        print(f"\nfull profile: {full['arch']}, batch {full['batch']}, {full['objective']}, {full['backend']}")
        print(format_table(full["report"]))
    failed = [r for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"profile_sweep: {len(failed)} run(s) FAILED", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
