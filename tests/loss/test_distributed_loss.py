"""Distributed negatives over W=2 ranks equal one process on the global batch.

One spawn of two processes computes every case (process start-up dominates the runtime); the
tests then compare each case with the pure-PyTorch reference on the global batch, float64:
  - mean over ranks of the returned values == the global loss;
  - rank r's gradient of its own rows / W == the global gradient of those rows (the W that DDP's
    averaging cancels, see distributed.py);
and show that the same comparison rejects five classic bugs, each made by swapping one piece of
distributed.py inside the workers. Real DDP runs of the public losses with
gather_distributed=True check the parameter gradients against one process; float16 inputs check
that the uniformity runs in float32 and that an overflowing gradient is refused on every rank. Everything runs on
gloo (CPU); with two GPUs, again on NCCL with the CUDA kernels. Inside DeferredFiniteChecks(group)
the distributed path reads nothing on the host (neither in Python nor in an ATen op, the fused ops'
C++ included) and check() raises on every rank.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from host_reads import host_reads, native_reads

from fmicl_engine import _ext
from fmicl_engine.loss import (DeferredFiniteChecks, LossArgumentError, NonFiniteLossError, distributed, functional,
                               fused, ops, reference)
from fmicl_engine.loss.validation import check_finite_loss

WORLD = 2
N_LOCAL, DIM, IN_DIM = 3, 5, 7


def _fmicl_case(divergence, similarity, sigma=0.8, tau=0.5, mu=1.0, alpha=1.0, tsallis_alpha=1.5, normalize=True):
    hp = dict(divergence=divergence, similarity=similarity, sigma=sigma, tau=tau, mu=mu, alpha=alpha,
              tsallis_alpha=tsallis_alpha, normalize=normalize)
    loss = functools.partial(distributed.gathered_loss, functools.partial(ops.fmicl_fwd_bwd, **hp))
    return loss, lambda z1, z2: reference.fmicl(z1, z2, **hp)


def _uniformity_reference(z1, z2, t):
    """L_uniform alone: align_uniform with lambda 1 minus lambda 0."""
    both = reference.align_uniform(z1, z2, align_alpha=2.0, t=t, lambda_uniform=1.0)
    return both - reference.align_uniform(z1, z2, align_alpha=2.0, t=t, lambda_uniform=0.0)


# name -> (distributed loss of this rank's views, reference loss of the global batch)
CASES = {
    "fmicl-kl-gaussian": _fmicl_case("kl", "gaussian"),
    "fmicl-js-cosine": _fmicl_case("js", "cosine", tau=0.4),
    "fmicl-vlc-gaussian-mu-alpha": _fmicl_case("vlc", "gaussian", sigma=1.2, mu=1.3, alpha=0.7),
    "fmicl-pearson-gaussian-raw": _fmicl_case("pearson", "gaussian", sigma=2.0, normalize=False),
    "fmicl-tsallis-cosine": _fmicl_case("tsallis", "cosine", tau=0.6, tsallis_alpha=2.5),
    "fmicl-kl-cosine-alpha-0": _fmicl_case("kl", "cosine", tau=0.05, alpha=0.0),
    "infonce": (functools.partial(distributed.gathered_loss, functools.partial(ops.infonce_fwd_bwd, tau=0.2)),
                lambda z1, z2: reference.infonce(z1, z2, tau=0.2, normalize=True)),
    "uniformity": (functools.partial(distributed.gathered_uniformity, functools.partial(ops.uniformity_fwd_bwd, t=2.0)),
                   lambda z1, z2: _uniformity_reference(z1, z2, 2.0)),
}
MUTANT_CASE = "fmicl-kl-gaussian"


def global_batch():
    """Raw (unnormalised) z1, z2 (W·n, d), identical on every rank."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, WORLD * N_LOCAL, DIM, generator=g, dtype=torch.float64).unbind()


def rows_of(rank):
    return slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)


# --- mutants: one classic bug each, made by swapping pieces of distributed.py -----------------
_correct_sum_row_grads = distributed.sum_row_grads


def _own_rows_only(grad_global, group):  # the gradient is not summed across ranks
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    return distributed.from_global_layout(grad_global, world).chunk(world)[rank].chunk(2)


def _averaged(grad_global, group):  # averaged (all-reduce mean) instead of summed: a spurious 1/W
    return tuple(g / dist.get_world_size(group) for g in _correct_sum_row_grads(grad_global, group))


def _rank_major_layout(rows, world):  # the gathered [z1; z2] blocks left rank-major
    return rows


def _rank_major_anchors(rank, world, n):  # this rank's own rows in that layout
    return torch.arange(2 * n, dtype=torch.int64) + rank * 2 * n


def _local_anchors(rank, world, n):  # local indices: every rank takes rank 0's anchors
    local = torch.arange(n, dtype=torch.int64)
    return torch.cat([local, local + world * n])


def _all_anchors(rank, world, n):  # every rank computes every anchor
    return torch.arange(2 * world * n, dtype=torch.int64)


MUTANTS = {
    "grad-not-summed-across-ranks": {"sum_row_grads": _own_rows_only},
    "grad-divided-by-world-size": {"sum_row_grads": _averaged},
    # positives then pair rank 0's z1 rows with rank 1's z1 rows: wrong positive offsets
    "positives-in-rank-major-layout": {"to_global_layout": _rank_major_layout,
                                       "from_global_layout": _rank_major_layout,
                                       "rank_anchors": _rank_major_anchors},
    "anchors-in-local-indices": {"rank_anchors": _local_anchors},
    "anchors-duplicated-on-every-rank": {"rank_anchors": _all_anchors},
}


@contextlib.contextmanager
def swapped(module, replacements):
    saved = {name: getattr(module, name) for name in replacements}
    for name, fn in replacements.items():
        setattr(module, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


# --- the ranks -----------------------------------------------------------------------------
def run_rank(case, rank, device):
    """This rank's (returned value, grad of its z1 rows, grad of its z2 rows), on the CPU."""
    loss_fn, _ = CASES[case]
    z1g, z2g = global_batch()
    z1 = z1g[rows_of(rank)].to(device).requires_grad_()
    z2 = z2g[rows_of(rank)].to(device).requires_grad_()
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach().cpu(), z1.grad.cpu(), z2.grad.cpu()


def no_grad_value(case, rank, device):
    """This rank's returned value under no_grad: the ops then compute no gradient."""
    loss_fn, _ = CASES[case]
    z1g, z2g = global_batch()
    with torch.no_grad():
        return loss_fn(z1g[rows_of(rank)].to(device).requires_grad_(), z2g[rows_of(rank)].to(device)).cpu()


def make_encoder():
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, DIM, dtype=torch.float64)


def encoder_inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, WORLD * N_LOCAL, IN_DIM, generator=g, dtype=torch.float64).unbind()


# The public losses, as a training loop calls them: name -> loss(z1, z2, **backend keywords).
PUBLIC_LOSSES = {
    "fmicl": lambda z1, z2, **kw: functional.fmicl_loss(z1, z2, "js", "gaussian", sigma=0.7, **kw),
    "infonce": lambda z1, z2, **kw: functional.infonce_loss(z1, z2, tau=0.3, **kw),
    "align_uniform": lambda z1, z2, **kw: functional.align_uniform_loss(z1, z2, t=2.0, **kw),
}


def ddp_step(loss_name, rank, device):
    """Parameter gradients of a DDP-wrapped linear encoder trained with gather_distributed=True."""
    model = make_encoder().to(device)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    x1, x2 = (x[rows_of(rank)].to(device) for x in encoder_inputs())
    PUBLIC_LOSSES[loss_name](model(x1), model(x2), gather_distributed=True).backward()  # DDP averages
    return [p.grad.cpu() for p in model.module.parameters()]


# --- float16 inputs ------------------------------------------------------------------------
# Rows of norm ~HALF_NORM (float16 subnormals): normalising scales every gradient by 1/|z|, so the
# gradient of the pair sums dS/dz overflows float16 while that of L_uniform (dS/dz / S) does not.
HALF_N_LOCAL, HALF_NORM, HALF_T = 32, 3e-5, 2.0
# f-MICL SH with a small sigma: r^(-1/2) = e^(D / 4 sigma^2) ~ 1e6, a finite loss in float32 whose
# gradient overflows float16.
OVERFLOW_HP = dict(divergence="sh", similarity="gaussian", sigma=0.25)


def half_global_batch():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, WORLD * HALF_N_LOCAL, DIM, generator=g, dtype=torch.float64)
    return (HALF_NORM * z / z.norm(dim=-1, keepdim=True)).half().unbind()


def run_half_uniformity(rank, device):
    rows = slice(rank * HALF_N_LOCAL, (rank + 1) * HALF_N_LOCAL)
    z1, z2 = (z[rows].to(device).requires_grad_() for z in half_global_batch())
    loss = distributed.gathered_uniformity(functools.partial(ops.uniformity_fwd_bwd, t=HALF_T), z1, z2)
    loss.backward()
    return loss.detach().cpu(), z1.grad.cpu(), z2.grad.cpu()


def overflow_batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(2, WORLD * N_LOCAL, DIM, generator=g, dtype=torch.float64).half().unbind()


def raised(call):
    """(argument, message) of the NonFiniteLossError that call() raises, or None."""
    try:
        call()
    except NonFiniteLossError as err:
        return err.argument, str(err)
    return None


def overflow_errors(rank, device):
    z1, z2 = (z[rows_of(rank)].to(device).requires_grad_() for z in overflow_batch())
    # only rank 1's share overflows: rank 0 must raise too, or it would wait in the next collective
    share = torch.full((2, DIM), float("inf") if rank == 1 else 1.0, device=device)
    return {
        "public-loss": raised(lambda: functional.fmicl_loss(z1, z2, **OVERFLOW_HP, gather_distributed=True)),
        "one-rank-share": raised(lambda: fused.check_finite_gradient(share, "fmicl", "sigma", dist.group.WORLD)),
        "one-rank-loss": raised(lambda: check_finite_loss(
            torch.tensor(float("inf") if rank == 1 else 1.0, device=device), "fmicl", scale="sigma",
            group=dist.group.WORLD)),
    }


def deferred_errors(rank, device):
    """overflow_errors' cases inside DeferredFiniteChecks(group): what each check() raises, the
    host reads (Python's and the ATen ops') of the distributed losses' forward and backward, and
    the all-reduces of f-MICL's (none: its loss has none, and the checks wait for check())."""
    z1, z2 = (z[rows_of(rank)].to(device).requires_grad_() for z in overflow_batch())
    found = {"all-reduces": 0}

    def counted_all_reduce(*args, **kwargs):
        found["all-reduces"] += 1
        return _all_reduce(*args, **kwargs)

    _all_reduce = dist.all_reduce
    with DeferredFiniteChecks(group=dist.group.WORLD) as checks:
        with native_reads() as native, host_reads() as reads:
            with swapped(dist, {"all_reduce": counted_all_reduce}):
                functional.fmicl_loss(z1, z2, **OVERFLOW_HP, gather_distributed=True).backward()
            for loss_fn in PUBLIC_LOSSES.values():
                loss_fn(z1.float(), z2.float(), gather_distributed=True).backward()
        found["public-loss"] = raised(checks.check)
        check_finite_loss(torch.tensor(float("inf") if rank == 1 else 1.0, device=device), "fmicl",
                          scale="sigma", group=dist.group.WORLD)
        found["one-rank-loss"] = raised(checks.check)
        found["after-reset"] = raised(checks.check)
    found["reads"] = reads + native
    return found


def _worker(rank, backend, init_file, out_dir):
    device = torch.device("cpu") if BACKENDS[backend] == "cpu" else torch.device("cuda", rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {case: run_rank(case, rank, device) for case in CASES}
        results["no-grad"] = {case: no_grad_value(case, rank, device) for case in CASES}
        for name, replacements in MUTANTS.items():
            with swapped(distributed, replacements):
                results["mutant:" + name] = run_rank(MUTANT_CASE, rank, device)
        for loss_name in PUBLIC_LOSSES:
            results["ddp:" + loss_name] = ddp_step(loss_name, rank, device)
        results["uniformity-float16"] = run_half_uniformity(rank, device)
        results["overflow"] = overflow_errors(rank, device)
        results["deferred"] = deferred_errors(rank, device)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# gloo on the CPU everywhere; NCCL with the CUDA kernels where there are two GPUs.
BACKENDS = {"gloo": "cpu", "nccl": "cuda"}


def _backend_param(backend):
    runnable = backend == "gloo" or (torch.cuda.device_count() >= WORLD and dist.is_nccl_available()
                                     and _ext._C.build_info["with_cuda"])
    reason = f"{backend} needs {WORLD} GPUs and the CUDA kernels (FMICL_CUDA=ON)"
    return pytest.param(backend, marks=[] if runnable else pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module", params=[_backend_param(b) for b in BACKENDS])
def rank_results(request, tmp_path_factory):
    for attempt in (1, 2):
        tmp = tmp_path_factory.mktemp("distributed")
        try:
            mp.spawn(_worker, args=(request.param, str(tmp / "store"), str(tmp)), nprocs=WORLD)
            break
        except mp.ProcessExitedException as err:
            # Seen once in ~25 full-suite runs on a loaded 2-core machine: a worker killed by
            # SIGABRT ("terminate called without an active exception") before writing its results,
            # not reproduced since. A worker killed by a signal is retried once with a fresh store;
            # an exception raised in a worker (ProcessRaisedException) is never retried, and the
            # comparisons themselves run here, on the results, so a wrong result still fails.
            if attempt == 2 or err.signal_name is None:
                raise
            warnings.warn(f"distributed workers died ({err}); retrying once", RuntimeWarning)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


# --- the comparison ------------------------------------------------------------------------
def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def mismatch(per_rank, case):
    """'' when the mean of the ranks' values is the global loss and rank r's row gradients / W are
    the global ones; otherwise what differs."""
    _, reference_loss = CASES[case]
    z1g, z2g = (z.clone().requires_grad_() for z in global_batch())
    loss = reference_loss(z1g, z2g)
    grad1, grad2 = torch.autograd.grad(loss, (z1g, z2g))
    found = []
    value = torch.stack([value for value, _, _ in per_rank]).mean()
    if not close(value, loss.detach()):
        found.append(f"mean value {value.item():.12g} != global loss {loss.item():.12g}")
    for rank, (_, g1, g2) in enumerate(per_rank):
        for view, got, want in (("z1", g1 / WORLD, grad1[rows_of(rank)]), ("z2", g2 / WORLD, grad2[rows_of(rank)])):
            if not close(got, want):
                found.append(f"rank {rank} grad {view} / W off by {(got - want).abs().max().item():.3g}")
    return "; ".join(found)


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_process(rank_results, case):
    assert not mismatch([r[case] for r in rank_results], case)


@pytest.mark.parametrize("case", CASES)
def test_no_grad_gives_the_same_value(rank_results, case):
    for r in rank_results:
        torch.testing.assert_close(r["no-grad"][case], r[case][0], rtol=1e-14, atol=0)


def test_uniformity_value_is_the_global_loss_on_every_rank(rank_results):
    values = [r["uniformity"][0] for r in rank_results]
    assert close(values[0], values[1])


@pytest.mark.parametrize("mutant", MUTANTS)
def test_comparison_rejects_classic_bug(rank_results, mutant):
    assert mismatch([r["mutant:" + mutant] for r in rank_results], MUTANT_CASE)


@pytest.mark.parametrize("loss_name", PUBLIC_LOSSES)
def test_ddp_parameter_gradients_equal_one_process(rank_results, loss_name):
    model = make_encoder()
    x1, x2 = encoder_inputs()
    PUBLIC_LOSSES[loss_name](model(x1), model(x2), backend="reference").backward()
    for rank_grads in (r["ddp:" + loss_name] for r in rank_results):
        for got, want in zip(rank_grads, (p.grad for p in model.parameters()), strict=True):
            assert close(got, want), f"parameter gradient off by {(got - want).abs().max().item():.3g}"


def test_float16_uniformity_runs_in_float32(rank_results):
    z1g, z2g = half_global_batch()
    # in float16 the op's gradient of the pair sums overflows: the inputs test the cast
    _, grad_sums = ops.uniformity_fwd_bwd(torch.cat([z1g, z2g]), t=HALF_T, needs_grad=True)
    assert not torch.isfinite(grad_sums).all()
    z1w, z2w = (z.double().requires_grad_() for z in (z1g, z2g))  # the same float16 values, widened
    loss = _uniformity_reference(z1w, z2w, HALF_T)
    grad1, grad2 = torch.autograd.grad(loss, (z1w, z2w))
    for rank, (value, g1, g2) in enumerate(r["uniformity-float16"] for r in rank_results):
        assert g1.dtype == torch.float16
        torch.testing.assert_close(value.double(), loss.detach(), rtol=1e-6, atol=0)
        rows = slice(rank * HALF_N_LOCAL, (rank + 1) * HALF_N_LOCAL)
        for got, want in ((g1, grad1[rows]), (g2, grad2[rows])):  # float32 math, rounded to float16 once
            torch.testing.assert_close(got.double() / WORLD, want, rtol=2e-3, atol=1e-3 * want.abs().max().item())


def single_process_overflow():
    """The error of the global batch in one process (the gradient is computed: the views need one)."""
    z1g, z2g = (z.requires_grad_() for z in overflow_batch())
    return raised(lambda: functional.fmicl_loss(z1g, z2g, **OVERFLOW_HP, backend="fused"))


def test_overflow_is_refused_on_every_rank(rank_results):
    single = single_process_overflow()
    assert single is not None and "gradient" in single[1]  # the loss is finite, its gradient is not
    for overflow in (r["overflow"] for r in rank_results):
        assert overflow["public-loss"] == single
        assert overflow["one-rank-share"] is not None
        assert overflow["one-rank-loss"] is not None and overflow["one-rank-loss"][0] == "sigma"


def test_needs_a_process_group():
    z = torch.randn(2, 3)
    with pytest.raises(LossArgumentError, match="init_process_group"):
        distributed.gathered_loss(functools.partial(ops.infonce_fwd_bwd, tau=0.5), z, z)


DEFERRED_NOTE = " (a deferred check: it happened within the steps since the last check)"


def test_deferred_checks_read_nothing_and_raise_on_every_rank(rank_results):
    argument, message = single_process_overflow()
    deferred = [r["deferred"] for r in rank_results]
    for found in deferred:
        assert found["reads"] == [] and found["all-reduces"] == 0
        assert found["public-loss"] is not None and found["after-reset"] is None
    # the rank whose share overflowed raises the immediate error; the others say another rank failed
    assert (argument, message + DEFERRED_NOTE) in [found["public-loss"] for found in deferred]
    one_rank = [found["one-rank-loss"] for found in deferred]
    assert one_rank[1][0] == "sigma" and one_rank[1][1].startswith("fmicl loss is inf")
    assert one_rank[0][0] is None and "another rank" in one_rank[0][1]
