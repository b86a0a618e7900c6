"""The CUDA kernels' logic, run on the CPU: cpp/cuda/pairwise_cuda.cu compiled as C++ against
cuda_emulation.h (one std::thread per CUDA thread, __syncthreads a barrier), against the CPU ops.

No GPU is needed, so CI checks the kernels, their reductions and the host tile walk on every run;
test_cuda_pairwise.py checks the real thing on a GPU. The source is rewritten mechanically (each
launch becomes emu_launch, the ops register as torch.ops.fmicl_cuda_emulated.* with the schemas of
cpp/bindings/ops.cpp, CUDA tensors become CPU tensors, the anchors skip pinned memory, blocks of 32
threads so the column loops stride); every rewrite is asserted, so a change of the .cu that the
rewrite misses fails here instead of testing something else.

Besides ordinary inputs, hard_inputs.py's: alpha = 0, tiny sigma and tau, large t, near-duplicate
and far-apart embeddings, at sizes that are not a multiple of the tile; where the CPU op's result
overflows, the emulated CUDA op's must overflow in the same entries. And the host code reads no device value
(native_reads: no item() or the like in any ATen op it calls).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension
from hard_inputs import HARD_CASES, assert_same_result, fmicl_kwargs, rank_block, sample_z
from host_reads import native_reads

import fmicl_engine  # noqa: F401  (loads _C: the CPU ops, the reference here)

REPO = Path(__file__).resolve().parents[2]
CUDA_SOURCE = REPO / "cpp" / "cuda" / "pairwise_cuda.cu"
SCHEMAS = REPO / "cpp" / "bindings" / "ops.cpp"
EMULATED_THREADS = 32  # fewer than the columns of a tile below: the strided loops run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.utils.cpp_extension.is_ninja_available(), reason="needs ninja to compile"),
]


def _rewrite(pattern: str, replacement: str, text: str, count: int) -> str:
    text, made = re.subn(pattern, replacement, text)
    assert made == count, f"rewriting {pattern!r}: {made} matches in {CUDA_SOURCE.name}, expected {count}"
    return text


def schema_definitions(ops_text: str) -> str:
    """The body of ops.cpp's TORCH_LIBRARY(fmicl, m) block: its m.def(...) statements."""
    body = re.search(r"TORCH_LIBRARY\(fmicl, m\) \{\n(.*?)\n\}", ops_text, re.DOTALL)
    assert body is not None and body.group(1).count("m.def(") == 3, "ops.cpp: the schema block moved"
    return body.group(1)


def emulated_source(cuda_text: str, ops_text: str) -> str:
    text = _rewrite(r"#include <c10/cuda/[A-Za-z]+\.h>\n", "", cuda_text, 3)
    text = _rewrite(r"#include <torch/library.h>\n", '#include <torch/library.h>\n#include "cuda_emulation.h"\n', text, 1)
    text = _rewrite(r"at::kCUDA", "at::kCPU", text, 1)
    text = _rewrite(r"\.pin_memory\(\)", "", text, 1)  # pinned memory needs a driver; CPU to CPU needs none
    text = _rewrite(r"constexpr int kThreads = \d+;", f"constexpr int kThreads = {EMULATED_THREADS};", text, 1)
    # kernel<S, ...><<<grid, block, shared_bytes, stream>>>(args) -> emu_launch(grid, block, kernel<...>, args)
    text = _rewrite(r"([A-Za-z_]\w*(?:<[^;()]*?>)?)<<<([^,]+), ([^,]+), [^,]+, ([^>]+)>>>\(\s*",
                    r"emu_launch(\2, \3, \1, ", text, 3)
    # the real schemas (keyword-only arguments and all), the kernels as their catch-all implementations
    return _rewrite(r"TORCH_LIBRARY_IMPL\(fmicl, CUDA, m\) \{\n",
                    "TORCH_LIBRARY(fmicl_cuda_emulated, m) {\n" + schema_definitions(ops_text) + "\n", text, 1)


@pytest.fixture(scope="module")
def emulated_ops(tmp_path_factory):
    source = tmp_path_factory.mktemp("cuda_emulated") / "pairwise_cuda_emulated.cpp"
    source.write_text(emulated_source(CUDA_SOURCE.read_text(), SCHEMAS.read_text()))
    torch.utils.cpp_extension.load(
        name="fmicl_cuda_emulated", sources=[str(source)],
        extra_include_paths=[str(REPO / "cpp" / "include"), str(Path(__file__).parent)],
        extra_cflags=["-std=c++20", "-O1", "-w"], is_python_module=False)
    return torch.ops.fmicl_cuda_emulated


# name -> (op name, keywords)
CASES = {
    "kl-gaussian": ("fmicl_fwd_bwd", fmicl_kwargs("kl", "gaussian")),
    "js-cosine": ("fmicl_fwd_bwd", fmicl_kwargs("js", "cosine")),
    "vlc-gaussian-raw": ("fmicl_fwd_bwd", fmicl_kwargs("vlc", "gaussian", normalize=False)),
    "tsallis-cosine": ("fmicl_fwd_bwd", fmicl_kwargs("tsallis", "cosine")),
    "infonce": ("infonce_fwd_bwd", dict(tau=0.2)),
    "uniformity": ("uniformity_fwd_bwd", dict(t=2.0)),
}
ROWS = 40


ANCHORS = {
    "all": None,
    # rank 1 of 2 (its z1 rows and its z2 rows), one repeated and out of order
    "rank-block-repeat": torch.cat([torch.arange(10, 20), torch.arange(30, 40), torch.tensor([12])]).flip(0),
}


def run(op_set, op_name, z, anchors, kwargs, tile):
    return getattr(op_set, op_name)(z, anchors, **kwargs, needs_grad=True, tile=tile)


@pytest.mark.parametrize("anchor_name", ANCHORS)
@pytest.mark.parametrize("tile", [0, 16])
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_equals_cpu_float64(emulated_ops, case, tile, anchor_name):
    op_name, kwargs = CASES[case]
    z, anchors = sample_z(), ANCHORS[anchor_name]
    value, grad = run(emulated_ops, op_name, z, anchors, kwargs, tile)
    value_ref, grad_ref = run(torch.ops.fmicl, op_name, z, anchors, kwargs, 0)
    torch.testing.assert_close(value, value_ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-11, atol=1e-14 * grad_ref.abs().max().item())


@pytest.mark.parametrize("case", ["kl-gaussian", "infonce", "uniformity"])
def test_emulated_cuda_float32_and_half(emulated_ops, case):
    op_name, kwargs = CASES[case]
    for dtype, grad_rtol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        z = sample_z(dtype)
        value, grad = run(emulated_ops, op_name, z, None, kwargs, 16)
        value_ref, grad_ref = run(torch.ops.fmicl, op_name, z.double(), None, kwargs, 0)
        assert value.dtype == torch.float64 and grad.dtype == dtype
        torch.testing.assert_close(value, value_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), grad_ref, rtol=grad_rtol,
                                   atol=grad_rtol * grad_ref.abs().max().item())


def test_empty_anchor_list_gives_zero(emulated_ops):
    for op_name, kwargs in CASES.values():
        value, grad = run(emulated_ops, op_name, sample_z(), torch.empty(0, dtype=torch.long), kwargs, 16)
        assert not value.any() and not grad.any()


def test_without_needs_grad_only_the_value(emulated_ops):
    for op_name, kwargs in CASES.values():
        for anchors in ANCHORS.values():
            value, grad = getattr(emulated_ops, op_name)(sample_z(), anchors, **kwargs, needs_grad=False, tile=16)
            assert grad.shape == (0, sample_z().shape[1])
            torch.testing.assert_close(value, run(torch.ops.fmicl, op_name, sample_z(), anchors, kwargs, 0)[0],
                                       rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Hard inputs (hard_inputs.py): every tile size here leaves a partial tile (38 and 42 rows)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows,tile", [(38, 16), (42, 5)])
@pytest.mark.parametrize("case", HARD_CASES)
def test_emulated_cuda_equals_cpu_on_hard_inputs(emulated_ops, case, rows, tile):
    op_name, kwargs, embeddings = HARD_CASES[case]
    z = embeddings(rows)
    for anchors in (None, rank_block(rows)):
        want = run(torch.ops.fmicl, op_name, z, anchors, kwargs, 0)
        assert_same_result(run(emulated_ops, op_name, z, anchors, kwargs, tile), want, rtol=1e-10)


def test_alpha_0_with_overflowing_negatives_stays_finite(emulated_ops):
    # the defect this guards against: negative_scale * term with alpha = 0 gave 0 * inf = NaN
    op_name, kwargs, embeddings = HARD_CASES["kl-cosine-tiny-tau-alpha-0"]
    z = embeddings(ROWS)
    negative_term_overflows = ~torch.isfinite(run(torch.ops.fmicl, op_name, z, None, dict(kwargs, alpha=1.0), 0)[0])
    value, grad = run(emulated_ops, op_name, z, None, kwargs, 16)
    assert negative_term_overflows and torch.isfinite(value) and torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------
# No host read: what the ops' host code calls never reads a device value
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_host_code_reads_no_device_value(emulated_ops, case):
    op_name, kwargs = CASES[case]
    z = sample_z(dtype=torch.float32)
    with native_reads() as reads:
        for anchors in ANCHORS.values():
            for needs_grad in (True, False):
                getattr(emulated_ops, op_name)(z, anchors, **kwargs, needs_grad=needs_grad, tile=16)
                getattr(torch.ops.fmicl, op_name)(z, anchors, **kwargs, needs_grad=needs_grad, tile=16)  # the CPU op's
    assert reads == [], "host reads in the ops:\n" + "\n".join(reads)


def test_cpu_and_emulated_schemas_are_the_same(emulated_ops):
    for op_name in ("fmicl_fwd_bwd", "infonce_fwd_bwd", "uniformity_fwd_bwd"):
        real = str(getattr(torch.ops.fmicl, op_name).default._schema)
        emulated = str(getattr(emulated_ops, op_name).default._schema)
        assert emulated == real.replace("fmicl::", "fmicl_cuda_emulated::")
