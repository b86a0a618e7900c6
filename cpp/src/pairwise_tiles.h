// The CPU epilogues of the tiled pairwise ops: what happens to one tile G_IJ = X_I X_J^T right
// after the matrix product that made it, while it is still in cache. Host code
// (pairwise_cpu.cpp) owns the tile loop and the matrix products; the epilogues are compiled once
// per instruction set (pairwise_tiles_avx2.cpp, pairwise_tiles_scalar.cpp) from one template
// (pairwise_tiles_impl.h) and chosen at run time.
#pragma once

#include <cstdlib>
#include <string_view>

#include "fmicl/pairwise_params.h"

namespace fmicl::cpu {

// One tile of the Gram matrix of the rows x: rows [row0, row0 + nrows) x columns
// [col0, col0 + ncols). Row indices are global (into norm_sq, anchor_weight, the positives).
template <class S>
struct PairTile {
  S* g = nullptr;  // nrows x ncols, row-major: G_IJ in; the epilogue overwrites it with W_IJ
  long long row0 = 0, nrows = 0, col0 = 0, ncols = 0;
  // diagonal (I == J): every ordered pair (a, b) of the tile is visited once, as (row, column);
  // otherwise the one entry G_ab stands for both orientations (a, b) and (b, a).
  bool diagonal = false;
  const S* norm_sq = nullptr;        // (M,) |x_a|^2, used by the Gaussian similarity
  const S* anchor_weight = nullptr;  // (M,) how many times row a is an anchor (0 or 1 usually)
};

// The pair-term sums (f-MICL, the uniformity): W_ab = d(loss_sum)/dG_ab over the orientations
// the entry stands for; row_value[r] = Σ_b of the weighted terms; row_wsum[r] = Σ_b W_ab (for the
// Gaussian similarity's dependence on |x_a|^2).
template <class S>
using PairTermRowsFn = void (*)(const PairTermParams& p, const PairTile<S>& t, double* row_value,
                                S* row_wsum, long long r_begin, long long r_end);

// InfoNCE pass 1: merges the tile into the running log-sum-exp of each row, kept as
// (row_max[a], row_sum[a]): row_max the largest Gram entry G_ab so far (-inf at the start),
// row_sum = Σ_b exp((G_ab - row_max) inv_tau), so LSE_a = row_max[a] inv_tau + log(row_sum[a]).
template <class S>
using InfonceStatsFn = void (*)(const InfonceParams& p, const PairTile<S>& t, double* row_max,
                                double* row_sum, long long r_begin, long long r_end);

// InfoNCE pass 1 with a fixed shift, in Gram units (rows are unit vectors, so every G_ab <= 1):
// overwrites the tile with E_ab = exp((G_ab - shift) inv_tau) (0 on the diagonal) and writes the
// row sums to row_sum[r] (tile-local rows); column sums are the host's (one entry, two rows).
template <class S>
using InfonceExpSumsFn = void (*)(const InfonceParams& p, const PairTile<S>& t, S shift, double* row_sum,
                                  long long r_begin, long long r_end);

// InfoNCE pass 2: W_ab = d(loss_sum)/dG_ab of the softmax part (the positive's -1 is added by the
// host code), given for every row a (M,) its shift (Gram units) and log_sum with
// LSE_a = shift[a] inv_tau + log_sum[a] (shift +inf, log_sum 0 where a's LSE is unused).
template <class S>
using InfonceWeightsFn = void (*)(const InfonceParams& p, const PairTile<S>& t, const S* shift,
                                  const S* log_sum, long long r_begin, long long r_end);

template <class S>
struct TileKernels {
  const char* isa;
  PairTermRowsFn<S> pair_term_rows;
  InfonceStatsFn<S> infonce_stats;
  InfonceExpSumsFn<S> infonce_exp_sums;
  InfonceWeightsFn<S> infonce_weights;
};

// Defined in pairwise_tiles_scalar.cpp (portable) and pairwise_tiles_avx2.cpp (x86-64; returns
// nullptr where the CPU lacks AVX2/FMA or the file was built for another architecture).
template <class S>
const TileKernels<S>& scalar_tile_kernels();
template <class S>
const TileKernels<S>* avx2_tile_kernels();

// The fastest set this CPU runs, or the portable one when the environment variable
// FMICL_CPU_TILES=scalar (read on every call, so tests can check both sets in one process).
template <class S>
const TileKernels<S>& best_tile_kernels() {
  const char* choice = std::getenv("FMICL_CPU_TILES");
  const TileKernels<S>* avx2 = avx2_tile_kernels<S>();
  if (avx2 != nullptr && (choice == nullptr || std::string_view(choice) != "scalar")) return *avx2;
  return scalar_tile_kernels<S>();
}

}  // namespace fmicl::cpu
