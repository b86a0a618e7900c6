"""Pairwise-loss benchmark: forward+backward time and peak extra memory of the fused C++ op
against the eager PyTorch reference and torch.compile(reference), side by side in one run, with
the ratio to a matrix-product floor.

    python engine/bench/loss.py                                   # 2N = 1024 .. 8192, d = 128
    python engine/bench/loss.py --sizes 1024 4096 8192 16384 65536 --dims 128 256
    python engine/bench/loss.py --objectives fmicl-js infonce --repeats 5 --reference-max 4096

Sizes are 2N, the rows of the pairwise matrix (N pairs per batch). One step = loss(z1, z2) and
backward() into z1, z2 (float32, --dtype). Each backend runs once untimed (torch.compile compiles
there), then --repeats timed steps; the median is reported. The reference materialises several
(2N x 2N) matrices, so it and its compiled twin are skipped above --reference-max (say so in the
table). floor = 3 x the time of one (2N x d) @ (d x 2N) sgemm, the products a tiled
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
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import torch  # noqa: E402

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


def bench_backend(loss_fn, z1, z2, repeats, device):
    step = make_step(loss_fn, z1, z2)
    start = time.perf_counter()
    step()  # warm-up (compiles, for torch.compile)
    first = time.perf_counter() - start
    return median_seconds(step, repeats, device), peak_extra_mb(step, device), first


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def fmt(x, unit="", digits=3):
    return "—" if x is None else f"{x:.{digits}g}{unit}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="2N values")
    parser.add_argument("--dims", type=int, nargs="+", default=[128])
    parser.add_argument("--objectives", nargs="+", default=["fmicl-js", "infonce"], choices=list(OBJECTIVES))
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (1 above 16384 rows)")
    parser.add_argument("--reference-max", type=int, default=8192,
                        help="largest 2N run with the reference and torch.compile(reference)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--floor-max", type=int, default=8192, help="largest sgemm measured directly")
    parser.add_argument("--tile", type=int, default=0, help="fused op tile rows (0 = its default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    return_freed_memory_to_the_os()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    header = ("| objective | 2N | d | fused s | eager s | compile s | vs eager | vs compile | fused/floor "
              "| fused MB | eager MB | compile MB |")
    rows = [header, "|" + "---|" * 12]
    print(header)
    for name in args.objectives:
        objective, hp = OBJECTIVES[name]
        reference_fn = getattr(reference, objective)

        def eager(a, b, reference_fn=reference_fn, hp=hp):
            return reference_fn(a, b, **hp)

        for dim in args.dims:
            for rows_2n in args.sizes:
                # A fresh compilation per shape: dynamo's per-function recompile limit (8) would
                # otherwise silently fall back to eager after a few shapes.
                torch._dynamo.reset()
                compiled = None if args.no_compile else torch.compile(eager, dynamic=False)
                n = rows_2n // 2
                repeats = args.repeats if rows_2n <= 16384 else 1
                gen = torch.Generator(device=device).manual_seed(rows_2n + dim)
                z1 = torch.randn(n, dim, generator=gen, device=device).to(dtype).requires_grad_(True)
                z2 = (z1.detach() + 0.5 * torch.randn(n, dim, generator=gen, device=device)).to(dtype)
                z2.requires_grad_(True)

                t_fused, m_fused, _ = bench_backend(
                    lambda a, b: fused.pairwise_loss(objective, a, b, tile=args.tile, **hp), z1, z2, repeats, device)
                t_eager = m_eager = t_comp = m_comp = None
                note = ""
                if rows_2n <= args.reference_max:
                    t_eager, m_eager, _ = bench_backend(eager, z1, z2, repeats, device)
                    if compiled is not None:
                        t_comp, m_comp, _ = bench_backend(compiled, z1, z2, repeats, device)
                else:
                    note = f" (reference skipped: 2N > {args.reference_max})"
                floor = sgemm_floor_seconds(rows_2n, dim, torch.float32 if dtype != torch.float64 else dtype,
                                            device, args.floor_max, repeats)
                ratio = lambda other: None if other is None else other / t_fused  # noqa: E731
                line = (f"| {name} | {rows_2n} | {dim} | {fmt(t_fused)} | {fmt(t_eager)} | {fmt(t_comp)} "
                        f"| {fmt(ratio(t_eager), 'x')} | {fmt(ratio(t_comp), 'x')} | {fmt(t_fused / floor)} "
                        f"| {fmt(m_fused, '', 4)} | {fmt(m_eager, '', 4)} | {fmt(m_comp, '', 4)} |")
                rows.append(line)
                print(line + note, flush=True)
    print("\nvs eager / vs compile: their time divided by the fused time (higher = fused faster).")
    print("fused/floor: fused time divided by 3 sgemm of (2N x d)(d x 2N) (below 1 = faster than the floor).")


if __name__ == "__main__":
    sys.exit(main())
