// fmicl.color_jitter, GPU backend: the kernel (color_jitter_kernel.cuh) has the CPU backend's
// per-pixel math (fmicl/pil_color.h, _rn intrinsics on the device): the two agree bit for bit.
#include "color_jitter.h"
#include "color_jitter_kernel.cuh"

#include <vector>

#include "dali/core/cuda_error.h"
#include "dali/core/dev_buffer.h"

namespace fmicl::dali_ops {

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
    const std::vector<pil::ColorParams> params = read_color_params(spec_, ws, batch_size);
    std::vector<ColorSample> host(batch_size);
    for (int i = 0; i < batch_size; ++i) {
      const auto shape = images.tensor_shape_span(i);
      host[i] = {images.tensor<uint8_t>(i), output.mutable_tensor<uint8_t>(i),
                 shape[0] * shape[1], params[i]};
    }
    // Ordered on the operator's stream: the next batch's copy waits for this batch's kernel.
    samples_.from_host(host, ws.stream());
    color_jitter_kernel<<<batch_size, kColorThreads, 0, ws.stream()>>>(samples_.data());
    CUDA_CALL(cudaGetLastError());
  }

 private:
  ::dali::DeviceBuffer<ColorSample> samples_;
};

}  // namespace fmicl::dali_ops

namespace dali {
DALI_REGISTER_OPERATOR(fmicl__ColorJitter, ::fmicl::dali_ops::ColorJitterGpu, GPU);
}  // namespace dali
