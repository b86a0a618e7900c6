"""The CUDA kernels' logic, run on the CPU: cpp/cuda/pairwise_cuda.cu compiled as C++ against
cuda_emulation.h (one std::thread per CUDA thread, __syncthreads a barrier), against the CPU ops.

No GPU is needed, so CI checks the kernels, their reductions and the host tile walk on every run;
test_cuda_pairwise.py checks the real thing on a GPU. The source is rewritten mechanically (each
launch becomes emu_launch, the ops register as torch.ops.fmicl_cuda_emulated.*, CUDA tensors
become CPU tensors, blocks of 32 threads so the column loops stride); every rewrite is asserted,
so a change of the .cu that the rewrite misses fails here instead of testing something else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

import fmicl_engine  # noqa: F401  (loads _C: the CPU ops, the reference here)

REPO = Path(__file__).resolve().parents[2]
CUDA_SOURCE = REPO / "cpp" / "cuda" / "pairwise_cuda.cu"
EMULATED_THREADS = 32  # fewer than the columns of a tile below: the strided loops run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.utils.cpp_extension.is_ninja_available(), reason="needs ninja to compile"),
]


def _rewrite(pattern: str, replacement: str, text: str, count: int) -> str:
    text, made = re.subn(pattern, replacement, text)
    assert made == count, f"rewriting {pattern!r}: {made} matches in {CUDA_SOURCE.name}, expected {count}"
    return text


def emulated_source(cuda_text: str) -> str:
    text = _rewrite(r"#include <c10/cuda/[A-Za-z]+\.h>\n", "", cuda_text, 3)
    text = _rewrite(r"#include <torch/library.h>\n", '#include <torch/library.h>\n#include "cuda_emulation.h"\n', text, 1)
    text = _rewrite(r"at::kCUDA", "at::kCPU", text, 1)
    text = _rewrite(r"constexpr int kThreads = \d+;", f"constexpr int kThreads = {EMULATED_THREADS};", text, 1)
    # kernel<S, ...><<<grid, block, shared_bytes, stream>>>(args) -> emu_launch(grid, block, kernel<...>, args)
    text = _rewrite(r"([A-Za-z_]\w*(?:<[^;()]*?>)?)<<<([^,]+), ([^,]+), [^,]+, ([^>]+)>>>\(\s*",
                    r"emu_launch(\2, \3, \1, ", text, 3)
    text = _rewrite(r"TORCH_LIBRARY_IMPL\(fmicl, CUDA, m\)", "TORCH_LIBRARY(fmicl_cuda_emulated, m)", text, 1)
    return _rewrite(r"m\.impl\(", "m.def(", text, 3)


@pytest.fixture(scope="module")
def emulated_ops(tmp_path_factory):
    source = tmp_path_factory.mktemp("cuda_emulated") / "pairwise_cuda_emulated.cpp"
    source.write_text(emulated_source(CUDA_SOURCE.read_text()))
    torch.utils.cpp_extension.load(
        name="fmicl_cuda_emulated", sources=[str(source)],
        extra_include_paths=[str(REPO / "cpp" / "include"), str(Path(__file__).parent)],
        extra_cflags=["-std=c++20", "-O1", "-w"], is_python_module=False)
    return torch.ops.fmicl_cuda_emulated


def fmicl_args(divergence, similarity, normalize=True):
    # divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha, normalize
    return (divergence, similarity, 0.8, 0.5, 1.2, 0.9, 1.7, normalize)


CASES = {
    "kl-gaussian": ("fmicl_fwd_bwd", fmicl_args("kl", "gaussian")),
    "js-cosine": ("fmicl_fwd_bwd", fmicl_args("js", "cosine")),
    "vlc-gaussian-raw": ("fmicl_fwd_bwd", fmicl_args("vlc", "gaussian", normalize=False)),
    "tsallis-cosine": ("fmicl_fwd_bwd", fmicl_args("tsallis", "cosine")),
    "infonce": ("infonce_fwd_bwd", (0.2,)),
    "uniformity": ("uniformity_fwd_bwd", (2.0,)),
}
ROWS = 40


def sample_z(dtype=torch.float64):
    return torch.randn(ROWS, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


ANCHORS = {
    "all": None,
    # rank 1 of 2 (its z1 rows and its z2 rows), one repeated and out of order
    "rank-block-repeat": torch.cat([torch.arange(10, 20), torch.arange(30, 40), torch.tensor([12])]).flip(0),
}


@pytest.mark.parametrize("anchor_name", ANCHORS)
@pytest.mark.parametrize("tile", [0, 16])
@pytest.mark.parametrize("case", CASES)
def test_emulated_cuda_equals_cpu_float64(emulated_ops, case, tile, anchor_name):
    op_name, args = CASES[case]
    z, anchors = sample_z(), ANCHORS[anchor_name]
    value, grad = getattr(emulated_ops, op_name)(z, anchors, *args, tile)
    value_ref, grad_ref = getattr(torch.ops.fmicl, op_name)(z, anchors, *args, 0)
    torch.testing.assert_close(value, value_ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-11, atol=1e-14 * grad_ref.abs().max().item())


@pytest.mark.parametrize("case", ["kl-gaussian", "infonce", "uniformity"])
def test_emulated_cuda_float32_and_half(emulated_ops, case):
    op_name, args = CASES[case]
    for dtype, grad_rtol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        z = sample_z(dtype)
        value, grad = getattr(emulated_ops, op_name)(z, None, *args, 16)
        value_ref, grad_ref = getattr(torch.ops.fmicl, op_name)(z.double(), None, *args, 0)
        assert value.dtype == torch.float64 and grad.dtype == dtype
        torch.testing.assert_close(value, value_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.double(), grad_ref, rtol=grad_rtol, atol=grad_rtol * grad_ref.abs().max().item())


def test_empty_anchor_list_gives_zero(emulated_ops):
    for op_name, args in CASES.values():
        value, grad = getattr(emulated_ops, op_name)(sample_z(), torch.empty(0, dtype=torch.long), *args, 16)
        assert not value.any() and not grad.any()
