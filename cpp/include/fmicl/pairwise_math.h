// The per-pair terms of the pairwise objectives (definitions: docs/LOSSES.md), written once for
// every backend: CPU scalar, CPU SIMD (a vector type with the same operators) and CUDA.
//
// Everything is a function of s = log r, never of r: log r of the f-Gaussian similarity is
// log(mu) - D / (2 sigma^2), and forming r first would overflow or underflow long before the terms
// do (r^beta = exp(beta s), log(1 + r) = softplus(s)). Each function returns the value and its
// derivative with respect to s, because one pass computes the loss and its gradient.
//
// T is float, double or a SIMD type providing + - * /, max, abs, exp, expm1, log1p, tanh and
// select_nonneg found by argument-dependent lookup. The bodies are branch-free (a select, no `if`
// on T) so they vectorise.
#pragma once

#include <cmath>

// A file compiled for another instruction set (cpp/src/pairwise_tiles_avx2.cpp) predefines it as
// `static inline`, so its copies of these functions never replace the baseline ones at link time.
#if !defined(FMICL_HOST_DEVICE)
#if defined(__CUDACC__)
#define FMICL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FMICL_HOST_DEVICE inline
#endif
#endif

namespace fmicl {

// The divergences (the f of f-MICL), each once: its enumerator and the name fmicl_fwd_bwd's
// `divergence` argument takes. The enum, the names, the host's parsing and every backend's
// runtime-to-template switch are generated from this list; Python's list
// (fmicl_engine.loss.validation.DIVERGENCES) is tested against it through the extension
// (fmicl_engine._C.divergences). Adding one: a line here, then a branch in positive_term and in
// negative_term below (a static_assert fails the build until both exist), and docs/LOSSES.md.
//   switch (p.divergence) { FMICL_FOR_EACH_DIVERGENCE(MY_CASE) }   with MY_CASE(D, name) a
//   `case Divergence::D: ...`.
#define FMICL_FOR_EACH_DIVERGENCE(X) \
  X(kKL, "kl")                       \
  X(kJS, "js")                       \
  X(kPearson, "pearson")             \
  X(kSH, "sh")                       \
  X(kTsallis, "tsallis")             \
  X(kVLC, "vlc")

#define FMICL_ENUMERATOR(D, name) D,
#define FMICL_NAME(D, name) name,
enum class Divergence : int { FMICL_FOR_EACH_DIVERGENCE(FMICL_ENUMERATOR) };
// Indexed by the enum's value.
inline constexpr const char* kDivergenceNames[] = {FMICL_FOR_EACH_DIVERGENCE(FMICL_NAME)};

// How log r is formed from the Gram entry G_ab = x_a . x_b of the (normalised) rows:
//   kGaussian: log r = log(mu) - max(|x_a|^2 + |x_b|^2 - 2 G_ab, 0) / (2 sigma^2)
//   kCosine:   log r = log(mu) + G_ab / tau      (rows are unit vectors, so G_ab is the cosine)
#define FMICL_FOR_EACH_SIMILARITY(X) \
  X(kGaussian, "gaussian")           \
  X(kCosine, "cosine")

enum class Similarity : int { FMICL_FOR_EACH_SIMILARITY(FMICL_ENUMERATOR) };
inline constexpr const char* kSimilarityNames[] = {FMICL_FOR_EACH_SIMILARITY(FMICL_NAME)};
#undef FMICL_ENUMERATOR
#undef FMICL_NAME

// false, but only once D is known: the last `else` of a constexpr chain over D asserts it, so a
// divergence without a branch fails to compile instead of silently taking another's.
template <Divergence D>
inline constexpr bool kDependentFalse = false;

namespace math {

// Scalar overloads; SIMD types bring their own through argument-dependent lookup.
FMICL_HOST_DEVICE float exp(float x) { return ::expf(x); }
FMICL_HOST_DEVICE double exp(double x) { return ::exp(x); }
FMICL_HOST_DEVICE float expm1(float x) { return ::expm1f(x); }
FMICL_HOST_DEVICE double expm1(double x) { return ::expm1(x); }
FMICL_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
FMICL_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
FMICL_HOST_DEVICE float tanh(float x) { return ::tanhf(x); }
FMICL_HOST_DEVICE double tanh(double x) { return ::tanh(x); }
FMICL_HOST_DEVICE float max(float a, float b) { return ::fmaxf(a, b); }
FMICL_HOST_DEVICE double max(double a, double b) { return ::fmax(a, b); }
FMICL_HOST_DEVICE float abs(float x) { return ::fabsf(x); }
FMICL_HOST_DEVICE double abs(double x) { return ::fabs(x); }

// a where x >= 0, else b (lane-wise for SIMD types).
FMICL_HOST_DEVICE float select_nonneg(float x, float a, float b) { return x >= 0.0f ? a : b; }
FMICL_HOST_DEVICE double select_nonneg(double x, double a, double b) { return x >= 0.0 ? a : b; }

// softplus(x) = log(1 + e^x), exact for all x (no overflow for large x, no loss for small).
template <class T>
FMICL_HOST_DEVICE T softplus(T x) {
  return max(x, T(0)) + log1p(exp(-abs(x)));
}

// sigmoid(x) = 1 / (1 + e^-x); e^-x = inf gives 0 and e^-x = 0 gives 1, both exact limits.
template <class T>
FMICL_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// The logistic functions of s that JS and VLC need, from one exponential e = exp(-|s|) (the
// epilogue's cost is its transcendental calls): softplus(+-s) and sigmoid(+-s), all exact.
template <class T>
FMICL_HOST_DEVICE void logistic(T s, T& e, T& sigmoid_pos, T& sigmoid_neg) {
  e = exp(-abs(s));  // then softplus(+-s) = max(+-s, 0) + log1p(e)
  const T inv = T(1) / (T(1) + e);
  const T e_inv = e * inv;
  sigmoid_pos = select_nonneg(s, inv, e_inv);
  sigmoid_neg = select_nonneg(s, e_inv, inv);
}

}  // namespace math

// The positive term f'(r) of LOSSES.md as a function of s = log r, and d/ds of it.
// tsallis_alpha is only read by kTsallis.
template <Divergence D, class T>
FMICL_HOST_DEVICE void positive_term(T s, T tsallis_alpha, T& value, T& dvalue) {
  using namespace math;
  if constexpr (D == Divergence::kKL) {  // log r + 1
    value = s + T(1);
    dvalue = T(1);
  } else if constexpr (D == Divergence::kJS) {  // log 2 + log r - log(1 + r) = log 2 - softplus(-s)
    T e, sigmoid_pos, sigmoid_neg;
    logistic(s, e, sigmoid_pos, sigmoid_neg);
    value = T(0.69314718055994530942) - (max(-s, T(0)) + log1p(e));
    dvalue = sigmoid_neg;
  } else if constexpr (D == Divergence::kPearson) {  // 2 (r - 1)
    value = T(2) * expm1(s);
    dvalue = T(2) * exp(s);
  } else if constexpr (D == Divergence::kSH) {  // 1 - r^(-1/2)
    value = -expm1(T(-0.5) * s);
    dvalue = T(0.5) * exp(T(-0.5) * s);
  } else if constexpr (D == Divergence::kTsallis) {  // (a r^(a-1) - 1) / (a - 1)
    const T e = exp((tsallis_alpha - T(1)) * s);
    value = (tsallis_alpha * e - T(1)) / (tsallis_alpha - T(1));
    dvalue = tsallis_alpha * e;
  } else if constexpr (D == Divergence::kVLC) {  // 1 - 4 / (1 + r)^2 = 1 - 4 (1 - q)^2, q = r / (1 + r) = sigmoid(s)
    T e, q, one_minus_q;
    logistic(s, e, q, one_minus_q);
    value = T(1) - T(4) * one_minus_q * one_minus_q;
    dvalue = T(8) * one_minus_q * one_minus_q * q;
  } else {
    static_assert(kDependentFalse<D>, "positive_term: a divergence without its f'(r)");
  }
}

// The negative term f*(f'(r)) = r f'(r) - f(r) of LOSSES.md as a function of s, and d/ds of it.
template <Divergence D, class T>
FMICL_HOST_DEVICE void negative_term(T s, T tsallis_alpha, T& value, T& dvalue) {
  using namespace math;
  if constexpr (D == Divergence::kKL) {  // r
    value = exp(s);
    dvalue = value;
  } else if constexpr (D == Divergence::kJS) {  // log(1 + r) - log 2
    T e, sigmoid_pos, sigmoid_neg;
    logistic(s, e, sigmoid_pos, sigmoid_neg);
    value = (max(s, T(0)) + log1p(e)) - T(0.69314718055994530942);
    dvalue = sigmoid_pos;
  } else if constexpr (D == Divergence::kPearson) {  // r^2 - 1
    value = expm1(T(2) * s);
    dvalue = T(2) * exp(T(2) * s);
  } else if constexpr (D == Divergence::kSH) {  // r^(1/2) - 1
    value = expm1(T(0.5) * s);
    dvalue = T(0.5) * exp(T(0.5) * s);
  } else if constexpr (D == Divergence::kTsallis) {  // r^a
    value = exp(tsallis_alpha * s);
    dvalue = tsallis_alpha * value;
  } else if constexpr (D == Divergence::kVLC) {  // (3r + 1)(r - 1) / (r + 1)^2 = (1 + 2q)(2q - 1), q = sigmoid(s)
    T e, q, one_minus_q;
    logistic(s, e, q, one_minus_q);
    value = (T(1) + T(2) * q) * tanh(T(0.5) * s);  // 2q - 1 = tanh(s/2): exact near r = 1
    dvalue = T(8) * q * q * one_minus_q;
  } else {
    static_assert(kDependentFalse<D>, "negative_term: a divergence without its f*(f'(r))");
  }
}

// log r of the f-Gaussian similarity from a Gram entry and the two squared norms; the distance is
// clamped at 0 because near-duplicate rows make |a|^2 + |b|^2 - 2 G round to a tiny negative.
// d log r / dG = 2 * inv_two_sigma_sq (and d/d|a|^2 = d/d|b|^2 = -inv_two_sigma_sq).
template <class T>
FMICL_HOST_DEVICE T gaussian_log_similarity(T gram, T norm_sq_a, T norm_sq_b, T log_mu,
                                            T inv_two_sigma_sq) {
  using namespace math;
  return log_mu - max(norm_sq_a + norm_sq_b - T(2) * gram, T(0)) * inv_two_sigma_sq;
}

// Row a's positive partner in the [z1; z2] layout of 2N rows: (a + N) mod 2N.
FMICL_HOST_DEVICE long long positive_index(long long a, long long half_rows) {
  return a < half_rows ? a + half_rows : a - half_rows;
}

}  // namespace fmicl
