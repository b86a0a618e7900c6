// The tensor ops of fmicl-engine, declared once (torch.ops.fmicl.*). Implementations are
// registered per device next to them: cpp/src/pairwise_cpu.cpp (CPU), cpp/cuda/ (CUDA); the
// Python wrappers, fake kernels (torch.compile) and autograd registrations are
// python/fmicl_engine/loss/ops.py.
//
// Contract of the pairwise ops (definitions: docs/LOSSES.md)
// ----------------------------------------------------------
// z          (M, d), contiguous, M = 2N rows in the layout [z1; z2] of the GLOBAL batch; float16,
//            bfloat16, float32 or float64. Half types are computed in float32.
// anchors    optional int64 (A,) row indices into z, ON THE CPU whatever z's device (checked on
//            the host, then sent to the device asynchronously: no sync); None = all M rows (a
//            repeated index counts twice). Each op returns the sum over these anchors of the
//            per-anchor terms with the GLOBAL normalisers of LOSSES.md, so summing the outputs over a
//            partition of 0..M-1 gives exactly the loss over the whole batch. This is what a
//            distributed caller needs: each rank passes the all-gathered z and its own anchors,
//            then sums the values (all-reduce) and the gradients (reduce-scatter).
// The other arguments are keyword-only.
// needs_grad false: only the value is computed (the gradient's products and InfoNCE's second
//            pass are skipped: f-MICL forms 0.5 full-size products instead of 1.5) and grad_z is
//            an empty (0, d) tensor.
// grad_z     (M, d), dtype of z: d(first output)/dz. It reaches the anchor rows and every partner
//            row of them (column rows), so it is non-zero outside the anchors.
// tile       rows per tile of the pairwise matrix; 0 = the backend's default. Only speed and
//            memory depend on it (tests set small tiles to exercise many).
// Forward and backward are one pass: the (M x M) pairwise matrix is never stored. No op reads a
// device value on the host: with CUDA inputs nothing waits for the GPU.
//
// fmicl_fwd_bwd -> (loss_sum, grad_z): f-MICL. loss_sum is a 0-dim float64 tensor.
//   divergence: kl | js | pearson | sh | tsallis | vlc;  similarity: gaussian | cosine.
//   normalize=True L2-normalises the rows first (inside the op; grad_z is w.r.t. the raw z).
//   similarity=cosine always uses unit rows (the cosine), whatever normalize says.
// infonce_fwd_bwd -> (loss_sum, grad_z): InfoNCE / NT-Xent on cosines (rows normalised inside;
//   normalising first changes nothing, so there is no normalize flag).
// uniformity_fwd_bwd -> (sum_exp, grad_z): the uniformity of Wang & Isola is a log of a mean
//   over pairs, not a sum over anchors, so the op returns the additive pieces instead: sum_exp is
//   float64 (2,), entry v = ½ Σ_{a in anchors of view v} Σ_{b != a in view v} exp(-t |u_a - u_b|^2)
//   on the normalised rows u (= Σ_{i<j} for all anchors), and grad_z = d(sum_exp[0] + sum_exp[1])/dz
//   (rows of view v only depend on sum_exp[v]). A caller sums sum_exp and grad_z over anchor
//   partitions (ranks), then forms L_uniform = ½ Σ_v log(sum_exp[v] / (N (N-1) / 2)) with gradient
//   ½ grad_z[rows of v] / sum_exp[v]. No shift is applied: valid while exp(-4t) is a normal float
//   (t <= 20). The alignment term is O(N d) and stays in Python.
#include <torch/library.h>

TORCH_LIBRARY(fmicl, m) {
  m.def(
      "fmicl_fwd_bwd(Tensor z, Tensor? anchors=None, *, str divergence, str similarity, float sigma, "
      "float tau, float mu, float alpha, float tsallis_alpha, bool normalize, bool needs_grad=True, "
      "int tile=0) -> (Tensor loss_sum, Tensor grad_z)");
  m.def("infonce_fwd_bwd(Tensor z, Tensor? anchors=None, *, float tau, bool needs_grad=True, int tile=0) "
        "-> (Tensor loss_sum, Tensor grad_z)");
  m.def("uniformity_fwd_bwd(Tensor z, Tensor? anchors=None, *, float t, bool needs_grad=True, int tile=0) "
        "-> (Tensor sum_exp, Tensor grad_z)");
}
