// The tile epilogues on AVX2 + FMA: 8 floats or 4 doubles per instruction, exp/expm1/log1p from
// SLEEF (1-ulp), which libtorch_cpu exports. The file is compiled for AVX2 by the pragma below and
// used only after a run-time CPU check, so the rest of the extension stays baseline x86-64. The
// pragma comes after the standard headers and before our own: the templates of pairwise_math.h
// must be compiled for AVX2 too (a baseline template passing __m256 by value breaks the ABI), and
// they get internal linkage here (FMICL_HOST_DEVICE) so these copies never serve other files.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FMICL_HAVE_AVX2_TILES 1
#define FMICL_HOST_DEVICE static inline
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

// Declared here rather than through torch's sleef.h, which hides its AVX declarations unless
// __AVX__ is defined on the command line (g++ does not define it for a target pragma).
extern "C" {
__m256 Sleef_expf8_u10avx2(__m256);
__m256 Sleef_expm1f8_u10avx2(__m256);
__m256 Sleef_log1pf8_u10avx2(__m256);
__m256 Sleef_tanhf8_u10avx2(__m256);
__m256d Sleef_expd4_u10avx2(__m256d);
__m256d Sleef_expm1d4_u10avx2(__m256d);
__m256d Sleef_log1pd4_u10avx2(__m256d);
__m256d Sleef_tanhd4_u10avx2(__m256d);
}
#endif

#include "pairwise_tiles.h"

#if defined(FMICL_HAVE_AVX2_TILES)
namespace fmicl::cpu {
namespace {

// Lane masks for maskload/maskstore/blend: the first n lanes set.
alignas(32) const int32_t kMask32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
alignas(32) const int64_t kMask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

struct VecF {
  using Scalar = float;
  static constexpr int kWidth = 8;
  __m256 v;
  VecF() = default;
  VecF(__m256 x) : v(x) {}                    // NOLINT
  VecF(float x) : v(_mm256_set1_ps(x)) {}     // NOLINT: implicit broadcast
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask32 + 8 - n)); }
  static VecF load(const float* p) { return _mm256_loadu_ps(p); }
  static VecF load_partial(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, mask(n), v); }
};

inline VecF operator+(VecF a, VecF b) { return _mm256_add_ps(a.v, b.v); }
inline VecF operator-(VecF a, VecF b) { return _mm256_sub_ps(a.v, b.v); }
inline VecF operator*(VecF a, VecF b) { return _mm256_mul_ps(a.v, b.v); }
inline VecF operator/(VecF a, VecF b) { return _mm256_div_ps(a.v, b.v); }
inline VecF operator-(VecF a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }
inline VecF max(VecF a, VecF b) { return _mm256_max_ps(a.v, b.v); }
inline VecF abs(VecF a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
inline VecF exp(VecF a) { return Sleef_expf8_u10avx2(a.v); }
inline VecF expm1(VecF a) { return Sleef_expm1f8_u10avx2(a.v); }
inline VecF log1p(VecF a) { return Sleef_log1pf8_u10avx2(a.v); }
inline VecF tanh(VecF a) { return Sleef_tanhf8_u10avx2(a.v); }
inline VecF select_nonneg(VecF x, VecF a, VecF b) {
  return _mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_GE_OQ));
}
inline VecF blend_first(VecF v, int n, VecF fill) {
  return _mm256_blendv_ps(fill.v, v.v, _mm256_castsi256_ps(VecF::mask(n)));
}
inline double reduce_add(VecF a) {
  const __m256d sum = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a.v)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(a.v, 1)));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, sum);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}
inline float reduce_max(VecF a) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, a.v);
  float m = lanes[0];
  for (int i = 1; i < 8; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

struct VecD {
  using Scalar = double;
  static constexpr int kWidth = 4;
  __m256d v;
  VecD() = default;
  VecD(__m256d x) : v(x) {}                  // NOLINT
  VecD(double x) : v(_mm256_set1_pd(x)) {}   // NOLINT: implicit broadcast
  static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask64 + 4 - n)); }
  static VecD load(const double* p) { return _mm256_loadu_pd(p); }
  static VecD load_partial(const double* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store_partial(double* p, int n) const { _mm256_maskstore_pd(p, mask(n), v); }
};

inline VecD operator+(VecD a, VecD b) { return _mm256_add_pd(a.v, b.v); }
inline VecD operator-(VecD a, VecD b) { return _mm256_sub_pd(a.v, b.v); }
inline VecD operator*(VecD a, VecD b) { return _mm256_mul_pd(a.v, b.v); }
inline VecD operator/(VecD a, VecD b) { return _mm256_div_pd(a.v, b.v); }
inline VecD operator-(VecD a) { return _mm256_xor_pd(a.v, _mm256_set1_pd(-0.0)); }
inline VecD max(VecD a, VecD b) { return _mm256_max_pd(a.v, b.v); }
inline VecD abs(VecD a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v); }
inline VecD exp(VecD a) { return Sleef_expd4_u10avx2(a.v); }
inline VecD expm1(VecD a) { return Sleef_expm1d4_u10avx2(a.v); }
inline VecD log1p(VecD a) { return Sleef_log1pd4_u10avx2(a.v); }
inline VecD tanh(VecD a) { return Sleef_tanhd4_u10avx2(a.v); }
inline VecD select_nonneg(VecD x, VecD a, VecD b) {
  return _mm256_blendv_pd(b.v, a.v, _mm256_cmp_pd(x.v, _mm256_setzero_pd(), _CMP_GE_OQ));
}
inline VecD blend_first(VecD v, int n, VecD fill) {
  return _mm256_blendv_pd(fill.v, v.v, _mm256_castsi256_pd(VecD::mask(n)));
}
inline double reduce_add(VecD a) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, a.v);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}
inline double reduce_max(VecD a) {
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, a.v);
  double m = lanes[0];
  for (int i = 1; i < 4; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

}  // namespace
}  // namespace fmicl::cpu

#include "pairwise_tiles_impl.h"
#pragma GCC pop_options
#endif

// Baseline code from here: the CPU check runs before any AVX2 instruction.

namespace fmicl::cpu {
namespace {
bool cpu_has_avx2() {
#if defined(FMICL_HAVE_AVX2_TILES)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

template <>
const TileKernels<float>* avx2_tile_kernels<float>() {
#if defined(FMICL_HAVE_AVX2_TILES)
  if (!cpu_has_avx2()) return nullptr;
  static const TileKernels<float> kernels = make_tile_kernels<VecF>("avx2");
  return &kernels;
#else
  return nullptr;
#endif
}

template <>
const TileKernels<double>* avx2_tile_kernels<double>() {
#if defined(FMICL_HAVE_AVX2_TILES)
  if (!cpu_has_avx2()) return nullptr;
  static const TileKernels<double> kernels = make_tile_kernels<VecD>("avx2");
  return &kernels;
#else
  return nullptr;
#endif
}

}  // namespace fmicl::cpu
