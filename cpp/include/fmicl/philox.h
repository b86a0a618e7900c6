// Philox-4x32-10, the counter-based generator of Salmon et al. (SC'11, "Parallel random numbers:
// as easy as 1, 2, 3"), as in Random123 and curand. A draw is a pure function of (key, counter),
// so any sample's random numbers can be computed on any thread, in any order, after any resume.
#pragma once

#include <array>
#include <cstdint>

namespace fmicl {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

namespace philox_detail {
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

inline PhiloxCounter round(PhiloxCounter c, PhiloxKey k) {
  const uint64_t p0 = uint64_t(kMul0) * c[0];
  const uint64_t p1 = uint64_t(kMul1) * c[2];
  return {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1],
          uint32_t(p0)};
}
}  // namespace philox_detail

// Four independent uniform 32-bit words for one (counter, key).
inline PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key) {
  for (int r = 0; r < 9; ++r) {
    counter = philox_detail::round(counter, key);
    key[0] += philox_detail::kWeyl0;
    key[1] += philox_detail::kWeyl1;
  }
  return philox_detail::round(counter, key);
}

inline PhiloxKey philox_key(uint64_t seed) { return {uint32_t(seed), uint32_t(seed >> 32)}; }

// Uniform in [0, 1) from one word, in double (a word has 32 bits; float32 would keep 24).
inline double uniform01(uint32_t word) { return double(word) * 0x1.0p-32; }

inline double uniform(uint32_t word, double low, double high) {
  return low + (high - low) * uniform01(word);
}

// Uniform integer in [0, n) by multiply-shift (Lemire); bias below n / 2^32, none that a crop
// position (n <= 2^16) could show.
inline uint32_t uniform_int(uint32_t word, uint32_t n) {
  return uint32_t((uint64_t(word) * n) >> 32);
}

// The same from two words, bias below n / 2^64: for permutations of millions of items.
inline uint64_t uniform_int64(uint32_t hi, uint32_t lo, uint64_t n) {
  const uint64_t word = (uint64_t(hi) << 32) | lo;
  return uint64_t((static_cast<unsigned __int128>(word) * n) >> 64);
}

}  // namespace fmicl
