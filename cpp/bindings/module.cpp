// The pybind11 module fmicl_engine._C. Deliberately light (no ATen include): it is recompiled
// whenever any source changes, because it embeds the sources' digest.
#include <vector>

#include "fmicl/build_info.h"
#include "registry.h"

namespace fmicl {
namespace {
std::vector<BindFn>& registered() {
  static std::vector<BindFn> fns;  // function-local: safe against static-initialisation order
  return fns;
}
}  // namespace

BindingRegistrar::BindingRegistrar(BindFn fn) { registered().push_back(fn); }

}  // namespace fmicl

PYBIND11_MODULE(_C, m) {
  m.doc() = "fmicl-engine native extension: fused losses (torch.ops.fmicl) and the sampler";
  pybind11::dict info;
  info["sources_sha256"] = FMICL_SOURCES_SHA256;
  info["with_cuda"] = bool(FMICL_BUILT_WITH_CUDA);
  info["torch_version"] = FMICL_TORCH_VERSION;
  info["dali_version"] = FMICL_DALI_VERSION;  // "": the DALI operators were not built
  m.attr("build_info") = info;
  for (auto fn : fmicl::registered()) fn(m);
}
