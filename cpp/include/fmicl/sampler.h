// The augmentation-pair sampler: which samples a rank reads in an epoch, and every random choice
// of the two views of each sample, as pure functions of (seed, epoch, sample index, view).
//
// Every draw is one Philox-4x32 call keyed by the seed, with counter (epoch, sample index, view,
// draw slot). Slots are fixed per parameter, so a parameter never depends on how many draws an
// earlier one used, and nothing depends on threads, batch size or resume point.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fmicl/philox.h"

namespace fmicl {

// One view's recipe, torchvision's parameterisation (RandomResizedCrop, RandomHorizontalFlip,
// RandomApply(ColorJitter), RandomGrayscale, GaussianBlur, RandomSolarize).
struct ViewRecipe {
  double crop_scale_min = 0.08, crop_scale_max = 1.0;    // fraction of the image area
  double crop_ratio_min = 3.0 / 4.0, crop_ratio_max = 4.0 / 3.0;  // width / height
  double flip_p = 0.5;
  double jitter_p = 0.8;                                 // probability of applying ColorJitter
  double brightness = 0.4, contrast = 0.4, saturation = 0.4;  // factor in [max(0, 1-x), 1+x]
  double hue = 0.1;                                      // shift in [-hue, hue], hue <= 0.5
  double grayscale_p = 0.2;
  double blur_p = 0.5, blur_sigma_min = 0.1, blur_sigma_max = 2.0;
  double solarize_p = 0.0;
};

// One view's drawn parameters. Disabled operations hold identity values (factor 1, hue 0,
// sigma 0) so that a consumer may apply them unconditionally.
struct ViewParams {
  int32_t top, left, height, width;  // crop window in pixels (torchvision's i, j, h, w)
  uint8_t flip;
  uint8_t jitter;                    // ColorJitter applied
  float brightness, contrast, saturation, hue;
  uint8_t order[4];                  // jitter operations in application order: 0 b, 1 c, 2 s, 3 h
  uint8_t grayscale;
  float blur_sigma;                  // 0: no blur
  uint8_t solarize;
};

// Throws std::invalid_argument naming the field when a recipe is out of range.
void check_view_recipe(const ViewRecipe& recipe, const char* name);

namespace sampler_detail {
constexpr uint32_t kCropTries = 10;  // torchvision's RandomResizedCrop.get_params
constexpr uint32_t kSlotFlags = kCropTries;       // flip, jitter, grayscale, blur
constexpr uint32_t kSlotJitterFactors = kCropTries + 1;
constexpr uint32_t kSlotOrderSigma = kCropTries + 2;  // 3 words of order, blur sigma
constexpr uint32_t kSlotSolarize = kCropTries + 3;

// Python's round(): half to even, which std::nearbyint does in the default rounding mode.
inline int32_t round_half_even(double x) { return int32_t(std::nearbyint(x)); }
}  // namespace sampler_detail

// torchvision RandomResizedCrop.get_params: ten tries of (area fraction ~ U(scale),
// log aspect ratio ~ U(log ratio)), w and h rounded; the first that fits gets a uniform
// position; otherwise the centre crop clamped to the ratio range.
inline void sample_crop(const ViewRecipe& r, PhiloxKey key, PhiloxCounter counter, int32_t width,
                        int32_t height, ViewParams& out) {
  using namespace sampler_detail;
  const double area = double(width) * double(height);
  const double log_ratio_min = std::log(r.crop_ratio_min), log_ratio_max = std::log(r.crop_ratio_max);
  for (uint32_t t = 0; t < kCropTries; ++t) {
    counter[3] = t;
    const PhiloxCounter w = philox4x32_10(counter, key);
    const double target_area = area * uniform(w[0], r.crop_scale_min, r.crop_scale_max);
    const double aspect = std::exp(uniform(w[1], log_ratio_min, log_ratio_max));
    const int32_t cw = round_half_even(std::sqrt(target_area * aspect));
    const int32_t ch = round_half_even(std::sqrt(target_area / aspect));
    if (0 < cw && cw <= width && 0 < ch && ch <= height) {
      out.top = int32_t(uniform_int(w[2], uint32_t(height - ch + 1)));
      out.left = int32_t(uniform_int(w[3], uint32_t(width - cw + 1)));
      out.height = ch;
      out.width = cw;
      return;
    }
  }
  const double in_ratio = double(width) / double(height);
  int32_t cw = width, ch = height;
  if (in_ratio < r.crop_ratio_min) {
    ch = round_half_even(cw / r.crop_ratio_min);
  } else if (in_ratio > r.crop_ratio_max) {
    cw = round_half_even(ch * r.crop_ratio_max);
  }
  out.top = (height - ch) / 2;
  out.left = (width - cw) / 2;
  out.height = ch;
  out.width = cw;
}

// All of one view's parameters for the sample `index` of `epoch`.
inline ViewParams sample_view(const ViewRecipe& r, PhiloxKey key, uint32_t epoch, uint32_t index,
                              uint32_t view, int32_t width, int32_t height) {
  using namespace sampler_detail;
  ViewParams p{};
  PhiloxCounter counter{epoch, index, view, 0};
  sample_crop(r, key, counter, width, height, p);

  counter[3] = kSlotFlags;
  const PhiloxCounter flags = philox4x32_10(counter, key);
  p.flip = uniform01(flags[0]) < r.flip_p;
  p.jitter = uniform01(flags[1]) < r.jitter_p;
  p.grayscale = uniform01(flags[2]) < r.grayscale_p;
  const bool blur = uniform01(flags[3]) < r.blur_p;

  counter[3] = kSlotJitterFactors;
  const PhiloxCounter factors = philox4x32_10(counter, key);
  counter[3] = kSlotOrderSigma;
  const PhiloxCounter order_sigma = philox4x32_10(counter, key);
  p.brightness = p.contrast = p.saturation = 1.0f;
  p.hue = 0.0f;
  for (uint8_t k = 0; k < 4; ++k) p.order[k] = k;
  if (p.jitter) {
    p.brightness = float(uniform(factors[0], std::max(0.0, 1.0 - r.brightness), 1.0 + r.brightness));
    p.contrast = float(uniform(factors[1], std::max(0.0, 1.0 - r.contrast), 1.0 + r.contrast));
    p.saturation = float(uniform(factors[2], std::max(0.0, 1.0 - r.saturation), 1.0 + r.saturation));
    p.hue = float(uniform(factors[3], -r.hue, r.hue));
    // A uniform permutation of the four operations (Fisher-Yates), as ColorJitter's randperm(4).
    for (uint32_t k = 3; k > 0; --k) {
      std::swap(p.order[k], p.order[uniform_int(order_sigma[3 - k], k + 1)]);
    }
  }
  p.blur_sigma = blur ? float(uniform(order_sigma[3], r.blur_sigma_min, r.blur_sigma_max)) : 0.0f;

  counter[3] = kSlotSolarize;
  p.solarize = uniform01(philox4x32_10(counter, key)[0]) < r.solarize_p;
  return p;
}

// This rank's share of the epoch's permutation of [0, num_samples), DistributedSampler's
// semantics: the permutation is padded by repeating its head up to a multiple of world_size
// (drop_last = false) or truncated to one (drop_last = true); rank r takes positions r, r + W, ...
std::vector<int64_t> shard_indices(int64_t num_samples, uint64_t seed, uint32_t epoch, int64_t rank,
                                   int64_t world_size, bool drop_last);

// Struct-of-arrays output of a batch: n samples x 2 views, row-major.
struct ViewParamsBatch {
  int32_t* crop;          // n x 2 x 4: top, left, height, width
  uint8_t* flip;          // n x 2
  uint8_t* jitter;        // n x 2
  float* jitter_factors;  // n x 2 x 4: brightness, contrast, saturation, hue
  uint8_t* jitter_order;  // n x 2 x 4
  uint8_t* grayscale;     // n x 2
  float* blur_sigma;      // n x 2
  uint8_t* solarize;      // n x 2
};

// Both views' parameters for n samples: indices, widths, heights are arrays of length n.
// Splits the samples over num_threads threads; the result does not depend on num_threads.
void sample_view_pairs(const ViewRecipe& view1, const ViewRecipe& view2, uint64_t seed,
                       uint32_t epoch, const int64_t* indices, const int32_t* widths,
                       const int32_t* heights, int64_t n, int num_threads, ViewParamsBatch out);

}  // namespace fmicl
