// fmicl.color_jitter: a DALI operator for torchvision's ColorJitter and RandomGrayscale as they
// run on PIL images, bit for bit (math in fmicl/pil_color.h), one pass per image (two when the
// contrast step needs the image's mean luma). One file per backend: color_jitter_cpu.cpp,
// color_jitter_gpu.cu. Loaded into DALI by python/fmicl_engine/data/dali_ops.py.
#pragma once

#include <vector>

#include "dali/pipeline/operator/operator.h"
#include "fmicl/pil_color.h"

namespace fmicl::dali_ops {

// The batch's per-sample parameters, from the operator's argument inputs or constant arguments
// (checked here).
std::vector<pil::ColorParams> read_color_params(const ::dali::OpSpec &spec,
                                                const ::dali::Workspace &ws, int batch_size);

// What the backends share: the output is the input's shape and type, checked here. Each
// backend file derives the operator with its RunImpl.
template <typename Backend>
class ColorJitterBase : public ::dali::Operator<Backend> {
 public:
  explicit ColorJitterBase(const ::dali::OpSpec &spec) : ::dali::Operator<Backend>(spec) {}

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &outputs, const ::dali::Workspace &ws) override {
    const auto &images = ws.Input<Backend>(0);
    DALI_ENFORCE(images.type() == DALI_UINT8,
                 ::dali::make_string("fmicl.color_jitter: images must be uint8, got ",
                                     images.type()));
    const auto &shape = images.shape();
    DALI_ENFORCE(shape.sample_dim() == 3,
                 "fmicl.color_jitter: images must be HWC (3 dimensions)");
    for (int i = 0; i < shape.num_samples(); ++i)
      DALI_ENFORCE(shape.tensor_shape_span(i)[2] == 3,
                   ::dali::make_string("fmicl.color_jitter: sample ", i, " has ",
                                       shape.tensor_shape_span(i)[2], " channels, need RGB (3)"));
    outputs.resize(1);
    outputs[0] = {shape, images.type()};
    return true;
  }
};

}  // namespace fmicl::dali_ops
