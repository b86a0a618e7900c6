// fmicl.color_jitter, GPU backend: one block per image, the same per-pixel math as the CPU
// (fmicl/pil_color.h, _rn intrinsics on the device), so the two backends agree bit for bit.
#include "color_jitter.h"

#include <vector>

#include "dali/core/cuda_error.h"
#include "dali/core/dev_buffer.h"

namespace fmicl::dali_ops {

namespace {

constexpr int kThreads = 512;

struct SampleDesc {
  const uint8_t *in;
  uint8_t *out;
  int64_t pixels;
  pil::ColorParams params;
};

__device__ pil::Rgb load_pixel(const uint8_t *hwc, int64_t i) {
  return {hwc[3 * i], hwc[3 * i + 1], hwc[3 * i + 2]};
}

// The block's total of one value per thread (every thread gets it).
__device__ int64_t block_sum(int64_t value) {
  __shared__ int64_t partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;
}

// Block b: image b. The contrast step's grey level first (the steps before it, the luma summed
// over the image), then every pixel through all the steps.
__global__ void __launch_bounds__(kThreads) color_jitter_kernel(const SampleDesc *samples) {
  const SampleDesc s = samples[blockIdx.x];
  const int contrast_at = pil::contrast_position(s.params);
  int32_t grey = 0;
  if (contrast_at < pil::kJitterSteps) {
    int64_t luma_sum = 0;
    for (int64_t i = threadIdx.x; i < s.pixels; i += kThreads)
      luma_sum += pil::luma(pil::jitter_steps(load_pixel(s.in, i), s.params, 0, contrast_at, 0));
    grey = pil::contrast_grey(block_sum(luma_sum), s.pixels);
  }
  for (int64_t i = threadIdx.x; i < s.pixels; i += kThreads) {
    const pil::Rgb c = pil::color_pixel(load_pixel(s.in, i), s.params, grey);
    s.out[3 * i] = static_cast<uint8_t>(c.r);
    s.out[3 * i + 1] = static_cast<uint8_t>(c.g);
    s.out[3 * i + 2] = static_cast<uint8_t>(c.b);
  }
}

}  // namespace

class ColorJitterGpu : public ColorJitterBase<::dali::GPUBackend> {
 public:
  using ColorJitterBase<::dali::GPUBackend>::ColorJitterBase;

 protected:
  void RunImpl(::dali::Workspace &ws) override {
    const auto &images = ws.Input<::dali::GPUBackend>(0);
    auto &output = ws.Output<::dali::GPUBackend>(0);
    output.SetLayout(images.GetLayout());
    const int batch_size = images.num_samples();
    if (batch_size == 0) return;
    const std::vector<pil::ColorParams> params = read_color_params(ws, batch_size);
    std::vector<SampleDesc> host(batch_size);
    for (int i = 0; i < batch_size; ++i) {
      const auto shape = images.tensor_shape_span(i);
      host[i] = {images.tensor<uint8_t>(i), output.mutable_tensor<uint8_t>(i),
                 shape[0] * shape[1], params[i]};
    }
    // Ordered on the operator's stream: the next batch's copy waits for this batch's kernel.
    samples_.from_host(host, ws.stream());
    color_jitter_kernel<<<batch_size, kThreads, 0, ws.stream()>>>(samples_.data());
    CUDA_CALL(cudaGetLastError());
  }

 private:
  ::dali::DeviceBuffer<SampleDesc> samples_;
};

}  // namespace fmicl::dali_ops

namespace dali {
DALI_REGISTER_OPERATOR(fmicl__ColorJitter, ::fmicl::dali_ops::ColorJitterGpu, GPU);
}  // namespace dali
