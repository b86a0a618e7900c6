// The CUDA kernel of fmicl.color_jitter, apart from DALI so that tests can run it on the CPU
// (tests/data/test_color_jitter_emulated.py, against tests/loss/cuda_emulation.h). One block per
// image; the per-pixel math is fmicl/pil_color.h, shared with the CPU backend.
#pragma once

#include <cstdint>

#include "fmicl/pil_color.h"

namespace fmicl::dali_ops {

constexpr int kColorThreads = 512;
static_assert((kColorThreads & (kColorThreads - 1)) == 0, "the block sum halves the block");

struct ColorSample {
  const uint8_t *in;  // HWC RGB, pixels contiguous
  uint8_t *out;
  int64_t pixels;
  pil::ColorParams params;
};

// The block's total of one value per thread, returned to every thread.
__device__ inline int64_t block_sum(int64_t value) {
  __shared__ int64_t partial[kColorThreads];
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kColorThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  return partial[0];
}

__device__ inline pil::Rgb load_pixel(const uint8_t *hwc, int64_t i) {
  return {hwc[3 * i], hwc[3 * i + 1], hwc[3 * i + 2]};
}

// Block b: image b. The contrast step's grey level first (the steps before it, the luma summed
// over the image), then every pixel through all the steps.
__global__ void __launch_bounds__(kColorThreads) color_jitter_kernel(const ColorSample *samples) {
  const ColorSample s = samples[blockIdx.x];
  const int contrast_at = pil::contrast_position(s.params);
  int32_t grey = 0;
  if (contrast_at < pil::kJitterSteps) {
    int64_t luma_sum = 0;
    for (int64_t i = threadIdx.x; i < s.pixels; i += kColorThreads)
      luma_sum += pil::luma(pil::jitter_steps(load_pixel(s.in, i), s.params, 0, contrast_at, 0));
    grey = pil::contrast_grey(block_sum(luma_sum), s.pixels);
  }
  for (int64_t i = threadIdx.x; i < s.pixels; i += kColorThreads) {
    const pil::Rgb c = pil::color_pixel(load_pixel(s.in, i), s.params, grey);
    s.out[3 * i] = static_cast<uint8_t>(c.r);
    s.out[3 * i + 1] = static_cast<uint8_t>(c.g);
    s.out[3 * i + 2] = static_cast<uint8_t>(c.b);
  }
}

}  // namespace fmicl::dali_ops
