"""SyncBatchNorm over 2 ranks (gloo, CPU) equals torch's BatchNorm on one process over the global batch.

One spawn of two processes runs every case (process start-up dominates the runtime); each rank
saves what it computed on its rows and the tests compare that with nn.BatchNorm1d/2d on the
whole batch: outputs and input gradients row by row, weight/bias gradients summed over ranks,
running statistics and num_batches_tracked after two training steps, then eval-mode outputs.
Without a process group SyncBatchNorm must be BatchNorm exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from fmicl_engine.models import SyncBatchNorm, build_model, convert_sync_batchnorm

WORLD = 2
CHANNELS = 3
STEPS = 2


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]  # per-sample shape after the batch dim: (C,), (C, L) or (C, H, W)
    rows: tuple[int, int]  # rank 0's and rank 1's batch sizes
    dtype: torch.dtype
    momentum: float | None = 0.1
    affine: bool = True

    def global_rows(self, rank: int) -> slice:
        start = sum(self.rows[:rank])
        return slice(start, start + self.rows[rank])


CASES = {
    "1d-float64": Case((CHANNELS,), (4, 4), torch.float64),
    "1d-uneven-float64-cumulative": Case((CHANNELS,), (2, 5), torch.float64, momentum=None),
    "3d-float64": Case((CHANNELS, 5), (3, 3), torch.float64),
    "2d-float64": Case((CHANNELS, 4, 4), (2, 2), torch.float64),
    "2d-uneven-float64-no-affine": Case((CHANNELS, 3, 3), (1, 3), torch.float64, affine=False),
    "2d-one-rank-empty-float64": Case((CHANNELS, 2, 2), (0, 3), torch.float64),
    "1d-float32": Case((CHANNELS,), (4, 4), torch.float32),
    "2d-uneven-float32": Case((CHANNELS, 4, 4), (3, 2), torch.float32),
}
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def case_data(case: Case):
    """Per step (global input, global output weights of the loss), and the initial weight and bias."""
    gen = torch.Generator().manual_seed(0)
    n = sum(case.rows)
    steps = [(3 * torch.randn(n, *case.shape, generator=gen, dtype=torch.float64) + 1,
              torch.randn(n, *case.shape, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]
    weight, bias = torch.rand(CHANNELS, generator=gen) + 0.5, torch.randn(CHANNELS, generator=gen)
    return [(x.to(case.dtype), g.to(case.dtype)) for x, g in steps], weight.to(case.dtype), bias.to(case.dtype)


def run_steps(bn: nn.Module, case: Case, rows: slice) -> dict:
    """Two training steps (loss = sum(output * g) over ``rows``), then an eval forward: what each produced."""
    steps, weight, bias = case_data(case)
    if case.affine:
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    out = {"y": [], "dx": [], "dweight": [], "dbias": []}
    for x, g in steps:
        x = x[rows].clone().requires_grad_()
        y = bn(x)
        (y * g[rows]).sum().backward()
        out["y"].append(y.detach())
        out["dx"].append(x.grad)
        if case.affine:
            out["dweight"].append(bn.weight.grad.clone())
            out["dbias"].append(bn.bias.grad.clone())
            bn.zero_grad()
    out.update(running_mean=bn.running_mean.clone(), running_var=bn.running_var.clone(),
               num_batches_tracked=bn.num_batches_tracked.clone())
    with torch.no_grad():
        out["eval_y"] = bn.eval()(steps[0][0][rows])
    return out


def reference_bn(case: Case) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}[len(case.shape)]
    return cls(CHANNELS, momentum=case.momentum, affine=case.affine, dtype=case.dtype)


def too_few_values_error(rank: int) -> str:
    """Rank 0 holds one row, rank 1 none: one value per channel over the group must raise on both ranks."""
    bn = SyncBatchNorm(CHANNELS)
    try:
        bn(torch.randn(1 - rank, CHANNELS))
    except ValueError as err:
        return str(err)
    return ""


def half_precision(rank: int) -> dict:
    """bfloat16 input: float32 statistics, bfloat16 output."""
    x = torch.randn(8, CHANNELS, 4, 4, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    bn = SyncBatchNorm(CHANNELS)
    return {"x": x, "y": bn(x[4 * rank:4 * rank + 4]), "running_mean": bn.running_mean}


def _worker(rank: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, case in CASES.items():
            bn = SyncBatchNorm(CHANNELS, momentum=case.momentum, affine=case.affine, dtype=case.dtype)
            results[name] = run_steps(bn, case, case.global_rows(rank))
        results["too-few-values"] = too_few_values_error(rank)
        results["bfloat16"] = half_precision(rank)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sync_batchnorm")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_batchnorm_on_the_global_batch(rank_results, name):
    case = CASES[name]
    tol = TOLERANCE[case.dtype]
    expected = run_steps(reference_bn(case), case, slice(None))
    ranks = [results[name] for results in rank_results]
    for key in ("y", "dx"):
        for step in range(STEPS):
            for rank, got in enumerate(ranks):
                torch.testing.assert_close(got[key][step], expected[key][step][case.global_rows(rank)], **tol,
                                           msg=lambda m: f"{key} step {step} rank {rank}: {m}")
    for key in ("dweight", "dbias"):  # each rank's gradient is its share; DDP's average makes it the sum
        for step in range(len(expected[key])):
            torch.testing.assert_close(sum(got[key][step] for got in ranks), expected[key][step], **tol)
    for got in ranks:
        torch.testing.assert_close(got["running_mean"], expected["running_mean"], **tol)
        torch.testing.assert_close(got["running_var"], expected["running_var"], **tol)
        assert got["num_batches_tracked"].item() == expected["num_batches_tracked"].item() == STEPS
    for rank, got in enumerate(ranks):  # eval mode: the running statistics, nothing synchronised
        torch.testing.assert_close(got["eval_y"], expected["eval_y"][case.global_rows(rank)], **tol)


def test_too_few_values_raise_on_every_rank(rank_results):
    for results in rank_results:
        assert "expected more than 1 value per channel" in results["too-few-values"]


def test_bfloat16_input_uses_float32_statistics(rank_results):
    x = rank_results[0]["bfloat16"]["x"]
    reference = nn.BatchNorm2d(CHANNELS)
    expected = reference(x.float())
    got = torch.cat([results["bfloat16"]["y"] for results in rank_results])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.to(torch.bfloat16))
    # bfloat16 sums would be off by ~1e-2 relative; float32 ones agree to float32 precision
    assert rank_results[0]["bfloat16"]["running_mean"].dtype == torch.float32
    torch.testing.assert_close(rank_results[0]["bfloat16"]["running_mean"], reference.running_mean)


@pytest.mark.parametrize("shape", [(6, CHANNELS), (6, CHANNELS, 4, 4)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_batchnorm(shape, momentum):
    assert not dist.is_initialized()
    case = Case(shape[1:], (shape[0], 0), torch.float32, momentum=momentum)
    got = run_steps(SyncBatchNorm(CHANNELS, momentum=momentum), case, slice(None))
    expected = run_steps(reference_bn(case), case, slice(None))
    for key, value in expected.items():
        values = value if isinstance(value, list) else [value]
        got_values = got[key] if isinstance(value, list) else [got[key]]
        assert all(torch.equal(a, b) for a, b in zip(got_values, values, strict=True)), key


def test_convert_replaces_every_batchnorm_on_cpu_and_keeps_state():
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", in_channels=3, projector_layers=3, projector_batchnorm=True,
                        projector_hidden_dim=8, projector_out_dim=4)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.num_batches_tracked.fill_(7)
            module.momentum = None
    model.encoder.layer1[0].bn1.eval()
    n_batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    parameters = list(model.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    model.encoder.layer1[0].bn1.eval()

    converted = convert_sync_batchnorm(model, torch.device("cpu"))

    assert sum(isinstance(m, SyncBatchNorm) for m in converted.modules()) == n_batchnorms == 20 + 2
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in converted.modules())
    assert converted.state_dict().keys() == state.keys()
    assert all(torch.equal(converted.state_dict()[key], value) for key, value in state.items())
    assert all(a is b for a, b in zip(converted.parameters(), parameters, strict=True))  # an optimiser still sees them
    assert not converted.encoder.layer1[0].bn1.training and converted.encoder.bn1.training
    assert all(m.momentum is None and m.eps == 1e-5 for m in converted.modules() if isinstance(m, SyncBatchNorm))
    with torch.no_grad():
        got = converted.eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_convert_keeps_options_of_a_lone_batchnorm():
    bn = nn.BatchNorm1d(CHANNELS, eps=1e-3, momentum=0.3, affine=False, track_running_stats=False)
    converted = convert_sync_batchnorm(bn, torch.device("cpu"))
    assert isinstance(converted, SyncBatchNorm)
    assert (converted.eps, converted.momentum, converted.affine, converted.track_running_stats) == (1e-3, 0.3, False, False)
    assert converted.weight is None and converted.running_mean is None


def test_convert_on_cuda_uses_torch_syncbatchnorm():
    # conversion only swaps modules, so the CUDA branch is checkable without a GPU
    model = build_model("digits_cnn", in_channels=1, cnn_width=4, projector_batchnorm=True)
    converted = convert_sync_batchnorm(model, torch.device("cuda"))
    kinds = {type(m) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.SyncBatchNorm}
