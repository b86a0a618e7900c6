// Host code shared by the CPU and CUDA pairwise ops (cpp/src/pairwise_cpu.cpp,
// cpp/cuda/pairwise_cuda.cu): argument parsing and checks, and the rows the pairwise sums see
// (compute dtype, normalised) with the backward of that preparation. ATen host code only, so g++
// and nvcc's host pass both compile it; Tensor methods rather than operators keep the includes at
// ATen/core/Tensor.h. Each backend keeps its own tile walk and default tile.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string_view>
#include <utility>

#include "fmicl/check.h"
#include "fmicl/pairwise_params.h"

namespace fmicl {

inline constexpr double kNormEps = 1e-12;  // torch.nn.functional.normalize's eps

// The enumerator whose name (kDivergenceNames, kSimilarityNames) is `name`.
template <class Enum, std::size_t K>
Enum parse_name(const char* op, const char* what, std::string_view name, const char* const (&names)[K]) {
  for (std::size_t i = 0; i < K; ++i) {
    if (name == names[i]) return static_cast<Enum>(i);
  }
  std::ostringstream expected;
  for (std::size_t i = 0; i < K; ++i) expected << (i ? ", " : "") << names[i];
  TORCH_CHECK(false, op, ": unknown ", what, " '", name, "'; expected one of ", expected.str());
}

// fmicl_fwd_bwd's scalar arguments, parsed and checked, as the parameters of z (rows x dim).
inline PairTermParams checked_fmicl_params(const char* op, long long rows, long long dim,
                                        std::string_view divergence_name, std::string_view similarity_name,
                                        double sigma, double tau, double mu, double alpha,
                                        double tsallis_alpha) {
  const auto divergence = parse_name<Divergence>(op, "divergence", divergence_name, kDivergenceNames);
  const auto similarity = parse_name<Similarity>(op, "similarity", similarity_name, kSimilarityNames);
  if (similarity == Similarity::kGaussian) FMICL_CHECK_POSITIVE(op, "sigma", sigma);
  if (similarity == Similarity::kCosine) FMICL_CHECK_POSITIVE(op, "tau", tau);
  FMICL_CHECK_POSITIVE(op, "mu", mu);
  FMICL_CHECK_ARG(op, alpha >= 0.0 && std::isfinite(alpha), "alpha must be finite and >= 0, got ", alpha);
  if (divergence == Divergence::kTsallis) {
    FMICL_CHECK_ARG(op, tsallis_alpha > 0.0 && tsallis_alpha != 1.0 && std::isfinite(tsallis_alpha),
                    "tsallis_alpha must be finite, > 0 and != 1, got ", tsallis_alpha);
  }
  return fmicl_params(rows, dim, divergence, similarity, sigma, tau, mu, alpha, tsallis_alpha);
}

// z: 2N rows [z1; z2] (N >= 2) of at least one column, contiguous, floating, on `device`.
inline void check_embeddings(const char* op, const at::Tensor& z, c10::DeviceType device) {
  FMICL_CHECK_DEVICE(op, z, device);
  FMICL_CHECK_DIM(op, z, 2);
  FMICL_CHECK_CONTIGUOUS(op, z);
  FMICL_CHECK_FLOATING(op, z);
  FMICL_CHECK_ARG(op, z.size(1) >= 1, "z must have at least one column, got shape ", z.sizes());
  FMICL_CHECK_ARG(op, z.size(0) % 2 == 0 && z.size(0) >= 4,
                  "z must hold 2N rows [z1; z2] with N >= 2, got shape ", z.sizes());
}

// anchors: (A,) int64 row indices of z's `rows` rows, on the CPU whatever z's device: the range
// check reads them on the host, so it never waits for a GPU (a device-side index would need a
// sync to check, or a device-side assert that poisons the context). Returned contiguous.
inline at::Tensor checked_anchors(const char* op, const at::Tensor& anchors, long long rows) {
  FMICL_CHECK_ARG(op, anchors.device().is_cpu(), "anchors must be on the CPU (host-side row indices), got ",
                  anchors.device());
  FMICL_CHECK_DIM(op, anchors, 1);
  FMICL_CHECK_DTYPE(op, anchors, at::kLong);
  at::Tensor contiguous = anchors.contiguous();
  const int64_t* begin = contiguous.const_data_ptr<int64_t>();
  const int64_t* end = begin + contiguous.numel();
  if (begin != end) {
    const auto [lo, hi] = std::minmax_element(begin, end);
    FMICL_CHECK_ARG(op, *lo >= 0 && *hi < rows, "anchors must index rows of z (0..", rows - 1,
                    "), got values in [", *lo, ", ", *hi, "]");
  }
  return contiguous;
}

// The tile's rows: `tile`, or the backend's default when it is 0, within [1, rows].
inline long long tile_rows(const char* op, int64_t tile, long long rows, long long default_tile) {
  FMICL_CHECK_ARG(op, tile >= 0, "tile must be >= 0 (0 = default), got ", tile);
  return std::max<long long>(1, std::min<long long>(tile == 0 ? default_tile : tile, rows));
}

// The rows the pairwise math sees: z in the compute dtype (float32 for half types), L2-normalised
// like torch.nn.functional.normalize when asked. `norm` keeps |z| for the backward.
struct Rows {
  at::Tensor x;     // (M, d) compute dtype, contiguous
  at::Tensor norm;  // (M, 1) |z_a| when normalised, else undefined
};

inline Rows prepare_rows(const at::Tensor& z, bool normalize) {
  const auto dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor x = z.detach().to(dtype).contiguous();
  if (!normalize) return {x, at::Tensor()};
  at::Tensor norm = at::linalg_vector_norm(x, 2, {1}, /*keepdim=*/true);
  return {x.div(norm.clamp_min(kNormEps)).contiguous(), norm};
}

// d/dz of x = z / max(|z|, eps), applied to dx (in place).
inline at::Tensor normalize_backward(at::Tensor dx, const Rows& rows) {
  if (!rows.norm.defined()) return dx;
  const at::Tensor& u = rows.x;
  const at::Tensor radial = u.mul(dx).sum(1, /*keepdim=*/true).mul(rows.norm.gt(kNormEps));
  return dx.sub_(u.mul(radial)).div_(rows.norm.clamp_min(kNormEps));
}

// The gradient w.r.t. the rows x that the sums accumulate into: zeros when the op computes one
// (needs_grad), else undefined, and the sums skip every gradient product.
inline at::Tensor gradient_accumulator(const Rows& rows, bool needs_grad) {
  return needs_grad ? at::zeros_like(rows.x) : at::Tensor();
}

// grad_z as the ops return it: from dx, the gradient w.r.t. the rows, d/dz in z's dtype; without
// needs_grad (dx undefined) an empty (0, d) tensor in its place.
inline at::Tensor returned_gradient(const at::Tensor& z, at::Tensor dx, const Rows& rows) {
  if (!dx.defined()) return at::empty({0, z.size(1)}, z.options());
  return normalize_backward(std::move(dx), rows).to(z.scalar_type());
}

}  // namespace fmicl
