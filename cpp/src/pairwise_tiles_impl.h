// The tile epilogues as templates over a vector type V (include once per instruction set, after
// defining V; everything here has internal linkage so the per-ISA copies never mix).
//
// V: V::kWidth lanes of V::Scalar; V(S) broadcasts; + - * / and math::{max, abs, exp, expm1,
// log1p, tanh, select_nonneg} through argument-dependent lookup; V::load(p), V::load_partial(p, n) (lanes >= n read as
// 0), v.store(p), v.store_partial(p, n), blend_first(v, n, fill) (lanes >= n := fill),
// reduce_add(v) -> double, reduce_max(v) -> S.
#pragma once

#include <cmath>
#include <limits>
#include <utility>

#include "pairwise_tiles.h"

namespace fmicl::cpu {
namespace {

// Calls body(c, n) over the columns [0, ncols) minus the (up to two) excluded columns, in vectors
// of n = V::kWidth columns and one partial vector (n < kWidth) at the end of each segment.
template <class V, class Body>
inline void for_each_vector(long long ncols, long long skip1, long long skip2, Body&& body) {
  constexpr long long W = V::kWidth;
  if (skip1 > skip2) std::swap(skip1, skip2);
  auto segment = [&](long long begin, long long end) {
    long long c = begin;
    for (; c + W <= end; c += W) body(c, int(W));
    if (c < end) body(c, int(end - c));
  };
  long long begin = 0;
  for (long long skip : {skip1, skip2}) {
    if (skip < 0 || skip >= ncols) continue;
    segment(begin, skip);
    begin = skip + 1;
  }
  segment(begin, ncols);
}

template <class V>
inline V load_n(const typename V::Scalar* p, int n) {
  return n == V::kWidth ? V::load(p) : V::load_partial(p, n);
}

template <class V>
inline void store_n(const V& v, typename V::Scalar* p, int n) {
  if (n == V::kWidth) {
    v.store(p);
  } else {
    v.store_partial(p, n);
  }
}

template <class V, Divergence D, Similarity Sim>
void pair_term_rows_impl(const PairTermParams& p, const PairTile<typename V::Scalar>& t, double* row_value,
                         typename V::Scalar* row_wsum, long long r_begin, long long r_end) {
  using S = typename V::Scalar;
  using math::exp;
  const V log_mu(S(p.log_mu));
  const V inv_two_sigma_sq(S(p.inv_two_sigma_sq));
  const V inv_tau(S(p.inv_tau));
  const V tsallis_alpha(S(p.tsallis_alpha));
  const S dlogr_dgram = S(Sim == Similarity::kGaussian ? 2.0 * p.inv_two_sigma_sq : p.inv_tau);
  const S negative_value_scale = S(p.negative_scale);
  const S negative_grad_scale = S(p.negative_scale) * dlogr_dgram;
  const bool negatives = p.has_negatives();

  // log r of n columns starting at column c of row a (norm_a: |x_a|^2 broadcast).
  auto log_r = [&](const V& gram, const V& norm_a, long long c, int n) {
    if constexpr (Sim == Similarity::kGaussian) {
      const V norm_b = load_n<V>(t.norm_sq + t.col0 + c, n);
      return gaussian_log_similarity(gram, norm_a, norm_b, log_mu, inv_two_sigma_sq);
    } else {
      return log_mu + gram * inv_tau;
    }
  };
  // weight(a, b): how many anchors the entry stands for.
  auto pair_weight = [&](S weight_a, long long c, int n) {
    return t.diagonal ? V(weight_a) : V(weight_a) + load_n<V>(t.anchor_weight + t.col0 + c, n);
  };

  for (long long r = r_begin; r < r_end; ++r) {
    const long long a = t.row0 + r;
    S* g = t.g + r * t.ncols;
    const S weight_a = t.anchor_weight[a];
    const V norm_a(Sim == Similarity::kGaussian ? t.norm_sq[a] : S(0));
    const long long self_col = t.diagonal ? r : -1;
    long long positive_col = -1;
    if (p.half_rows > 0) {
      const long long c = positive_index(a, p.half_rows) - t.col0;
      if (c >= 0 && c < t.ncols) positive_col = c;
    }

    V value_acc(S(0)), wsum_acc(S(0));
    // alpha = 0: no negative terms (PairTermParams::has_negatives)
    for_each_vector<V>(negatives ? t.ncols : 0, self_col, positive_col, [&](long long c, int n) {
      const V s = log_r(load_n<V>(g + c, n), norm_a, c, n);
      V value, dvalue;
      negative_term<D>(s, tsallis_alpha, value, dvalue);
      const V w = pair_weight(weight_a, c, n);
      // blend (not multiply by a 0/1 mask): lanes past n may hold inf from exp overflow
      const V term = blend_first(w * value * V(negative_value_scale), n, V(S(0)));
      const V grad = blend_first(w * dvalue * V(negative_grad_scale), n, V(S(0)));
      value_acc = value_acc + term;
      wsum_acc = wsum_acc + grad;
      store_n(grad, g + c, n);
    });
    double value = reduce_add(value_acc);
    double wsum = reduce_add(wsum_acc);
    if (!negatives) {
      for (long long c = 0; c < t.ncols; ++c) {
        if (c != positive_col) g[c] = S(0);
      }
    }

    if (self_col >= 0) g[self_col] = S(0);
    if (positive_col >= 0) {  // one lane: the positive term instead of the negative one
      const V s = log_r(V::load_partial(g + positive_col, 1), norm_a, positive_col, 1);
      V pvalue, dpvalue;
      positive_term<D>(s, tsallis_alpha, pvalue, dpvalue);
      const V w = pair_weight(weight_a, positive_col, 1);
      const V term = blend_first(w * pvalue * V(S(p.positive_scale)), 1, V(S(0)));
      const V grad = blend_first(w * dpvalue * V(S(p.positive_scale) * dlogr_dgram), 1, V(S(0)));
      value += reduce_add(term);
      wsum += reduce_add(grad);
      grad.store_partial(g + positive_col, 1);
    }
    row_value[r] = value;
    row_wsum[r] = S(wsum);
  }
}

template <class V>
void pair_term_rows(const PairTermParams& p, const PairTile<typename V::Scalar>& t, double* row_value,
                    typename V::Scalar* row_wsum, long long r_begin, long long r_end) {
#define FMICL_DIVERGENCE_CASE(D, name)                                                                            \
  case Divergence::D:                                                                                             \
    if (p.similarity == Similarity::kGaussian) {                                                                  \
      pair_term_rows_impl<V, Divergence::D, Similarity::kGaussian>(p, t, row_value, row_wsum, r_begin, r_end);    \
    } else {                                                                                                      \
      pair_term_rows_impl<V, Divergence::D, Similarity::kCosine>(p, t, row_value, row_wsum, r_begin, r_end);      \
    }                                                                                                             \
    return;
  switch (p.divergence) {
    FMICL_FOR_EACH_DIVERGENCE(FMICL_DIVERGENCE_CASE)
  }
#undef FMICL_DIVERGENCE_CASE
}

// InfoNCE exponents are formed as (G - shift) * inv_tau, shift a row's maximum Gram entry: the
// difference first, then the scale. G * inv_tau - shift would let the compiler fuse the product
// into the subtraction (FMA): at tau = 1e-10 in float32 the unrounded product exceeds the rounded
// maximum by up to half an ulp of 1e10 (512), and exp(512) overflows. The difference is exact
// for close entries and <= 0 for every entry of the row, fused or not.
template <class V>
void infonce_stats(const InfonceParams& p, const PairTile<typename V::Scalar>& t, double* row_max,
                   double* row_sum, long long r_begin, long long r_end) {
  using S = typename V::Scalar;
  using math::exp;
  using math::max;
  const S minus_inf = -std::numeric_limits<S>::infinity();
  const V inv_tau(S(p.inv_tau));
  for (long long r = r_begin; r < r_end; ++r) {
    const long long a = t.row0 + r;
    const S* g = t.g + r * t.ncols;
    const long long self_col = t.diagonal ? r : -1;
    V vmax(minus_inf);
    for_each_vector<V>(t.ncols, self_col, -1, [&](long long c, int n) {
      vmax = max(vmax, blend_first(load_n<V>(g + c, n), n, V(minus_inf)));
    });
    const S tile_max = reduce_max(vmax);
    if (tile_max == minus_inf) continue;  // a 1 x 1 diagonal tile: nothing but the anchor itself
    const double old_max = row_max[a];
    const S new_max = S(std::fmax(old_max, double(tile_max)));
    const V shift(new_max);
    V sum_acc(S(0));
    for_each_vector<V>(t.ncols, self_col, -1, [&](long long c, int n) {
      sum_acc = sum_acc + blend_first(exp((load_n<V>(g + c, n) - shift) * inv_tau), n, V(S(0)));
    });
    row_sum[a] = row_sum[a] * std::exp((old_max - double(new_max)) * p.inv_tau) + reduce_add(sum_acc);
    row_max[a] = double(new_max);
  }
}

template <class V>
void infonce_exp_sums(const InfonceParams& p, const PairTile<typename V::Scalar>& t, typename V::Scalar shift,
                      double* row_sum, long long r_begin, long long r_end) {
  using S = typename V::Scalar;
  using math::exp;
  const V inv_tau(S(p.inv_tau));
  const V shift_v(shift);
  for (long long r = r_begin; r < r_end; ++r) {
    S* g = t.g + r * t.ncols;
    const long long self_col = t.diagonal ? r : -1;
    V sum_acc(S(0));
    for_each_vector<V>(t.ncols, self_col, -1, [&](long long c, int n) {
      const V e = blend_first(exp((load_n<V>(g + c, n) - shift_v) * inv_tau), n, V(S(0)));
      sum_acc = sum_acc + e;
      store_n(e, g + c, n);
    });
    if (self_col >= 0) g[self_col] = S(0);
    row_sum[r] = reduce_add(sum_acc);
  }
}

template <class V>
void infonce_weights(const InfonceParams& p, const PairTile<typename V::Scalar>& t,
                     const typename V::Scalar* shift, const typename V::Scalar* log_sum, long long r_begin,
                     long long r_end) {
  using S = typename V::Scalar;
  using math::exp;
  using math::max;
  const V inv_tau(S(p.inv_tau));
  const V grad_scale(S(p.anchor_scale * p.inv_tau));
  const V zero(S(0));
  // softmax_a(b) = exp((G_ab - shift_a) inv_tau - log_sum_a); the difference is clamped at 0
  // because an entry of the other orientation (b's row) comes from the transposed tile of pass 1,
  // whose product may round an ulp differently: at tau = 1e-10 an ulp of G is worth ~600 nats.
  const auto softmax = [&](const V& g, const V& shift_v, const V& log_sum_v) {
    return exp(-max(shift_v - g, zero) * inv_tau - log_sum_v);
  };
  for (long long r = r_begin; r < r_end; ++r) {
    const long long a = t.row0 + r;
    S* g = t.g + r * t.ncols;
    const V weight_a(t.anchor_weight[a]);
    const V shift_a(shift[a]);
    const V log_sum_a(log_sum[a]);
    const long long self_col = t.diagonal ? r : -1;
    for_each_vector<V>(t.ncols, self_col, -1, [&](long long c, int n) {
      const V gram = load_n<V>(g + c, n);
      V weight = weight_a * softmax(gram, shift_a, log_sum_a);  // anchor a's softmax over its partners b
      if (!t.diagonal) {                                         // and anchor b's over its partners, a among them
        const V weight_b = load_n<V>(t.anchor_weight + t.col0 + c, n);
        const V shift_b = load_n<V>(shift + t.col0 + c, n);
        weight = weight + weight_b * softmax(gram, shift_b, load_n<V>(log_sum + t.col0 + c, n));
      }
      store_n(weight * grad_scale, g + c, n);
    });
    if (self_col >= 0) g[self_col] = S(0);
  }
}

template <class V>
TileKernels<typename V::Scalar> make_tile_kernels(const char* isa) {
  return {isa, &pair_term_rows<V>, &infonce_stats<V>, &infonce_exp_sums<V>, &infonce_weights<V>};
}

}  // namespace
}  // namespace fmicl::cpu
