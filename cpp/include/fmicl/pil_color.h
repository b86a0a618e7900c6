// torchvision's ColorJitter and RandomGrayscale as they run on PIL images, bit for bit: Pillow's
// integer and single-precision steps with its roundings, per pixel, on the host or a device.
//
// Pillow (x86-64 builds) computes in IEEE single precision without fused multiply-adds; the
// host build compiles with -ffp-contract=off and the device uses the _rn intrinsics, so both
// round where Pillow rounds. tests/data/test_dali_color.py checks every step against Pillow.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FMICL_HD __host__ __device__ __forceinline__
#else
#define FMICL_HD inline
#endif

namespace fmicl::pil {

// ColorJitter's operations, numbered as python/fmicl_engine/data/sampler.py numbers them.
enum ColorStep : int32_t { kNoStep = -1, kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3 };
constexpr int kJitterSteps = 4;

// One image's colour parameters, as the sampler draws them.
struct ColorParams {
  float brightness, contrast, saturation;  // Image.blend factors (Pillow takes them as C float)
  int32_t hue_shift;                       // added to the 8-bit hue modulo 256
  int32_t order[kJitterSteps];             // the steps in the sampled order; kNoStep: none
  bool grayscale;                          // RandomGrayscale after the jitter
};

struct Rgb {
  int32_t r, g, b;
};

FMICL_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FMICL_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FMICL_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FMICL_HD int32_t max_i(int32_t a, int32_t b) { return a > b ? a : b; }
FMICL_HD int32_t min_i(int32_t a, int32_t b) { return a < b ? a : b; }

// Pillow's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point, rounded.
FMICL_HD int32_t luma(Rgb c) { return (c.r * 19595 + c.g * 38470 + c.b * 7471 + 0x8000) >> 16; }

// Image.blend(degenerate, image, alpha) per channel: in1 + alpha (in2 - in1) in float, clipped to
// [0, 255] and truncated (ImagingBlend).
FMICL_HD int32_t blend(int32_t degenerate, int32_t value, float alpha) {
  const float t = add_rn(static_cast<float>(degenerate),
                         mul_rn(alpha, static_cast<float>(value - degenerate)));
  return static_cast<int32_t>(t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t);
}

FMICL_HD Rgb blend(Rgb degenerate, Rgb c, float alpha) {
  return {blend(degenerate.r, c.r, alpha), blend(degenerate.g, c.g, alpha),
          blend(degenerate.b, c.b, alpha)};
}

// ImageEnhance.Contrast's grey level: int(mean of the L image + 0.5), the mean as Python's
// correctly rounded int / int.
FMICL_HD int32_t contrast_grey(int64_t luma_sum, int64_t pixels) {
  if (pixels == 0) return 0;  // an empty image: nothing to blend
  const double mean = static_cast<double>(luma_sum) / static_cast<double>(pixels);
  return static_cast<int32_t>(mean + 0.5);
}

// adjust_hue: Pillow's RGB -> HSV (8-bit H, S, V), ``shift`` added to H modulo 256, HSV -> RGB.
//
// RGB -> H: Pillow computes 2 + rc - bc and the like, where one of the two quotients is exactly
// 1: that is base + sign q with q = (max - mid) / (max - min) rounded once, by sextant
// (code 4 (r < g) + 2 (g < b) + (b < r); 0 is grey, 7 cannot occur), then (h / 6, + 1 if
// negative) * 255, truncated. HSV -> RGB is V - round(V S w / 255^2) in integers, w the fraction
// (in 1/255) of V S a channel loses at hue H: Pillow's rounded p, q, t, where no exact half occurs.
FMICL_HD Rgb shift_hue(Rgb c, int32_t shift) {
  const int32_t value = max_i(c.r, max_i(c.g, c.b));
  const int32_t chroma = value - min_i(c.r, min_i(c.g, c.b));
  const int32_t mid = max_i(min_i(c.r, c.g), min_i(max_i(c.r, c.g), c.b));
  const int32_t sextant = 4 * (c.r < c.g) + 2 * (c.g < c.b) + (c.b < c.r);
  // Base 5 (sextant 2), -1 (3), 3 (4, 6), else 1; sign + (3, 5, 6), else -. Packed 4 bits per
  // sextant (base + 1, then the sign bit) and picked by a shift rather than a table: no
  // branches or gathers, so the host loop vectorises.
  constexpr uint32_t kSextants = 0x3u << 0 | 0x2u << 4 | 0x6u << 8 | 0x8u << 12 | 0x4u << 16 |
                                 0xAu << 20 | 0xCu << 24 | 0x2u << 28;
  const uint32_t packed = (kSextants >> (4 * sextant)) & 0xFu;
  const float base = static_cast<float>(static_cast<int32_t>(packed & 7u) - 1);
  const float q = div_rn(static_cast<float>(value - mid), static_cast<float>(max_i(chroma, 1)));
  const float h = add_rn(base, (packed & 8u) ? q : -q);
  const float turn = add_rn(div_rn(h, 6.0f), h < 0.0f ? 1.0f : 0.0f);
  // Truncation is the floor here: the product is never below zero (at most -0).
  const int32_t hue = (static_cast<int32_t>(mul_rn(turn, 255.0f)) + shift) & 255;
  // V times Pillow's 8-bit S = floor(255 chroma / V). The float quotient truncates exactly: an
  // inexact quotient lies at least 1/V >= 1/255 below the next integer, more than its rounding
  // error (at most 65025 * 2^-24).
  const int32_t saturation = static_cast<int32_t>(
      div_rn(static_cast<float>(255 * chroma), static_cast<float>(max_i(value, 1))));
  const int32_t value_sat = value * saturation;
  const int32_t own_hue[3] = {0, 510, 1020};  // each channel's hue, in 1/255 sixths of a turn
  int32_t out[3];
  for (int k = 0; k < 3; ++k) {
    int32_t distance = max_i(6 * hue - own_hue[k], own_hue[k] - 6 * hue);
    distance = min_i(distance, 1530 - distance);
    const int32_t weight = min_i(max_i(distance - 255, 0), 255);
    // round(V S w / 255^2) as floor((V S w + 32512) / 65025): the numerator is below 2^24, so
    // the float quotient truncates exactly too (inexact ones lie >= 1/65025 below an integer,
    // rounding moves them by at most 2^-17).
    out[k] = value - static_cast<int32_t>(div_rn(static_cast<float>(value_sat * weight + 32512),
                                                 65025.0f));
  }
  return {out[0], out[1], out[2]};
}

// The jitter steps order[first, last) on one pixel; ``grey`` is the contrast step's grey level.
FMICL_HD Rgb jitter_steps(Rgb c, const ColorParams &p, int first, int last, int32_t grey) {
  for (int k = first; k < last; ++k) {
    switch (p.order[k]) {
      case kBrightness:
        c = blend(Rgb{0, 0, 0}, c, p.brightness);
        break;
      case kContrast:
        c = blend(Rgb{grey, grey, grey}, c, p.contrast);
        break;
      case kSaturation: {
        const int32_t l = luma(c);
        c = blend(Rgb{l, l, l}, c, p.saturation);
        break;
      }
      case kHue:
        c = shift_hue(c, p.hue_shift);
        break;
      default:
        break;
    }
  }
  return c;
}

// Where the contrast step is in the order (kJitterSteps: none). Its grey level is the mean luma
// of the image as the steps before it leave it: one pass over the image ahead of the main one.
FMICL_HD int contrast_position(const ColorParams &p) {
  for (int k = 0; k < kJitterSteps; ++k)
    if (p.order[k] == kContrast) return k;
  return kJitterSteps;
}

// The whole colour pass on one pixel, given the contrast step's grey level.
FMICL_HD Rgb color_pixel(Rgb c, const ColorParams &p, int32_t grey) {
  c = jitter_steps(c, p, 0, kJitterSteps, grey);
  if (p.grayscale) {
    const int32_t l = luma(c);
    c = Rgb{l, l, l};
  }
  return c;
}

}  // namespace fmicl::pil
