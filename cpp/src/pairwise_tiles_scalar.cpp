// The tile epilogues, one lane at a time: portable, the fallback where no SIMD set applies.
#include <cmath>

#include "pairwise_tiles.h"

namespace fmicl::cpu {
namespace {

// A one-lane "vector" with the interface pairwise_tiles_impl.h expects.
template <class S>
struct Lane1 {
  using Scalar = S;
  static constexpr int kWidth = 1;
  S v;
  Lane1() = default;
  Lane1(S x) : v(x) {}  // NOLINT: implicit broadcast, like the SIMD types
  static Lane1 load(const S* p) { return *p; }
  static Lane1 load_partial(const S* p, int n) { return n > 0 ? *p : S(0); }
  void store(S* p) const { *p = v; }
  void store_partial(S* p, int n) const {
    if (n > 0) *p = v;
  }
};

template <class S> Lane1<S> operator+(Lane1<S> a, Lane1<S> b) { return a.v + b.v; }
template <class S> Lane1<S> operator-(Lane1<S> a, Lane1<S> b) { return a.v - b.v; }
template <class S> Lane1<S> operator*(Lane1<S> a, Lane1<S> b) { return a.v * b.v; }
template <class S> Lane1<S> operator/(Lane1<S> a, Lane1<S> b) { return a.v / b.v; }
template <class S> Lane1<S> operator-(Lane1<S> a) { return -a.v; }
template <class S> Lane1<S> max(Lane1<S> a, Lane1<S> b) { return math::max(a.v, b.v); }
template <class S> Lane1<S> abs(Lane1<S> a) { return math::abs(a.v); }
template <class S> Lane1<S> exp(Lane1<S> a) { return math::exp(a.v); }
template <class S> Lane1<S> expm1(Lane1<S> a) { return math::expm1(a.v); }
template <class S> Lane1<S> log1p(Lane1<S> a) { return math::log1p(a.v); }
template <class S> Lane1<S> tanh(Lane1<S> a) { return math::tanh(a.v); }
template <class S> Lane1<S> select_nonneg(Lane1<S> x, Lane1<S> a, Lane1<S> b) {
  return math::select_nonneg(x.v, a.v, b.v);
}
template <class S> Lane1<S> blend_first(Lane1<S> v, int n, Lane1<S> fill) { return n >= 1 ? v : fill; }
template <class S> double reduce_add(Lane1<S> v) { return double(v.v); }
template <class S> S reduce_max(Lane1<S> v) { return v.v; }

}  // namespace
}  // namespace fmicl::cpu

#include "pairwise_tiles_impl.h"

namespace fmicl::cpu {

template <>
const TileKernels<float>& scalar_tile_kernels<float>() {
  static const TileKernels<float> kernels = make_tile_kernels<Lane1<float>>("scalar");
  return kernels;
}

template <>
const TileKernels<double>& scalar_tile_kernels<double>() {
  static const TileKernels<double> kernels = make_tile_kernels<Lane1<double>>("scalar");
  return kernels;
}

}  // namespace fmicl::cpu
