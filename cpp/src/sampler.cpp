// Host side of the augmentation-pair sampler: recipe checks, the epoch permutation and the
// threaded batch loop. The per-sample math is in fmicl/sampler.h.
#include "fmicl/sampler.h"

#include <stdexcept>
#include <string>
#include <thread>

namespace fmicl {
namespace {

// The permutation's draws use a counter whose view word no view uses.
constexpr uint32_t kPermutationStream = 0xFFFFFFFFu;

void require(bool ok, const char* recipe, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("ViewRecipe ") + recipe + ": " + what);
}

bool is_probability(double p) { return p >= 0.0 && p <= 1.0; }

}  // namespace

void check_view_recipe(const ViewRecipe& r, const char* name) {
  require(0.0 < r.crop_scale_min && r.crop_scale_min <= r.crop_scale_max && r.crop_scale_max <= 1.0,
          name, "need 0 < crop_scale_min <= crop_scale_max <= 1");
  require(0.0 < r.crop_ratio_min && r.crop_ratio_min <= r.crop_ratio_max, name,
          "need 0 < crop_ratio_min <= crop_ratio_max");
  require(is_probability(r.flip_p), name, "flip_p must be in [0, 1]");
  require(is_probability(r.jitter_p), name, "jitter_p must be in [0, 1]");
  require(r.brightness >= 0.0 && r.contrast >= 0.0 && r.saturation >= 0.0, name,
          "brightness, contrast and saturation must be >= 0");
  require(r.hue >= 0.0 && r.hue <= 0.5, name, "hue must be in [0, 0.5]");
  require(is_probability(r.grayscale_p), name, "grayscale_p must be in [0, 1]");
  require(is_probability(r.blur_p), name, "blur_p must be in [0, 1]");
  require(0.0 < r.blur_sigma_min && r.blur_sigma_min <= r.blur_sigma_max, name,
          "need 0 < blur_sigma_min <= blur_sigma_max");
  require(is_probability(r.solarize_p), name, "solarize_p must be in [0, 1]");
}

std::vector<int64_t> shard_indices(int64_t num_samples, uint64_t seed, uint32_t epoch, int64_t rank,
                                   int64_t world_size, bool drop_last) {
  if (num_samples <= 0 || num_samples > int64_t(UINT32_MAX)) {
    throw std::invalid_argument("shard_indices: num_samples must be in [1, 2^32), got " +
                                std::to_string(num_samples));
  }
  if (world_size <= 0 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument("shard_indices: need 0 <= rank < world_size, got rank " +
                                std::to_string(rank) + ", world_size " + std::to_string(world_size));
  }
  if (drop_last && num_samples < world_size) {
    throw std::invalid_argument("shard_indices: drop_last with fewer samples (" +
                                std::to_string(num_samples) + ") than ranks (" +
                                std::to_string(world_size) + ") leaves every rank empty");
  }
  // Fisher-Yates; draw k uses half of the Philox block k / 2 (two words per draw).
  std::vector<int64_t> perm(num_samples);
  for (int64_t i = 0; i < num_samples; ++i) perm[i] = i;
  const PhiloxKey key = philox_key(seed);
  PhiloxCounter block{};
  for (int64_t i = num_samples - 1, k = 0; i > 0; --i, ++k) {
    if (k % 2 == 0) block = philox4x32_10({epoch, uint32_t(k / 2), kPermutationStream, 0}, key);
    const int h = int(k % 2) * 2;
    std::swap(perm[i], perm[uniform_int64(block[h], block[h + 1], uint64_t(i) + 1)]);
  }

  const int64_t per_rank = drop_last ? num_samples / world_size
                                     : (num_samples + world_size - 1) / world_size;
  std::vector<int64_t> share(per_rank);
  for (int64_t s = 0; s < per_rank; ++s) {
    // Positions past the end wrap to the permutation's head: DistributedSampler's padding.
    share[s] = perm[(rank + s * world_size) % num_samples];
  }
  return share;
}

void sample_view_pairs(const ViewRecipe& view1, const ViewRecipe& view2, uint64_t seed,
                       uint32_t epoch, const int64_t* indices, const int32_t* widths,
                       const int32_t* heights, int64_t n, int num_threads, ViewParamsBatch out) {
  const PhiloxKey key = philox_key(seed);
  const ViewRecipe* recipes[2] = {&view1, &view2};
  auto run = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (uint32_t v = 0; v < 2; ++v) {
        const ViewParams p = sample_view(*recipes[v], key, epoch, uint32_t(indices[i]), v,
                                         widths[i], heights[i]);
        const int64_t iv = 2 * i + v;
        int32_t* crop = out.crop + 4 * iv;
        crop[0] = p.top;
        crop[1] = p.left;
        crop[2] = p.height;
        crop[3] = p.width;
        out.flip[iv] = p.flip;
        out.jitter[iv] = p.jitter;
        float* f = out.jitter_factors + 4 * iv;
        f[0] = p.brightness;
        f[1] = p.contrast;
        f[2] = p.saturation;
        f[3] = p.hue;
        for (int k = 0; k < 4; ++k) out.jitter_order[4 * iv + k] = p.order[k];
        out.grayscale[iv] = p.grayscale;
        out.blur_sigma[iv] = p.blur_sigma;
        out.solarize[iv] = p.solarize;
      }
    }
  };
  // Each sample's parameters are a pure function of its index, so the split is free to choose.
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(num_threads, n / 4096 + 1));
  if (threads == 1) {
    run(0, n);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin < end) workers.emplace_back(run, begin, end);
  }
  for (auto& w : workers) w.join();
}

}  // namespace fmicl
