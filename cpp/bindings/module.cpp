// The pybind11 module fmicl_engine._C. Deliberately light (no ATen include): it is recompiled
// whenever any source changes, because it embeds the sources' digest.
#include <cstddef>
#include <vector>

#include "fmicl/build_info.h"
#include "fmicl/pairwise_math.h"
#include "registry.h"

namespace fmicl {
namespace {
std::vector<BindFn>& registered() {
  static std::vector<BindFn> fns;  // function-local: safe against static-initialisation order
  return fns;
}
}  // namespace

BindingRegistrar::BindingRegistrar(BindFn fn) { registered().push_back(fn); }

template <std::size_t K>
pybind11::tuple names_tuple(const char* const (&names)[K]) {
  pybind11::tuple tuple(K);
  for (std::size_t i = 0; i < K; ++i) tuple[i] = pybind11::str(names[i]);
  return tuple;
}

}  // namespace fmicl

PYBIND11_MODULE(_C, m) {
  m.doc() = "fmicl-engine native extension: fused losses (torch.ops.fmicl) and the sampler";
  pybind11::dict info;
  info["sources_sha256"] = FMICL_SOURCES_SHA256;
  info["with_cuda"] = bool(FMICL_BUILT_WITH_CUDA);
  info["torch_version"] = FMICL_TORCH_VERSION;
  info["dali_version"] = FMICL_DALI_VERSION;  // "": the DALI operators were not built
  m.attr("build_info") = info;
  // The names fmicl_fwd_bwd accepts, in enum order: Python's lists are tested against them.
  m.attr("divergences") = fmicl::names_tuple(fmicl::kDivergenceNames);
  m.attr("similarities") = fmicl::names_tuple(fmicl::kSimilarityNames);
  for (auto fn : fmicl::registered()) fn(m);
}
