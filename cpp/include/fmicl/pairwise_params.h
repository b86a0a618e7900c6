// Plain parameter structs of the pairwise ops: the only contract between the host code that
// checks and prepares tensors and the code that walks the pairwise matrix (CPU tiles, CUDA
// kernels). No ATen types, so .cu files include it without the ATen headers.
#pragma once

#include "fmicl/pairwise_math.h"

namespace fmicl {

// Σ over anchor rows a, over partners b != a, of  weight(a, b) * term(log r_ab), where term is
// the positive term (b = positive_index(a)) or the negative term (any other b) of `divergence`,
// both already scaled by their global normalisers. f-MICL's sum (fmicl_params), and the
// uniformity's (uniformity_params): KL's negative term is r, so exp(-t D) is a Gaussian "r".
struct PairTermParams {
  long long rows = 0;       // M = 2N rows of x
  long long dim = 0;        // d
  long long half_rows = 0;  // N: the positive of row a is positive_index(a, N); 0 = no positives
  Divergence divergence = Divergence::kKL;
  Similarity similarity = Similarity::kGaussian;
  double log_mu = 0.0;
  double inv_two_sigma_sq = 0.0;  // 1 / (2 sigma^2), kGaussian
  double inv_tau = 0.0;           // 1 / tau, kCosine
  double tsallis_alpha = 1.5;
  double positive_scale = 0.0;  // multiplies each positive term: -1 / (2N)
  double negative_scale = 0.0;  // multiplies each negative term: alpha / (2N (2N - 2))

  // d log r / d G_ab: the weight of the Gram entry in the gradient.
  double dlogr_dgram() const {
    return similarity == Similarity::kGaussian ? 2.0 * inv_two_sigma_sq : inv_tau;
  }

  // alpha = 0 drops the negative terms: every backend skips them rather than multiplying them
  // by 0, because an overflowing term would turn 0 * inf into NaN (the reference skips them too).
  bool has_negatives() const { return negative_scale != 0.0; }
};

// f-MICL over M = 2N rows, LOSSES.md normalisers.
inline PairTermParams fmicl_params(long long rows, long long dim, Divergence divergence,
                                Similarity similarity, double sigma, double tau, double mu,
                                double alpha, double tsallis_alpha) {
  PairTermParams p;
  p.rows = rows;
  p.dim = dim;
  p.half_rows = rows / 2;
  p.divergence = divergence;
  p.similarity = similarity;
  p.log_mu = std::log(mu);
  p.inv_two_sigma_sq = 1.0 / (2.0 * sigma * sigma);
  p.inv_tau = 1.0 / tau;
  p.tsallis_alpha = tsallis_alpha;
  p.positive_scale = -1.0 / double(rows);
  p.negative_scale = alpha / (double(rows) * double(rows - 2));
  return p;
}

// The uniformity sum of one view of n rows: Σ_{i<j} exp(-t |x_i - x_j|^2) = ½ Σ_a Σ_{b != a}.
inline PairTermParams uniformity_params(long long rows, long long dim, double t) {
  PairTermParams p;
  p.rows = rows;
  p.dim = dim;
  p.half_rows = 0;
  p.divergence = Divergence::kKL;
  p.similarity = Similarity::kGaussian;
  p.log_mu = 0.0;
  p.inv_two_sigma_sq = t;
  p.negative_scale = 0.5;
  return p;
}

// InfoNCE over M = 2N rows: loss_a = LSE_{b != a}(C_ab / tau) - C_{a,p(a)} / tau, scaled by 1/2N.
struct InfonceParams {
  long long rows = 0;
  long long dim = 0;
  long long half_rows = 0;
  double inv_tau = 0.0;
  double anchor_scale = 0.0;  // 1 / (2N)
};

inline InfonceParams infonce_params(long long rows, long long dim, double tau) {
  InfonceParams p;
  p.rows = rows;
  p.dim = dim;
  p.half_rows = rows / 2;
  p.inv_tau = 1.0 / tau;
  p.anchor_scale = 1.0 / double(rows);
  return p;
}

}  // namespace fmicl
