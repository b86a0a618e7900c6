// CUDA implementation of the pairwise ops declared in cpp/bindings/ops.cpp (contract there).
//
// The same sums as the CPU op (cpp/src/pairwise_cpu.cpp), with the same per-pair terms
// (fmicl/pairwise_math.h), parameters (fmicl/pairwise_params.h), checks and row preparation
// (fmicl/pairwise_host.h). Tiles are (anchor rows I) x (all rows J), the anchors listed in `rows`
// (A,) (a repeated anchor is listed, and counted, twice):
//
//   G    = X_I X_J^T                       at::mm (cuBLAS)
//   W    = d(loss_sum)/dG, in place of G   one epilogue kernel, one block per tile row, which also
//                                          sums the row's terms (fixed order: deterministic)
//   dX_I += W X_J,   dX_J += W^T X_I       at::addmm_ (cuBLAS)
//
// With anchors (a distributed rank's share) each ordered pair (a, b), a an anchor, is visited
// once: three (A x M x d) products, so a rank holding A = M / W anchors does 1/W of the work.
// Without (the whole batch) only the tiles J >= I are formed, as on the CPU: G is symmetric and
// the terms of (a, b) and (b, a) are equal, so an entry of an off-diagonal tile stands for both
// orientations (its terms and W count twice; InfoNCE adds the two softmaxes) while a diagonal
// tile visits each ordered pair once: 1.5 full-size products (InfoNCE 2.5: its log-sum-exp pass
// forms every tile); without needs_grad only G and the epilogues (f-MICL 0.5, InfoNCE 1).
// Memory: one tile (tile^2) plus O(M d). Nothing is read back to the host: anchors arrive from
// the host (pairwise_host.h), so a call never waits for the GPU.
// float16/bfloat16 rows are converted to float32 first (products and terms in float32, sums in
// float64); float64 stays float64. The products follow torch's float32 matmul precision setting
// (TF32 only where the user enabled it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "fmicl/check.h"
#include "fmicl/pairwise_host.h"
#include "fmicl/pairwise_params.h"

namespace fmicl::cuda {
namespace {

constexpr c10::DeviceType kDevice = at::kCUDA;  // the device of z (CPU in tests/loss/test_cuda_emulated.py)
constexpr long long kDefaultTile = 4096;         // 64 MB of float32: products this size run near peak
constexpr int kThreads = 256;                    // per block; one block per tile row

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// The sum of v over the block, returned to every thread. A fixed tree: deterministic.
__device__ double block_sum(double v) {
  __shared__ double partial[kThreads];
  partial[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = partial[0];
  __syncthreads();  // `partial` is reused by the next call
  return total;
}

__device__ double block_max(double v) {
  __shared__ double partial[kThreads];
  partial[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] = fmax(partial[threadIdx.x], partial[threadIdx.x + stride]);
    __syncthreads();
  }
  const double total = partial[0];
  __syncthreads();
  return total;
}

// The pair-term sums (f-MICL's, the uniformity's). Tile row r is anchor a = rows[r]; its partners
// are the columns b = col0 + c != a (and, when view_rows > 0, only those in a's view: rows below
// view_rows are one view, the rest the other); without negatives (PairTermParams::has_negatives)
// only the positive. Overwrites G with W = d(loss_sum)/dG and adds the row's scaled terms to
// value[r] and Σ_b W_ab to wsum[r] (the Gaussian similarity's |x_a|^2 term).
// orientations: 2 where each entry also stands for (b, a) (off-diagonal tiles of the whole batch).
template <class S, Divergence D, Similarity Sim>
__global__ void __launch_bounds__(kThreads)
    pair_term_epilogue_kernel(const PairTermParams p, const bool negatives, const S dlogr_dgram,
                              const S orientations, S* __restrict__ tile, const long long ncols,
                              const long long col0, const int64_t* __restrict__ rows,
                              const S* __restrict__ norm_sq, const long long view_rows,
                              double* __restrict__ value, double* __restrict__ wsum) {
  const long long r = blockIdx.x;
  const long long a = rows[r];
  S* g = tile + r * ncols;
  const long long positive = p.half_rows > 0 ? positive_index(a, p.half_rows) : -1;
  const S log_mu = S(p.log_mu);
  const S inv_two_sigma_sq = S(p.inv_two_sigma_sq);
  const S inv_tau = S(p.inv_tau);
  const S tsallis_alpha = S(p.tsallis_alpha);
  const S norm_a = Sim == Similarity::kGaussian ? norm_sq[a] : S(0);

  double row_value = 0.0, row_wsum = 0.0;
  for (long long c = threadIdx.x; c < ncols; c += kThreads) {
    const long long b = col0 + c;
    const bool partner = b != a && (view_rows == 0 || (a < view_rows) == (b < view_rows));
    S w = S(0);
    if (partner && (negatives || b == positive)) {
      S s;
      if constexpr (Sim == Similarity::kGaussian) {
        s = gaussian_log_similarity(g[c], norm_a, norm_sq[b], log_mu, inv_two_sigma_sq);
      } else {
        s = log_mu + g[c] * inv_tau;
      }
      S term, dterm, scale;
      if (b == positive) {
        positive_term<D>(s, tsallis_alpha, term, dterm);
        scale = orientations * S(p.positive_scale);
      } else {
        negative_term<D>(s, tsallis_alpha, term, dterm);
        scale = orientations * S(p.negative_scale);
      }
      row_value += double(scale * term);
      w = scale * dterm * dlogr_dgram;
      row_wsum += double(w);
    }
    g[c] = w;
  }
  row_value = block_sum(row_value);
  row_wsum = block_sum(row_wsum);
  if (threadIdx.x == 0) {
    value[r] += row_value;
    wsum[r] += row_wsum;
  }
}

// InfoNCE exponents are formed as (G - shift) * inv_tau, shift a row's maximum Gram entry: the
// difference first, then the scale. G * inv_tau - shift would let nvcc fuse the product into the
// subtraction (FMA): at tau = 1e-10 in float32 the unrounded product exceeds the rounded maximum
// by up to half an ulp of 1e10 (512), and exp(512) overflows. The difference is exact for close
// entries and <= 0 for every entry of the row, fused or not.

// InfoNCE pass 1: merges tile row r (anchor a = rows[r]) into its running log-sum-exp over the
// partners b != a, kept as row_max[r], the largest G_ab so far (-inf at the start), and
// row_sum[r] = Σ_b exp((G_ab - row_max[r]) inv_tau): LSE = row_max inv_tau + log(row_sum). Records
// the positive logit when the positive's column is in this tile.
template <class S>
__global__ void __launch_bounds__(kThreads)
    infonce_stats_kernel(const InfonceParams p, const S* __restrict__ tile, const long long ncols,
                         const long long col0, const int64_t* __restrict__ rows,
                         double* __restrict__ row_max, double* __restrict__ row_sum,
                         double* __restrict__ positive_logit) {
  const long long r = blockIdx.x;
  const long long a = rows[r];
  const S* g = tile + r * ncols;
  const long long positive = positive_index(a, p.half_rows);
  const S inv_tau = S(p.inv_tau);
  constexpr double kMinusInf = -std::numeric_limits<double>::infinity();

  double tile_max = kMinusInf;
  for (long long c = threadIdx.x; c < ncols; c += kThreads) {
    const long long b = col0 + c;
    if (b == a) continue;
    tile_max = fmax(tile_max, double(g[c]));
    if (b == positive) positive_logit[r] = double(g[c]) * p.inv_tau;
  }
  tile_max = block_max(tile_max);
  if (tile_max == kMinusInf) return;  // a 1-column tile holding only the anchor (whole block)
  const double old_max = row_max[r];
  const double new_max = fmax(old_max, tile_max);
  const S shift = S(new_max);
  double sum = 0.0;
  for (long long c = threadIdx.x; c < ncols; c += kThreads) {
    if (col0 + c != a) sum += double(math::exp((g[c] - shift) * inv_tau));
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    row_sum[r] = row_sum[r] * ::exp((old_max - new_max) * p.inv_tau) + sum;
    row_max[r] = new_max;
  }
}

// softmax = exp((G - shift) inv_tau - log_sum), the difference clamped at 0: an entry of the other
// orientation (anchor b's row) comes from a different tile product than b's pass 1, which may
// round an ulp differently, and at tau = 1e-10 an ulp of G is worth ~600 nats.
template <class S>
__device__ inline S infonce_softmax(S g, S shift, S log_sum, S inv_tau) {
  const S difference = g < shift ? g - shift : S(0);
  return math::exp(difference * inv_tau - log_sum);
}

// InfoNCE pass 2: W_ab = anchor_scale / tau * (softmax_a(b) - [b = p(a)]) in place of G, from
// each anchor's row_max (shift) and log(row_sum) (log_sum) of pass 1; plus the same for anchor b
// over its partners (a among them) when shift_col and log_sum_col (M,), every row's, are given:
// the entry then stands for both orientations.
template <class S>
__global__ void __launch_bounds__(kThreads)
    infonce_weights_kernel(const InfonceParams p, S* __restrict__ tile, const long long ncols,
                           const long long col0, const int64_t* __restrict__ rows,
                           const double* __restrict__ shift, const double* __restrict__ log_sum,
                           const double* __restrict__ shift_col, const double* __restrict__ log_sum_col) {
  const long long r = blockIdx.x;
  const long long a = rows[r];
  S* g = tile + r * ncols;
  const long long positive = positive_index(a, p.half_rows);
  const S inv_tau = S(p.inv_tau);
  const S shift_a = S(shift[r]);
  const S log_sum_a = S(log_sum[r]);
  const S scale = S(p.anchor_scale * p.inv_tau);
  for (long long c = threadIdx.x; c < ncols; c += kThreads) {
    const long long b = col0 + c;
    S w = S(0);
    if (b != a) {
      w = infonce_softmax(g[c], shift_a, log_sum_a, inv_tau) * scale;
      if (shift_col != nullptr) w += infonce_softmax(g[c], S(shift_col[b]), S(log_sum_col[b]), inv_tau) * scale;
      if (b == positive) w -= shift_col != nullptr ? S(2) * scale : scale;
    }
    g[c] = w;
  }
}

// ---------------------------------------------------------------------------------------------
// Host code: the tile walk, the three ops (their checks: fmicl/pairwise_host.h)
// ---------------------------------------------------------------------------------------------

// (A,) int64 on z's device: the anchor rows, all M rows when `anchors` is None. The host's
// anchors go through pinned memory, asynchronously: the copy waits for nothing, and the caching
// host allocator keeps the pinned block until the copy is done.
at::Tensor anchor_rows(const char* op, const std::optional<at::Tensor>& anchors, const at::Tensor& z) {
  if (!anchors.has_value()) return at::arange(z.size(0), z.options().dtype(at::kLong));
  return checked_anchors(op, *anchors, z.size(0)).pin_memory().to(z.device(), /*non_blocking=*/true);
}

// Walks the tiles (anchor rows I) x (all rows J): G_IJ = X_I X_J^T into a buffer, then
// epilogue(w, i0, ti, j0, tj), which turns it into W_IJ in place (or only reads it), then, when
// dx is given, dX_I += W X_J and dX_J += W^T X_I. x (M, d), rows (A,), dx (M, d).
// upper_triangle: only J >= I (rows must then be every row in order, 0 .. M-1).
template <class Epilogue>
void walk_tiles(const at::Tensor& x, const at::Tensor& rows, long long tile, bool upper_triangle,
                at::Tensor* dx, Epilogue&& epilogue) {
  const long long n = x.size(0), num_anchors = rows.size(0);
  if (num_anchors == 0) return;
  const long long tile_i = std::min(tile, num_anchors), tile_j = std::min(tile, n);
  at::Tensor buffer = at::empty({tile_i * tile_j}, x.options());
  at::Tensor d_anchor_rows;  // (A, d): dX of the anchors' tile rows, scattered to dx at the end
  if (dx != nullptr) d_anchor_rows = at::zeros({num_anchors, x.size(1)}, x.options());
  for (long long i0 = 0; i0 < num_anchors; i0 += tile_i) {
    const long long ti = std::min(tile_i, num_anchors - i0);
    const at::Tensor x_i = x.index_select(0, rows.narrow(0, i0, ti));  // ti x d
    for (long long j0 = upper_triangle ? i0 : 0; j0 < n; j0 += tile_j) {
      const long long tj = std::min(tile_j, n - j0);
      const at::Tensor x_j = x.narrow(0, j0, tj);  // tj x d
      at::Tensor w = buffer.narrow(0, 0, ti * tj).view({ti, tj});
      at::mm_out(w, x_i, x_j.t());
      epilogue(w, i0, ti, j0, tj);
      if (dx != nullptr) {
        d_anchor_rows.narrow(0, i0, ti).addmm_(w, x_j);
        dx->narrow(0, j0, tj).addmm_(w.t(), x_i);
      }
    }
  }
  if (dx != nullptr) dx->index_add_(0, rows, d_anchor_rows);
}

template <class S, Divergence D, Similarity Sim>
void launch_pair_term_epilogue(const PairTermParams& p, int orientations, at::Tensor& w, long long j0,
                               const int64_t* rows, const at::Tensor& norm_sq, long long view_rows,
                               double* value, double* wsum) {
  const long long ti = w.size(0), tj = w.size(1);
  pair_term_epilogue_kernel<S, D, Sim><<<ti, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p, p.has_negatives(), S(p.dlogr_dgram()), S(orientations), w.data_ptr<S>(), tj, j0, rows,
      norm_sq.data_ptr<S>(), view_rows, value, wsum);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class S, Similarity Sim>
void dispatch_divergence(const PairTermParams& p, int orientations, at::Tensor& w, long long j0,
                         const int64_t* rows, const at::Tensor& norm_sq, long long view_rows,
                         double* value, double* wsum) {
  switch (p.divergence) {
#define FMICL_DIVERGENCE_CASE(D, name) \
  case Divergence::D:                  \
    return launch_pair_term_epilogue<S, Divergence::D, Sim>(p, orientations, w, j0, rows, norm_sq, view_rows, \
                                                            value, wsum);
    FMICL_FOR_EACH_DIVERGENCE(FMICL_DIVERGENCE_CASE)
#undef FMICL_DIVERGENCE_CASE
  }
  TORCH_INTERNAL_ASSERT(false, "fmicl_fwd_bwd: divergence ", int(p.divergence), " not dispatched");
}

// Per anchor slot (A,) float64: the sum of its scaled pair terms (f-MICL's, the uniformity's);
// the gradient of their total is added into dx unless dx is undefined. view_rows > 0 restricts
// partners to the anchor's view. whole_batch: rows is every row in order, so only the tiles
// J >= I are formed.
template <class S>
at::Tensor pair_term_sums(const PairTermParams& p, const at::Tensor& x, const at::Tensor& rows,
                          bool whole_batch, long long view_rows, at::Tensor& dx, long long tile) {
  const bool gaussian_gradient = p.similarity == Similarity::kGaussian && dx.defined();
  const at::Tensor norm_sq = (x * x).sum(1).contiguous();  // (M,)
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor value = at::zeros({rows.size(0)}, f64);
  at::Tensor wsum = at::zeros({rows.size(0)}, f64);  // Σ_b W_ab of each anchor slot
  at::Tensor degree;  // (M,) Σ of W over row a and column a
  if (gaussian_gradient) degree = at::zeros({x.size(0)}, x.options());
  walk_tiles(x, rows, tile, whole_batch, dx.defined() ? &dx : nullptr, [&](at::Tensor& w, long long i0, long long,
                                                                           long long j0, long long tj) {
    const int orientations = whole_batch && j0 != i0 ? 2 : 1;
    const int64_t* tile_rows_ptr = rows.data_ptr<int64_t>() + i0;
    double* value_ptr = value.data_ptr<double>() + i0;
    double* wsum_ptr = wsum.data_ptr<double>() + i0;
    if (p.similarity == Similarity::kGaussian) {
      dispatch_divergence<S, Similarity::kGaussian>(p, orientations, w, j0, tile_rows_ptr, norm_sq,
                                                     view_rows, value_ptr, wsum_ptr);
      if (gaussian_gradient) degree.narrow(0, j0, tj).add_(w.sum(0));
    } else {
      dispatch_divergence<S, Similarity::kCosine>(p, orientations, w, j0, tile_rows_ptr, norm_sq,
                                                   view_rows, value_ptr, wsum_ptr);
    }
  });
  if (gaussian_gradient) {  // log r depends on |x_a|^2 and |x_b|^2 too: d/d|x_a|^2 = -½ d/dG_ab
    degree.index_add_(0, rows, wsum.to(x.scalar_type()));
    dx.sub_(x * degree.unsqueeze(1));
  }
  return value;
}

// The InfoNCE sum over the anchors; the gradient is added into dx unless dx is undefined.
template <class S>
at::Tensor infonce_sum(const InfonceParams& p, const at::Tensor& x, const at::Tensor& rows,
                       bool whole_batch, at::Tensor& dx, long long tile) {
  const auto f64 = x.options().dtype(at::kDouble);
  const long long num_anchors = rows.size(0);
  at::Tensor row_max = at::full({num_anchors}, -std::numeric_limits<double>::infinity(), f64);
  at::Tensor row_sum = at::zeros({num_anchors}, f64);
  at::Tensor positive_logit = at::zeros({num_anchors}, f64);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  // Pass 1: the log-sum-exp of every anchor over all its partners.
  walk_tiles(x, rows, tile, /*upper_triangle=*/false, nullptr, [&](at::Tensor& w, long long i0, long long ti, long long j0, long long tj) {
    infonce_stats_kernel<S><<<ti, kThreads, 0, stream>>>(
        p, w.data_ptr<S>(), tj, j0, rows.data_ptr<int64_t>() + i0, row_max.data_ptr<double>() + i0,
        row_sum.data_ptr<double>() + i0, positive_logit.data_ptr<double>() + i0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor log_sum = row_sum.log();
  const at::Tensor lse = row_max * p.inv_tau + log_sum;  // (A,)
  if (!dx.defined()) return (lse - positive_logit).sum() * p.anchor_scale;

  // Pass 2: the softmax weights into the gradient.
  walk_tiles(x, rows, tile, whole_batch, &dx, [&](at::Tensor& w, long long i0, long long ti, long long j0, long long tj) {
    const bool both_orientations = whole_batch && j0 != i0;
    infonce_weights_kernel<S><<<ti, kThreads, 0, stream>>>(
        p, w.data_ptr<S>(), tj, j0, rows.data_ptr<int64_t>() + i0, row_max.data_ptr<double>() + i0,
        log_sum.data_ptr<double>() + i0, both_orientations ? row_max.data_ptr<double>() : nullptr,
        both_orientations ? log_sum.data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return (lse - positive_logit).sum() * p.anchor_scale;
}

std::tuple<at::Tensor, at::Tensor> fmicl_fwd_bwd_cuda(const at::Tensor& z, const std::optional<at::Tensor>& anchors,
                                                      c10::string_view divergence, c10::string_view similarity,
                                                      double sigma, double tau, double mu, double alpha,
                                                      double tsallis_alpha, bool normalize, bool needs_grad,
                                                      int64_t tile) {
  constexpr const char* op = "fmicl_fwd_bwd";
  check_embeddings(op, z, kDevice);
  const c10::cuda::CUDAGuard device_guard(z.device());
  const PairTermParams p =
      checked_fmicl_params(op, z.size(0), z.size(1), divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha);
  const long long t = tile_rows(op, tile, z.size(0), kDefaultTile);
  const at::Tensor rows = anchor_rows(op, anchors, z);
  const Rows x = prepare_rows(z, normalize || p.similarity == Similarity::kCosine);
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  at::Tensor value;
  AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
    value = pair_term_sums<scalar_t>(p, x.x, rows, !anchors.has_value(), /*view_rows=*/0, dx, t);
  });
  return {value.sum(), returned_gradient(z, dx, x)};
}

std::tuple<at::Tensor, at::Tensor> infonce_fwd_bwd_cuda(const at::Tensor& z, const std::optional<at::Tensor>& anchors,
                                                        double tau, bool needs_grad, int64_t tile) {
  constexpr const char* op = "infonce_fwd_bwd";
  check_embeddings(op, z, kDevice);
  const c10::cuda::CUDAGuard device_guard(z.device());
  FMICL_CHECK_POSITIVE(op, "tau", tau);
  const long long num_rows = z.size(0);
  const long long t = tile_rows(op, tile, num_rows, kDefaultTile);
  const at::Tensor rows = anchor_rows(op, anchors, z);
  const Rows x = prepare_rows(z, /*normalize=*/true);
  const InfonceParams p = infonce_params(num_rows, z.size(1), tau);
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  at::Tensor value;
  AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
    value = infonce_sum<scalar_t>(p, x.x, rows, !anchors.has_value(), dx, t);
  });
  return {value, returned_gradient(z, dx, x)};
}

std::tuple<at::Tensor, at::Tensor> uniformity_fwd_bwd_cuda(const at::Tensor& z,
                                                           const std::optional<at::Tensor>& anchors, double t,
                                                           bool needs_grad, int64_t tile) {
  constexpr const char* op = "uniformity_fwd_bwd";
  check_embeddings(op, z, kDevice);
  const c10::cuda::CUDAGuard device_guard(z.device());
  FMICL_CHECK_POSITIVE(op, "t", t);
  const long long num_rows = z.size(0), half = num_rows / 2;
  const long long tr = tile_rows(op, tile, num_rows, kDefaultTile);
  const at::Tensor rows = anchor_rows(op, anchors, z);
  const Rows x = prepare_rows(z, /*normalize=*/true);
  const PairTermParams p = uniformity_params(half, z.size(1), t);
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  at::Tensor value;  // (A,) per anchor slot
  AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
    value = pair_term_sums<scalar_t>(p, x.x, rows, !anchors.has_value(), /*view_rows=*/half, dx, tr);
  });
  // sums[v]: the anchors of view v (rows >= half are view 1).
  at::Tensor sums = at::zeros({2}, value.options()).index_add_(0, (rows >= half).to(at::kLong), value);
  return {sums, returned_gradient(z, dx, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fmicl, CUDA, m) {
  m.impl("fmicl_fwd_bwd", &fmicl_fwd_bwd_cuda);
  m.impl("infonce_fwd_bwd", &infonce_fwd_bwd_cuda);
  m.impl("uniformity_fwd_bwd", &uniformity_fwd_bwd_cuda);
}

}  // namespace fmicl::cuda
