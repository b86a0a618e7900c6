// pybind11 bindings of the augmentation-pair sampler: fmicl_engine._C.sampler. Arrays in and out
// are numpy (no ATen here); the batch calls check their inputs, then release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "fmicl/sampler.h"
#include "registry.h"

namespace py = pybind11;

namespace fmicl {
namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
CArray<T> empty(std::initializer_list<py::ssize_t> shape) {
  return CArray<T>(std::vector<py::ssize_t>(shape));
}

void check_1d(const py::array& a, const char* name, py::ssize_t n) {
  if (a.ndim() != 1 || a.shape(0) != n) {
    throw std::invalid_argument(std::string("sample_view_pairs: ") + name +
                                " must be 1-D of the same length as indices (" + std::to_string(n) +
                                ")");
  }
}

py::dict sample_view_pairs_py(const CArray<int64_t>& indices, const CArray<int32_t>& widths,
                              const CArray<int32_t>& heights, uint64_t seed, uint32_t epoch,
                              const ViewRecipe& view1, const ViewRecipe& view2, int num_threads) {
  check_view_recipe(view1, "view1");
  check_view_recipe(view2, "view2");
  if (indices.ndim() != 1) throw std::invalid_argument("sample_view_pairs: indices must be 1-D");
  const py::ssize_t n = indices.shape(0);
  check_1d(widths, "widths", n);
  check_1d(heights, "heights", n);
  if (num_threads < 1) throw std::invalid_argument("sample_view_pairs: num_threads must be >= 1");
  const int64_t* idx = indices.data();
  const int32_t* w = widths.data();
  const int32_t* h = heights.data();
  for (py::ssize_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] > int64_t(UINT32_MAX)) {
      throw std::invalid_argument("sample_view_pairs: index " + std::to_string(idx[i]) +
                                  " is outside [0, 2^32)");
    }
    if (w[i] <= 0 || h[i] <= 0) {
      throw std::invalid_argument("sample_view_pairs: sample " + std::to_string(idx[i]) +
                                  " has a non-positive size " + std::to_string(w[i]) + "x" +
                                  std::to_string(h[i]));
    }
  }
  auto crop = empty<int32_t>({n, 2, 4});
  auto flip = empty<uint8_t>({n, 2});
  auto jitter = empty<uint8_t>({n, 2});
  auto factors = empty<float>({n, 2, 4});
  auto order = empty<uint8_t>({n, 2, 4});
  auto grayscale = empty<uint8_t>({n, 2});
  auto sigma = empty<float>({n, 2});
  auto solarize = empty<uint8_t>({n, 2});
  ViewParamsBatch out{crop.mutable_data(),   flip.mutable_data(),      jitter.mutable_data(),
                      factors.mutable_data(), order.mutable_data(),    grayscale.mutable_data(),
                      sigma.mutable_data(),  solarize.mutable_data()};
  {
    py::gil_scoped_release no_gil;
    sample_view_pairs(view1, view2, seed, epoch, idx, w, h, n, num_threads, out);
  }
  py::dict result;
  result["crop"] = crop;
  result["flip"] = flip;
  result["jitter"] = jitter;
  result["jitter_factors"] = factors;
  result["jitter_order"] = order;
  result["grayscale"] = grayscale;
  result["blur_sigma"] = sigma;
  result["solarize"] = solarize;
  return result;
}

CArray<int64_t> shard_indices_py(int64_t num_samples, uint64_t seed, uint32_t epoch, int64_t rank,
                                 int64_t world_size, bool drop_last) {
  std::vector<int64_t> share;
  {
    py::gil_scoped_release no_gil;
    share = shard_indices(num_samples, seed, epoch, rank, world_size, drop_last);
  }
  auto out = empty<int64_t>({py::ssize_t(share.size())});
  std::copy(share.begin(), share.end(), out.mutable_data());
  return out;
}

void bind_sampler(py::module_& root) {
  auto m = root.def_submodule(
      "sampler", "Augmentation-pair sampler: epoch shards and both views' parameters, keyed by "
                 "(seed, epoch, sample index, view) through Philox-4x32-10.");

  py::class_<ViewRecipe>(m, "ViewRecipe", "One view's augmentation recipe (torchvision's terms).")
      .def(py::init<>())
      .def_readwrite("crop_scale_min", &ViewRecipe::crop_scale_min)
      .def_readwrite("crop_scale_max", &ViewRecipe::crop_scale_max)
      .def_readwrite("crop_ratio_min", &ViewRecipe::crop_ratio_min)
      .def_readwrite("crop_ratio_max", &ViewRecipe::crop_ratio_max)
      .def_readwrite("flip_p", &ViewRecipe::flip_p)
      .def_readwrite("jitter_p", &ViewRecipe::jitter_p)
      .def_readwrite("brightness", &ViewRecipe::brightness)
      .def_readwrite("contrast", &ViewRecipe::contrast)
      .def_readwrite("saturation", &ViewRecipe::saturation)
      .def_readwrite("hue", &ViewRecipe::hue)
      .def_readwrite("grayscale_p", &ViewRecipe::grayscale_p)
      .def_readwrite("blur_p", &ViewRecipe::blur_p)
      .def_readwrite("blur_sigma_min", &ViewRecipe::blur_sigma_min)
      .def_readwrite("blur_sigma_max", &ViewRecipe::blur_sigma_max)
      .def_readwrite("solarize_p", &ViewRecipe::solarize_p);

  m.def("sample_view_pairs", &sample_view_pairs_py, py::arg("indices"), py::arg("widths"),
        py::arg("heights"), py::arg("seed"), py::arg("epoch"), py::arg("view1"), py::arg("view2"),
        py::arg("num_threads") = 1,
        "Both views' parameters for the samples `indices` (images of size widths x heights): a dict "
        "of numpy arrays crop (n,2,4: top,left,height,width), flip, jitter, jitter_factors "
        "(n,2,4: brightness,contrast,saturation,hue), jitter_order (n,2,4), grayscale, "
        "blur_sigma (0: none), solarize.");
  m.def("shard_indices", &shard_indices_py, py::arg("num_samples"), py::arg("seed"),
        py::arg("epoch"), py::arg("rank") = 0, py::arg("world_size") = 1,
        py::arg("drop_last") = false,
        "This rank's share of the epoch's seeded permutation (DistributedSampler semantics: pad "
        "by repeating the head, or drop the tail with drop_last).");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
        return philox4x32_10(counter, key);
      },
      py::arg("counter"), py::arg("key"), "The raw generator, for known-answer tests.");
}

static const BindingRegistrar kSampler(&bind_sampler);

}  // namespace
}  // namespace fmicl
