// CPU implementation of the pairwise ops declared in cpp/bindings/ops.cpp (contract there).
//
// The (M x M) pairwise matrix is walked in tiles of `tile` rows. Each tile G_IJ = X_I X_J^T is
// one matrix product (at::mm -> MKL sgemm/dgemm), consumed at once by a vectorised epilogue
// (pairwise_tiles.h) that overwrites it with W_IJ = d(loss_sum)/dG_IJ, and the gradient is
// accumulated by two more products, dX_I += W_IJ X_J and dX_J += W_IJ^T X_I. Because G is
// symmetric only tiles J >= I are formed; one entry stands for both orientations (a, b) and
// (b, a). f-MICL costs 1.5 full-size products; InfoNCE 2 (its row log-sum-exp must be known
// before any weight, so a first pass computes it: 2.5 products for tau < 1/40 in float32).
// Without needs_grad only the G products are formed (f-MICL 0.5 products, InfoNCE 0.5 or 1).
// Threads: each worker (one per thread) takes whole tiles, round robin, with single-threaded
// products and its own gradient accumulator, summed at the end. Extra memory: one tile per
// worker, O(M d) per worker beyond the first (capped at kWorkerMemory), O(M d) for the rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "fmicl/check.h"
#include "fmicl/pairwise_host.h"
#include "fmicl/pairwise_params.h"
#include "pairwise_tiles.h"

namespace fmicl::cpu {
namespace {

constexpr long long kMaxTile = 1024;  // 4 MB of float32: sgemm runs near peak, fits in L3
constexpr long long kMinTile = 128;   // smaller tiles only to give every thread work
constexpr long long kWorkerMemory = 64LL << 20;  // bytes of extra per-worker gradient accumulators

// (M,) how many times each of the M rows is an anchor, in the compute dtype.
at::Tensor anchor_weights(const char* op, const std::optional<at::Tensor>& anchors, long long rows,
                          const at::TensorOptions& options) {
  if (!anchors.has_value()) return at::ones({rows}, options);
  const at::Tensor a = checked_anchors(op, *anchors, rows);
  return at::zeros({rows}, options).index_add_(0, a, at::ones({a.numel()}, options));
}

// The default tile: kMaxTile rows, smaller when that leaves fewer than ~2 tiles per thread.
long long default_tile(long long rows) {
  const long long threads = at::get_num_threads();
  const long long per_thread = (rows + 2 * threads - 1) / (2 * threads);
  return std::clamp(per_thread, kMinTile, kMaxTile);
}

// The tiles J >= I of the symmetric walk that hold at least one anchor (in I or in J), as
// (row0, col0) pairs; the rest contribute nothing and are skipped (a distributed rank's share).
std::vector<std::pair<long long, long long>> upper_tiles_with_anchors(const std::vector<bool>& has, long long n,
                                                                      long long tile) {
  std::vector<std::pair<long long, long long>> tiles;
  for (long long i0 = 0, bi = 0; i0 < n; i0 += tile, ++bi) {
    for (long long j0 = i0, bj = bi; j0 < n; j0 += tile, ++bj) {
      if (has[bi] || has[bj]) tiles.emplace_back(i0, j0);
    }
  }
  return tiles;
}

// Which row blocks of `tile` rows hold at least one anchor.
std::vector<bool> blocks_with_anchors(const at::Tensor& weight, long long tile) {
  const long long rows = weight.size(0);
  const at::Tensor is_anchor = (weight > 0).contiguous();
  const bool* flag = is_anchor.const_data_ptr<bool>();
  std::vector<bool> has((rows + tile - 1) / tile, false);
  for (long long a = 0; a < rows; ++a) {
    if (flag[a]) has[a / tile] = true;
  }
  return has;
}

// How many workers walk the tiles: one per thread, each with its own (n x d) gradient
// accumulator beyond the first (when there is a gradient), within kWorkerMemory; never more than
// there are tiles.
int worker_count(long long n, long long d, size_t elem_size, size_t tiles, bool gradient) {
  const long long per_worker = gradient ? n * d * static_cast<long long>(elem_size) : 0;
  const long long extra = std::max<long long>(0, kWorkerMemory / std::max<long long>(per_worker, 1));
  const long long workers = std::min<long long>({at::get_num_threads(), 1 + extra, static_cast<long long>(tiles)});
  return static_cast<int>(std::max<long long>(1, workers));
}

// Runs fn(worker, k) for k in [0, count), item k on worker k % workers, the workers in parallel.
// Whole tiles per worker, single-threaded products inside: one parallel region per pass, not a
// few per tile, which keeps two threads fast on a machine shared with other processes. The
// static assignment makes the result independent of scheduling (bitwise repeatable).
template <class Fn>
void for_each_round_robin(int workers, size_t count, Fn&& fn) {
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    const at::NoGradGuard no_grad;  // grad mode is thread-local; pool threads start with it on
    for (int64_t w = begin; w < end; ++w) {
      for (size_t k = static_cast<size_t>(w); k < count; k += static_cast<size_t>(workers)) fn(int(w), k);
    }
  });
}

// One worker's scratch: a tile, its row outputs, and its share of the gradient.
template <class S>
struct Worker {
  at::Tensor tile;    // tile * tile
  at::Tensor grad;    // (n, d); worker 0 writes into the op's dx directly; undefined without dx
  at::Tensor degree;  // (n,) Σ of W over row a and column a (Gaussian similarity)
  at::Tensor row_wsum;
  std::vector<double> row_value;
  double total = 0.0;
};

// dx: the gradient accumulator of the rows x, or undefined when no gradient is computed.
template <class S>
std::vector<Worker<S>> make_workers(int workers, const at::Tensor& x, at::Tensor& dx, long long tile) {
  std::vector<Worker<S>> ws(workers);
  for (int w = 0; w < workers; ++w) {
    ws[w].tile = at::empty({tile * tile}, x.options());
    if (dx.defined()) {
      ws[w].grad = w == 0 ? dx : at::zeros_like(dx);
      ws[w].degree = at::zeros({x.size(0)}, x.options());
    }
    ws[w].row_wsum = at::empty({tile}, x.options());
    ws[w].row_value.assign(tile, 0.0);
  }
  return ws;
}

// dX_I += W X_J and dX_J += W^T X_I (one entry of W stands for both orientations).
void accumulate_tile_gradient(at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, long long i0,
                              long long j0) {
  const long long ti = w.size(0), tj = w.size(1);
  const at::Tensor x_i = x.narrow(0, i0, ti);
  at::Tensor grad_i = grad.narrow(0, i0, ti);
  if (i0 == j0) {
    grad_i.addmm_(w, x_i).addmm_(w.t(), x_i);
  } else {
    grad_i.addmm_(w, x.narrow(0, j0, tj));
    grad.narrow(0, j0, tj).addmm_(w.t(), x_i);
  }
}

template <class S>
PairTile<S> gram_tile(const at::Tensor& x, at::Tensor& buffer, long long i0, long long j0, long long tile,
                      at::Tensor& w) {
  const long long n = x.size(0);
  const long long ti = std::min(tile, n - i0), tj = std::min(tile, n - j0);
  w = buffer.narrow(0, 0, ti * tj).view({ti, tj});
  at::mm_out(w, x.narrow(0, i0, ti), x.narrow(0, j0, tj).t());  // G_IJ, overwritten by W_IJ
  PairTile<S> t;
  t.g = w.data_ptr<S>();
  t.row0 = i0, t.nrows = ti, t.col0 = j0, t.ncols = tj;
  t.diagonal = i0 == j0;
  return t;
}

// Σ over anchors of the weighted pair terms (f-MICL's, or the uniformity's) of the rows x, and
// its gradient added into dx unless dx is undefined. x, weight, dx: (n, d), (n,), (n, d) of dtype S.
template <class S>
double pair_term_sum(const PairTermParams& p, const at::Tensor& x, const at::Tensor& weight, at::Tensor& dx,
                     long long tile) {
  const TileKernels<S>& kernels = best_tile_kernels<S>();
  const long long n = x.size(0);
  const bool gradient = dx.defined();
  const bool gaussian = p.similarity == Similarity::kGaussian;
  const at::Tensor norm_sq = (x * x).sum(1).contiguous();  // (n,)
  const auto tiles = upper_tiles_with_anchors(blocks_with_anchors(weight, tile), n, tile);
  const int workers = worker_count(n, x.size(1), sizeof(S), tiles.size(), gradient);
  std::vector<Worker<S>> ws = make_workers<S>(workers, x, dx, tile);

  for_each_round_robin(workers, tiles.size(), [&](int wi, size_t k) {
    Worker<S>& worker = ws[wi];
    const auto [i0, j0] = tiles[k];
    at::Tensor w;
    PairTile<S> t = gram_tile<S>(x, worker.tile, i0, j0, tile, w);
    t.norm_sq = norm_sq.data_ptr<S>();
    t.anchor_weight = weight.data_ptr<S>();
    kernels.pair_term_rows(p, t, worker.row_value.data(), worker.row_wsum.template data_ptr<S>(), 0, t.nrows);
    for (long long r = 0; r < t.nrows; ++r) worker.total += worker.row_value[r];
    if (!gradient) return;
    accumulate_tile_gradient(worker.grad, x, w, i0, j0);
    if (gaussian) {  // log r depends on |x_a|^2 and |x_b|^2 too: d/d|x_a|^2 = -½ d/dG_ab
      worker.degree.narrow(0, i0, t.nrows).add_(worker.row_wsum.narrow(0, 0, t.nrows));
      worker.degree.narrow(0, j0, t.ncols).add_(w.sum(0));
    }
  });

  double total = 0.0;
  for (int wi = 0; wi < workers; ++wi) {
    total += ws[wi].total;
    if (gradient && wi > 0) {
      dx.add_(ws[wi].grad);
      ws[0].degree.add_(ws[wi].degree);
    }
  }
  if (gradient && gaussian) dx.sub_(x * ws[0].degree.unsqueeze(1));
  return total;
}

// The InfoNCE sum over the anchors (0-dim float64); its gradient added into dx unless undefined.
template <class S>
at::Tensor infonce_sum(const InfonceParams& p, const at::Tensor& x, const at::Tensor& weight,
                       at::Tensor& dx, long long tile) {
  const TileKernels<S>& kernels = best_tile_kernels<S>();
  const long long n = x.size(0);
  const bool gradient = dx.defined();
  const std::vector<bool> has_anchor = blocks_with_anchors(weight, tile);
  const auto tiles = upper_tiles_with_anchors(has_anchor, n, tile);
  const int workers = worker_count(n, x.size(1), sizeof(S), tiles.size(), gradient);
  std::vector<Worker<S>> ws = make_workers<S>(workers, x, dx, tile);
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor row_max = at::full({n}, -std::numeric_limits<double>::infinity(), f64);
  at::Tensor row_sum = at::zeros({n}, f64);

  // Pass 1: the log-sum-exp of every row that needs one (anchor rows, and all rows of their
  // tiles), as row_max (the largest Gram entry, the exponents' shift) and row_sum. Rows are unit
  // vectors, so G <= 1: with the fixed shift 1 no exp underflows while 2/tau <= 80 (float32) or
  // 700 (float64), and one symmetric walk gives the row and the column sums (0.5 products).
  // Beyond that, the exact running maximum per row needs every row block against all columns
  // (1 product).
  const bool fixed_shift = 2.0 * p.inv_tau <= (sizeof(S) == 4 ? 80.0 : 700.0);
  if (fixed_shift) {
    const S shift = S(1);
    std::vector<at::Tensor> sums(workers);
    for (int wi = 0; wi < workers; ++wi) sums[wi] = at::zeros({n}, f64);
    for_each_round_robin(workers, tiles.size(), [&](int wi, size_t k) {
      const auto [i0, j0] = tiles[k];
      at::Tensor w;
      PairTile<S> t = gram_tile<S>(x, ws[wi].tile, i0, j0, tile, w);
      kernels.infonce_exp_sums(p, t, shift, ws[wi].row_value.data(), 0, t.nrows);
      double* sum = sums[wi].data_ptr<double>();
      for (long long r = 0; r < t.nrows; ++r) sum[i0 + r] += ws[wi].row_value[r];
      if (!t.diagonal) sums[wi].narrow(0, j0, t.ncols).add_(w.sum(0, /*keepdim=*/false, at::kDouble));
    });
    for (int wi = 0; wi < workers; ++wi) row_sum.add_(sums[wi]);
    row_max.masked_fill_(row_sum > 0, double(shift));  // rows never summed keep -inf
  } else {
    std::vector<long long> row_blocks;  // a worker owns whole row blocks: it alone writes their stats
    for (long long i0 = 0, bi = 0; i0 < n; i0 += tile, ++bi) {
      if (has_anchor[bi]) row_blocks.push_back(i0);
    }
    for_each_round_robin(workers, row_blocks.size(), [&](int wi, size_t k) {
      for (long long j0 = 0; j0 < n; j0 += tile) {
        at::Tensor w;
        PairTile<S> t = gram_tile<S>(x, ws[wi].tile, row_blocks[k], j0, tile, w);
        t.anchor_weight = weight.data_ptr<S>();
        kernels.infonce_stats(p, t, row_max.data_ptr<double>(), row_sum.data_ptr<double>(), 0, t.nrows);
      }
    });
  }
  const at::Tensor unused = row_max.isneginf();  // rows whose LSE no anchor needs
  const at::Tensor log_sum = at::where(unused, 0.0, row_sum.log());
  const at::Tensor lse64 = at::where(unused, std::numeric_limits<double>::infinity(), row_max * p.inv_tau + log_sum);
  // The positive logit C_{a,p(a)} / tau: O(M d), its -1 in the value and in the softmax gradient.
  const at::Tensor partner = at::cat({x.narrow(0, p.half_rows, p.half_rows), x.narrow(0, 0, p.half_rows)});
  const at::Tensor positive_logit = (x * partner).sum(1).to(at::kDouble) * p.inv_tau;
  const at::Tensor weight64 = weight.to(at::kDouble);
  const at::Tensor per_anchor = at::where(weight64 > 0, weight64 * (lse64 - positive_logit), 0.0);
  if (!gradient) return per_anchor.sum() * p.anchor_scale;

  // Pass 2: the softmax weights, both orientations of each entry, into the gradient.
  const at::Tensor shift = at::where(unused, std::numeric_limits<double>::infinity(), row_max).to(x.scalar_type());
  const at::Tensor log_sum_s = log_sum.to(x.scalar_type());
  for_each_round_robin(workers, tiles.size(), [&](int wi, size_t k) {
    const auto [i0, j0] = tiles[k];
    at::Tensor w;
    PairTile<S> t = gram_tile<S>(x, ws[wi].tile, i0, j0, tile, w);
    t.anchor_weight = weight.data_ptr<S>();
    kernels.infonce_weights(p, t, shift.data_ptr<S>(), log_sum_s.data_ptr<S>(), 0, t.nrows);
    accumulate_tile_gradient(ws[wi].grad, x, w, i0, j0);
  });
  for (int wi = 1; wi < workers; ++wi) dx.add_(ws[wi].grad);
  const at::Tensor partner_weight =
      at::cat({weight.narrow(0, p.half_rows, p.half_rows), weight.narrow(0, 0, p.half_rows)});
  dx.sub_(partner * ((weight + partner_weight) * S(p.anchor_scale * p.inv_tau)).unsqueeze(1));
  return per_anchor.sum() * p.anchor_scale;
}

std::tuple<at::Tensor, at::Tensor> fmicl_fwd_bwd_cpu(const at::Tensor& z, const std::optional<at::Tensor>& anchors,
                                                     c10::string_view divergence, c10::string_view similarity,
                                                     double sigma, double tau, double mu, double alpha,
                                                     double tsallis_alpha, bool normalize, bool needs_grad,
                                                     int64_t tile) {
  constexpr const char* op = "fmicl_fwd_bwd";
  check_embeddings(op, z, at::kCPU);
  const PairTermParams p =
      checked_fmicl_params(op, z.size(0), z.size(1), divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha);
  const long long rows = z.size(0);
  const long long t = tile_rows(op, tile, rows, default_tile(rows));
  const Rows x = prepare_rows(z, normalize || p.similarity == Similarity::kCosine);
  const at::Tensor weight = anchor_weights(op, anchors, rows, x.x.options());
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
    total = pair_term_sum<scalar_t>(p, x.x, weight, dx, t);
  });
  return {at::scalar_tensor(total, z.options().dtype(at::kDouble)), returned_gradient(z, dx, x)};
}

std::tuple<at::Tensor, at::Tensor> infonce_fwd_bwd_cpu(const at::Tensor& z, const std::optional<at::Tensor>& anchors,
                                                       double tau, bool needs_grad, int64_t tile) {
  constexpr const char* op = "infonce_fwd_bwd";
  check_embeddings(op, z, at::kCPU);
  FMICL_CHECK_POSITIVE(op, "tau", tau);
  const long long rows = z.size(0);
  const long long t = tile_rows(op, tile, rows, default_tile(rows));
  const Rows x = prepare_rows(z, /*normalize=*/true);
  const at::Tensor weight = anchor_weights(op, anchors, rows, x.x.options());
  const InfonceParams p = infonce_params(rows, z.size(1), tau);
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  at::Tensor total;
  AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
    total = infonce_sum<scalar_t>(p, x.x, weight, dx, t);
  });
  return {total, returned_gradient(z, dx, x)};
}

std::tuple<at::Tensor, at::Tensor> uniformity_fwd_bwd_cpu(const at::Tensor& z,
                                                          const std::optional<at::Tensor>& anchors, double t,
                                                          bool needs_grad, int64_t tile) {
  constexpr const char* op = "uniformity_fwd_bwd";
  check_embeddings(op, z, at::kCPU);
  FMICL_CHECK_POSITIVE(op, "t", t);
  const long long rows = z.size(0), half = rows / 2;
  const long long tr = tile_rows(op, tile, half, default_tile(half));
  const Rows x = prepare_rows(z, /*normalize=*/true);
  const at::Tensor weight = anchor_weights(op, anchors, rows, x.x.options());
  const PairTermParams p = uniformity_params(half, z.size(1), t);
  at::Tensor dx = gradient_accumulator(x, needs_grad);
  at::Tensor sums = at::zeros({2}, z.options().dtype(at::kDouble));
  for (long long v = 0; v < 2; ++v) {  // each view is its own set of pairs
    at::Tensor dx_v = dx.defined() ? dx.narrow(0, v * half, half) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.x.scalar_type(), op, [&] {
      sums[v] = pair_term_sum<scalar_t>(p, x.x.narrow(0, v * half, half),
                                        weight.narrow(0, v * half, half).contiguous(), dx_v, tr);
    });
  }
  return {sums, returned_gradient(z, dx, x)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fmicl, CPU, m) {
  m.impl("fmicl_fwd_bwd", &fmicl_fwd_bwd_cpu);
  m.impl("infonce_fwd_bwd", &infonce_fwd_bwd_cpu);
  m.impl("uniformity_fwd_bwd", &uniformity_fwd_bwd_cpu);
}

}  // namespace fmicl::cpu
