"""Pairwise-loss benchmark: forward+backward time and peak extra memory of the fused C++ op
against the eager PyTorch reference and torch.compile(reference), side by side in one run, with
the ratio to a matrix-product floor.

    python engine/bench/loss.py                                   # 2N = 1024 .. 8192, d = 128
    python engine/bench/loss.py --sizes 1024 4096 8192 16384 65536 --dims 128 256
    python engine/bench/loss.py --objectives fmicl-js infonce --repeats 5 --reference-max 4096
    python engine/bench/loss.py --device cuda --sizes 8192 --ladder 1048576 --time-budget 150 \
        --compile-dynamic --objectives fmicl-kl infonce --json loss.jsonl --markdown loss.md

Sizes are 2N, the rows of the pairwise matrix (N pairs per batch). One step = loss(z1, z2) and
backward() into z1, z2 (float32, --dtype). Each backend runs once untimed (torch.compile compiles
there), then --repeats timed steps; the median is reported. The reference materialises several
(2N x 2N) matrices, so it and its compiled twin are skipped above --reference-max (default 8192
on the CPU; on CUDA none). A backend that runs out of memory reads OOM in its columns and is not
run at larger sizes; when the fused op does, the ladder stops.

--ladder MAX doubles 2N from the first --sizes value up to MAX: the way to find the largest size
that fits. --time-budget bounds the run: before each column (backend x size) its time is predicted
from its last run, (2N / last 2N)^2 x that step x the steps it runs (+ the compilation, when each
size recompiles), and a column that would pass the budget's share is skipped (the notes say so);
the ladder stops where the fused op's would. --compile-dynamic compiles the reference once per
objective with dynamic shapes instead of once per size (a compilation takes 10-60 s). floor = 3 x the time of one (2N x d) @ (d x 2N) sgemm, the products a tiled
forward+backward cannot avoid without exploiting symmetry (the fused op does, so it can beat
it); above --floor-max rows the sgemm would not fit, so its time is measured at --floor-max and
scaled by (2N / floor-max)^2.

Peak extra memory (CPU): the process's peak resident set (VmHWM in /proc/self/status, reset
before each measured step by writing 5 to /proc/self/clear_refs) minus the resident set just
before the step, with inputs already allocated. glibc is told (mallopt) to serve every block of
64 KiB or more by mmap and to return it on free, so freed memory is not silently reused and the
resident set follows the live allocations. On CUDA: torch.cuda.max_memory_allocated minus the
memory allocated before the step.

The machine is shared: timings move with the load of other processes. Compare ratios within
one run, not across runs. OpenMP threads that spin while waiting (libgomp's default) make every
multi-threaded step, MKL's sgemm included, 5-15x slower while other processes hold the cores, so
this script sets OMP_WAIT_POLICY=PASSIVE before torch loads unless the environment sets it.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import torch  # noqa: E402

from report import shown_command  # noqa: E402  (engine/bench/report.py, beside this script)

from fmicl_engine.loss import fused, reference  # noqa: E402

FMICL = dict(sigma=0.5, tau=0.5, mu=1.0, alpha=1.0, tsallis_alpha=1.5, normalize=True)
OBJECTIVES = {
    "fmicl-js": ("fmicl", dict(divergence="js", similarity="gaussian", **FMICL)),
    "fmicl-kl": ("fmicl", dict(divergence="kl", similarity="gaussian", **FMICL)),
    "fmicl-kl-cosine": ("fmicl", dict(divergence="kl", similarity="cosine", **FMICL)),
    "infonce": ("infonce", dict(tau=0.5, normalize=True)),
    "align_uniform": ("align_uniform", dict(align_alpha=2.0, t=2.0, lambda_uniform=1.0)),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def return_freed_memory_to_the_os() -> None:
    """mallopt(M_MMAP_THRESHOLD, 64 KiB): large blocks are mmapped and unmapped on free."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD = -3 (malloc.h)
    except OSError:
        pass  # not glibc: the numbers may undercount reused memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_extra_mb(step, device: torch.device) -> float | None:
    """Peak memory above the current level during one call of step(), in MB (None: unsupported)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current resident set
    except OSError:
        return None
    step()
    return (_status_kb("VmHWM") - before) / 1024


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


def median_seconds(step, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgemm_floor_seconds(rows: int, dim: int, dtype, device, floor_max: int, repeats: int) -> float:
    """3 x one (rows x dim) @ (dim x rows) product, measured (or scaled from floor_max rows)."""
    measured = min(rows, floor_max)
    x = torch.randn(measured, dim, dtype=dtype, device=device)
    out = torch.empty(measured, measured, dtype=dtype, device=device)
    torch.mm(x, x.T, out=out)  # warm-up
    seconds = median_seconds(lambda: torch.mm(x, x.T, out=out), repeats, device)
    return 3 * seconds * (rows / measured) ** 2


def make_step(loss_fn, z1, z2):
    def step():
        loss = loss_fn(z1, z2)
        loss.backward()
        z1.grad = z2.grad = None
    return step


# ---------------------------------------------------------------------------------------------
# One column of one row: a backend at one size, out of memory handled
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Column:
    """One backend at one size. status: ok | OOM (ran out of memory) | skipped (see the row's
    notes: --reference-max, --no-compile, the time budget, or out of memory at a smaller size)."""

    seconds: float | None = None  # median timed step
    peak_mb: float | None = None  # peak extra memory of one step
    first_s: float | None = None  # the untimed first call (torch.compile compiles there)
    status: str = "ok"

    def cell(self, value, unit="", digits=3) -> str:
        return "OOM" if self.status == "OOM" else fmt(value, unit, digits)


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()  # inductor or a CPU allocator may wrap it
    return "out of memory" in text or "can't allocate memory" in text


def release_memory(device: torch.device, *tensors) -> None:
    for t in tensors:
        if t is not None:
            t.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def bench_backend(loss_fn, z1, z2, repeats, device) -> Column:
    step = make_step(loss_fn, z1, z2)
    start = time.perf_counter()
    step()  # warm-up (compiles, for torch.compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    return Column(median_seconds(step, repeats, device), peak_extra_mb(step, device), first)


def run_column(loss_fn, z1, z2, repeats, device) -> Column:
    """bench_backend, with running out of memory as a result (status OOM), not an error."""
    try:
        return bench_backend(loss_fn, z1, z2, repeats, device)
    except Exception as err:  # noqa: BLE001  (anything but OOM is re-raised)
        if not is_out_of_memory(err):
            raise
        print(f"  out of memory: {str(err).splitlines()[0][:160]}", flush=True)
    # Outside the except block: the traceback, which holds the step's tensors, is gone.
    release_memory(device, z1, z2)
    return Column(status="OOM")


class Budget:
    """Seconds left of a time budget (0 or less = unlimited)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds if seconds > 0 else math.inf

    def left(self) -> float:
        return self.end - time.monotonic()


def predicted_cost(last, rows: int, repeats: int, recompiles: bool) -> float:
    """Seconds a column would take at `rows`, from its last run at a smaller size ((rows, Column)
    or None): its step time scaled by (rows / last rows)^2, times the steps it runs (the warm-up,
    `repeats` timed, one for memory), plus the compilation when each size recompiles."""
    if last is None or last[1].seconds is None:
        return 0.0
    last_rows, column = last
    step = column.seconds * (rows / last_rows) ** 2
    cost = step * (repeats + 2)
    if recompiles and column.first_s is not None:
        cost += max(column.first_s - column.seconds, 0.0)
    return cost


def fmt(x, unit="", digits=3):
    return "—" if x is None else f"{x:.{digits}g}{unit}"




# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

HEADER = ("| objective | 2N | d | fused s | eager s | compile s | vs eager | vs compile | fused/floor "
          "| fused MB | eager MB | compile MB | compile 1st s | notes |")
LEGEND = [
    "fused / eager / compile s: median seconds of one forward + backward; MB: peak memory above the "
    "inputs during one step; OOM: out of memory; —: not run (notes).",
    "vs eager / vs compile: their time divided by the fused time (higher = fused faster).",
    "fused/floor: fused time divided by 3 sgemm of (2N x d)(d x 2N) (below 1 = faster than the floor).",
    "compile 1st s: the first call of torch.compile(reference) at that size, compilation included.",
]


def markdown_row(name, rows_2n, dim, fused: Column, eager: Column, comp: Column, floor, notes) -> str:
    def ratio(other: Column):
        return None if other.seconds is None or fused.seconds is None else other.seconds / fused.seconds

    return (f"| {name} | {rows_2n} | {dim} | {fused.cell(fused.seconds)} | {eager.cell(eager.seconds)} "
            f"| {comp.cell(comp.seconds)} | {fmt(ratio(eager), 'x')} | {fmt(ratio(comp), 'x')} "
            f"| {fmt(None if fused.seconds is None else fused.seconds / floor)} "
            f"| {fused.cell(fused.peak_mb, '', 4)} | {eager.cell(eager.peak_mb, '', 4)} "
            f"| {comp.cell(comp.peak_mb, '', 4)} | {fmt(comp.first_s)} | {'; '.join(notes)} |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="2N values")
    parser.add_argument("--ladder", type=int, metavar="MAX_2N",
                        help="instead of the list: double 2N from the first --sizes value up to MAX_2N, "
                             "stopping when the fused op runs out of memory or the time budget")
    parser.add_argument("--dims", type=int, nargs="+", default=[128])
    parser.add_argument("--objectives", nargs="+", default=["fmicl-js", "infonce"], choices=list(OBJECTIVES))
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (1 above --repeat-max rows)")
    parser.add_argument("--repeat-max", type=int, default=16384, help="largest 2N timed --repeats times")
    parser.add_argument("--reference-max", type=int,
                        help="largest 2N run with the reference and torch.compile(reference) "
                             "(default 8192 on CPU; on CUDA none: until it runs out of memory)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--compile-dynamic", action="store_true",
                        help="one torch.compile(reference, dynamic=True) per objective, reused across "
                             "sizes (default: a static compilation per size)")
    parser.add_argument("--time-budget", type=float, default=0,
                        help="seconds for the whole run (0 = none), shared evenly by the (objective, d) "
                             "ladders: a column whose predicted time would pass its share is skipped, and "
                             "a ladder stops where the fused op's would")
    parser.add_argument("--floor-max", type=int, default=8192, help="largest sgemm measured directly")
    parser.add_argument("--tile", type=int, default=0, help="fused op tile rows (0 = its default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", help="append one JSON line per row to this file")
    parser.add_argument("--markdown", help="write the table, its notes and the legend to this file")
    args = parser.parse_args(argv)
    if args.ladder:
        first = args.sizes[0]
        if first < 2 or args.ladder < first:
            parser.error("--ladder MAX_2N needs MAX_2N >= the first --sizes value (>= 2)")
        args.sizes = [first << k for k in range(64) if first << k <= args.ladder]
    if any(s < 2 or s % 2 for s in args.sizes):
        parser.error("--sizes: 2N must be even and at least 2")
    if args.reference_max is None:
        args.reference_max = 8192 if torch.device(args.device).type == "cpu" else 1 << 62
    return args


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    return f"CPU, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    return_freed_memory_to_the_os()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(f"torch {torch.__version__}, {describe_device(device)}, {args.dtype}", flush=True)
    lines = [HEADER, "|" + "---|" * 14]
    print(HEADER)
    notes_below: list[str] = []
    budget = Budget(args.time_budget)
    floors: dict = {}
    compile_first_s = None  # the last first call of torch.compile: the estimate where a ladder has none

    def write_markdown() -> None:  # after every row: a run stopped from outside keeps its table
        if not args.markdown:
            return
        command = shown_command("loss.py", sys.argv[1:] if argv is None else list(argv))
        text = [f"`{command}`", "", f"torch {torch.__version__}, {describe_device(device)}, "
                f"{args.dtype}, tile {args.tile or 'default'}.", "", *lines, ""]
        text += [*notes_below, *([""] if notes_below else []), *(f"- {t}" for t in LEGEND)]
        with open(args.markdown, "w") as out:
            out.write("\n".join(text) + "\n")
    ladders = [(name, dim) for name in args.objectives for dim in args.dims]
    for k, (name, dim) in enumerate(ladders):
        objective, hp = OBJECTIVES[name]
        reference_fn = getattr(reference, objective)

        def eager(a, b, reference_fn=reference_fn, hp=hp):
            return reference_fn(a, b, **hp)

        def fused_fn(a, b, objective=objective, hp=hp):
            return fused.pairwise_loss(objective, a, b, tile=args.tile, **hp)

        share = Budget(budget.left() / (len(ladders) - k)) if args.time_budget > 0 else Budget(0)
        last: dict = {}  # column -> (2N, Column) of its last run
        gone: dict = {}  # column -> why it is not run at larger sizes
        compiled = None
        if args.no_compile:
            gone["compile"] = "--no-compile"
        elif args.compile_dynamic:
            torch._dynamo.reset()
            compiled = torch.compile(eager, dynamic=True)
        for rows_2n in args.sizes:
            repeats = args.repeats if rows_2n <= args.repeat_max else 1
            cost = predicted_cost(last.get("fused"), rows_2n, repeats, recompiles=False)
            if cost > share.left():
                notes_below.append(f"{name}, d = {dim}: stopped before 2N = {rows_2n}: the fused op would "
                                   f"take ~{cost:.1f} s, {max(share.left(), 0):.1f} s of the time budget left.")
                print("  " + notes_below[-1], flush=True)
                write_markdown()
                break
            if not args.compile_dynamic and "compile" not in gone:
                # A fresh compilation per shape: dynamo's per-function recompile limit (8) would
                # otherwise silently fall back to eager after a few shapes.
                torch._dynamo.reset()
                compiled = torch.compile(eager, dynamic=False)
            n = rows_2n // 2
            gen = torch.Generator(device=device).manual_seed(rows_2n + dim)
            z1 = torch.randn(n, dim, generator=gen, device=device).to(dtype).requires_grad_(True)
            z2 = (z1.detach() + 0.5 * torch.randn(n, dim, generator=gen, device=device)).to(dtype)
            z2.requires_grad_(True)

            notes: list[str] = []
            columns: dict = {}
            columns["fused"] = run_column(fused_fn, z1, z2, repeats, device)
            if columns["fused"].status == "OOM":
                notes.append("fused: out of memory: the ladder stops")
                gone.setdefault("eager", "the fused op ran out of memory")
                gone.setdefault("compile", "the fused op ran out of memory")
            for column, fn in (("eager", eager), ("compile", compiled)):
                if column not in gone and rows_2n > args.reference_max:
                    gone[column] = f"2N > --reference-max {args.reference_max}"
                if column in gone:
                    columns[column] = Column(status="skipped")
                    notes.append(f"{column}: {gone[column]}")
                    continue
                cost = predicted_cost(last.get(column), rows_2n, repeats,
                                      recompiles=column == "compile" and not args.compile_dynamic)
                if column == "compile" and column not in last and compile_first_s is not None:
                    cost = compile_first_s  # a new objective compiles again
                if cost > share.left():
                    columns[column] = Column(status="skipped")
                    notes.append(f"{column}: ~{cost:.1f} s > {max(share.left(), 0):.1f} s left in the time budget")
                    continue
                columns[column] = run_column(fn, z1, z2, repeats, device)
                if column == "compile" and columns[column].first_s is not None and column not in last:
                    compile_first_s = columns[column].first_s
                if columns[column].status == "OOM":
                    gone[column] = f"out of memory at 2N = {rows_2n}"
            for column, result in columns.items():
                if result.status == "ok":
                    last[column] = (rows_2n, result)

            dt = torch.float32 if dtype != torch.float64 else dtype
            key = (min(rows_2n, args.floor_max), dim)
            if key not in floors:
                floors[key] = sgemm_floor_seconds(key[0], dim, dt, device, args.floor_max, max(repeats, 3))
            floor = floors[key] * (rows_2n / key[0]) ** 2
            line = markdown_row(name, rows_2n, dim, columns["fused"], columns["eager"], columns["compile"],
                                floor, notes)
            lines.append(line)
            print(line, flush=True)
            write_markdown()
            if args.json:
                row = {"objective": name, "rows_2n": rows_2n, "dim": dim, "dtype": args.dtype,
                       "device": describe_device(device), "torch": torch.__version__, "repeats": repeats,
                       "floor_s": floor, "notes": notes, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       **{c: dataclasses.asdict(r) for c, r in columns.items()}}
                with open(args.json, "a") as out:
                    out.write(json.dumps(row) + "\n")
            del z1, z2
            release_memory(device)
            if columns["fused"].status == "OOM":
                break
    print()
    for note in notes_below:
        print(note)
    for text in LEGEND:
        print(text)
    write_markdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
