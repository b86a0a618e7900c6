"""The Markdown report of scripts/gpu_check.sh: the machine, the versions, each step's status and
time, and the benchmarks' tables, as one section ready to paste into docs/BENCHMARKS.md.

    python engine/bench/report.py --steps STEPS.tsv --out gpu_check.md [--loss loss.md]
        [--loss-json loss.jsonl] [--data data.md] [--profile profile.md] [--train train.jsonl]
        [--mode gpu|cpu] [--budget S] [--command TEXT]

STEPS.tsv: one line per step, tab-separated: name, status (ok | FAILED (rc N) | timed out |
skipped), seconds, time cap in seconds (0: none), notes. The fragments (loss.md, data.md) are
written by engine/bench/loss.py, data.py and profile_sweep.py (--markdown); loss.jsonl by loss.py
(--json: the largest 2N each backend held, below its table); train.jsonl by engine/bench/train.py.
A missing fragment reads "not run" with the step's notes. Every probe of the machine is allowed
to fail: the report is written whatever is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def shown_command(script: str, argv: list[str]) -> str:
    """The command as the Markdown shows it: without its output options (paths of this machine)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--json", "--markdown", "--root"):
            skip = True
        elif not arg.startswith(("--json=", "--markdown=", "--root=")):
            shown.append(arg)
    return " ".join([f"python engine/bench/{script}", *shown])


def where(path: str) -> str:
    """A path as the report may show it: relative inside the repository; outside it, only where
    (a report pasted into the docs must not name paths outside the repository)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return "installed package" if "-packages" in str(path) else "outside the repository"


def _run(command: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _version(*distributions: str) -> str:
    """The installed version of the first of these distributions (without importing it: importing
    torchvision alone takes seconds)."""
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name) + ("" if len(distributions) == 1 else f" ({name})")
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def nvcc_version() -> str:
    """The version of the first nvcc in cmake/cuda.cmake's order of search."""
    env = os.environ
    candidates = [env.get("CUDACXX", ""), *(f"{env[v]}/bin/nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if env.get(v)),
                  shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    nvcc = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    text = _run([nvcc, "--version"]) if nvcc else None
    if not text:
        return "not found"
    release = next((line.split("release", 1)[1].strip() for line in text.splitlines() if "release" in line), "?")
    return release


def machine_rows() -> list[tuple[str, str]]:
    """(what, value) of the machine and the software versions."""
    import torch

    rows: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = (f"{torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.0f} GiB, "
               f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs")
        smi = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                    "--format=csv,noheader"])
        if smi:
            driver, sm, sm_max, power = (x.strip() for x in smi.splitlines()[0].split(","))
            gpu += f"; driver {driver}, SM clock {sm} (max {sm_max}), power limit {power}"
        rows.append(("GPU", gpu))
    else:
        rows.append(("GPU", "none (torch.cuda.is_available() is False)"))
    cpu = _first("/proc/cpuinfo", "model name") or platform.processor() or "?"
    mem = _first("/proc/meminfo", "MemTotal")
    mem_gib = f", {int(mem.split()[0]) / 2**20:.0f} GiB" if mem else ""
    rows.append(("CPU", f"{cpu}, {os.cpu_count()} logical cores visible{mem_gib}"))
    rows.append(("OS", f"{platform.system()} {platform.release()}, {platform.machine()}"))
    rows.append(("Python", platform.python_version()))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    cudnn = f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if cudnn else "none"
    rows.append(("torch", f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN {cudnn}"))
    rows.append(("torchvision", _version("torchvision")))
    rows.append(("triton", _version("triton")))
    rows.append(("nvcc", nvcc_version()))
    rows.append(("DALI", _version("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-nightly-cuda130")))
    try:
        from fmicl_engine._ext import _C

        info = _C.build_info
        rows.append(("fmicl_engine._C", f"with_cuda {info['with_cuda']}, DALI operators "
                     f"{info.get('dali_version') or 'none'}, sources {str(info.get('sources_sha256'))[:12]}, "
                     f"loaded from {where(_C.__file__)}"))
    except Exception as err:  # noqa: BLE001
        rows.append(("fmicl_engine._C", f"does not load: {str(err).splitlines()[0][:200]}"))
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    if commit:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
        rows.append(("commit", commit + (" + uncommitted changes" if dirty else "")))
    else:
        rows.append(("commit", "not a git checkout"))
    return rows


def read_steps(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        if line.strip():
            cells = (line.split("\t") + [""] * 5)[:5]
            steps.append([c.replace("|", "\\|").strip() for c in cells])
    return steps


def fragment(path: str | None, step: list[str] | None) -> str:
    """A bench's Markdown, or why it is missing."""
    if path and Path(path).is_file() and Path(path).read_text().strip():
        return Path(path).read_text().strip() + "\n"
    if step is None:
        return "Not run.\n"
    name, status, _, _, notes = step
    return f"Not run ({status}{': ' + notes if notes else ''}).\n"


def largest_held(path: str | None) -> str:
    """From loss.py's JSON rows: the largest 2N each backend held per objective and d, and where it
    ran out of memory (the reference does long before the fused op)."""
    rows = []
    if path and Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    ladders: dict = {}
    for row in rows:
        ladders.setdefault((row.get("objective"), row.get("dim")), []).append(row)
    lines = []
    for (objective, dim), ladder in ladders.items():
        top = max(r["rows_2n"] for r in ladder)
        cells = []
        for column, name in (("fused", "fused"), ("eager", "eager reference"), ("compile", "torch.compile")):
            ok = [r["rows_2n"] for r in ladder if (r.get(column) or {}).get("status") == "ok"]
            oom = [r["rows_2n"] for r in ladder if (r.get(column) or {}).get("status") == "OOM"]
            if not ok and not oom:
                cells.append(f"{name} not run")
                continue
            held = f"{max(ok):,}" if ok else "none"
            if oom:
                held += f" (out of memory at {min(oom):,})"
            elif ok and max(ok) < top:
                held += " (not run above)"
            elif ok:
                held += " (the largest run)"
            cells.append(f"{name} {held}")
        lines.append(f"- {objective}, d = {dim}: " + "; ".join(cells) + ".")
    if not lines:
        return ""
    return "Largest 2N each backend held in this run:\n\n" + "\n".join(lines) + "\n"


def train_section(path: str | None, step: list[str] | None) -> str:
    rows = []
    if path and Path(path).is_file():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        return fragment(None, step)
    sys.path.insert(0, str(HERE))
    import train

    text = train.markdown_table(rows)
    modes = {row["mode"] for row in rows}
    if "synthetic" in modes:
        text += ("\nsynthetic: the engine's model, loss, optimiser and step on random tensors already "
                 "on the device (no data loading): the compute ceiling of one process.\n")
    if "imagefolder" in modes:
        text += ("\nimagefolder: `fmicl-engine run` end to end on generated JPEGs, DALI decoding and "
                 "augmenting.\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu", choices=("gpu", "cpu"))
    p.add_argument("--loss")
    p.add_argument("--loss-json", help="loss.py's --json rows: the largest 2N each backend held")
    p.add_argument("--data")
    p.add_argument("--profile", help="profile_sweep.py's --markdown")
    p.add_argument("--train")
    p.add_argument("--budget", type=float, default=0, help="the script's time budget, seconds (0: none)")
    p.add_argument("--seconds", type=float, default=0, help="the script's wall time so far")
    p.add_argument("--command", default="bash scripts/gpu_check.sh")
    p.add_argument("--files", nargs="*", default=[], help="the files beside the report, for its list")
    p.add_argument("--failed", action="append", default=[],
                   help="what failed outside the steps' table (the extension's import); repeatable")
    args = p.parse_args(argv)

    steps = read_steps(Path(args.steps))
    order = ["build", "CUDA tests", "emulated CUDA tests", "loss benchmark", "data benchmark", "step profile",
             "training"]
    steps.sort(key=lambda s: next((k for k, name in enumerate(order) if s[0].startswith(name)), len(order)))
    by_name = {s[0]: s for s in steps}
    failed = [s[0] for s in steps if s[1].startswith("FAILED") or s[1] == "timed out"]
    failed += args.failed
    machine = machine_rows()
    gpu = machine[0][1].split(",")[0].split(" x ", 1)[-1] if not machine[0][1].startswith("none") else "no GPU"
    day = time.strftime("%Y-%m-%d")
    outcome = f"FAILED ({', '.join(failed)})" if failed else "ok"
    mode = "GPU" if args.mode == "gpu" else "CPU only (the smoke forms; GPU_CHECK_CPU_ONLY=1 or --cpu)"

    text = [f"## GPU check: {gpu}, {day}", ""]
    text += [f"`{args.command}`: **{outcome}** in {args.seconds:.0f} s"
             + (f" (budget {args.budget:.0f} s)" if args.budget else "") + f"; mode: {mode}.", ""]
    text += ["### Machine and versions", "", "| | |", "|---|---|"]
    text += [f"| {what} | {value.replace('|', '/')} |" for what, value in machine]
    text += ["", "### Steps", "", "| step | status | s | cap s | notes |", "|---|---|---|---|---|"]
    text += [f"| {name} | {status} | {seconds} | {cap if cap not in ('', '0') else '—'} | {notes} |"
             for name, status, seconds, cap, notes in steps]
    text += ["", "### Fused loss vs the PyTorch reference and torch.compile", ""]
    text += [fragment(args.loss, by_name.get("loss benchmark"))]
    held = largest_held(args.loss_json)
    if held:
        text += [held]
    text += ["### Data pipeline: two-view images/s, DALI against the torchvision loader", ""]
    text += [fragment(args.data, by_name.get("data benchmark"))]
    text += ["### Step profile: where the time goes", ""]
    text += [fragment(args.profile, by_name.get("step profile"))]
    text += ["### Training throughput", ""]
    train_step = next((s for s in steps if s[0].startswith("training")), None)
    text += [train_section(args.train, train_step)]
    if args.files:
        text += ["### Files", "", "Beside this report: " + ", ".join(f"`{f}`" for f in args.files) + ".", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text).rstrip() + "\n")
    print(f"report: {out} ({outcome})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
