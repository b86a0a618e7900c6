// Each binding file registers its pybind11 definitions here at load time, so module.cpp needs
// no edit when a family of bindings is added. Tensor ops do not go through this: they are
// declared once with TORCH_LIBRARY (cpp/bindings/ops.cpp) and reached as torch.ops.fmicl.*.
#pragma once

#include <pybind11/pybind11.h>

namespace fmicl {

using BindFn = void (*)(pybind11::module_&);

// Registers `fn` to run when the _C module initialises. Use as a namespace-scope static:
//   static const fmicl::BindingRegistrar kSampler(&bind_sampler);
struct BindingRegistrar {
  explicit BindingRegistrar(BindFn fn);
};

}  // namespace fmicl
