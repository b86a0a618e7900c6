// fmicl.color_jitter, CPU backend; also the operator's schema and its argument reading.
#include "color_jitter.h"

#include <algorithm>
#include <cstring>

namespace fmicl::dali_ops {

namespace {

template <typename T>
const T *sample_argument(const ::dali::Workspace &ws, const char *name, int sample,
                         int64_t length) {
  const auto &argument = ws.ArgumentInput(name);
  DALI_ENFORCE(argument.type() == ::dali::type2id<T>::value,
               ::dali::make_string("fmicl.color_jitter: argument `", name, "` must be ",
                                   ::dali::type2id<T>::value, ", got ", argument.type()));
  DALI_ENFORCE(::dali::volume(argument.tensor_shape(sample)) == length,
               ::dali::make_string("fmicl.color_jitter: argument `", name, "` needs ", length,
                                   " value(s) per sample, got shape ",
                                   argument.tensor_shape(sample), " at sample ", sample));
  return argument.template tensor<T>(sample);
}

// A per-sample scalar: from the argument input, or the constant the operator was built with.
template <typename T>
T scalar_argument(const ::dali::OpSpec &spec, const ::dali::Workspace &ws, const char *name,
                  int sample) {
  return spec.HasTensorArgument(name) ? *sample_argument<T>(ws, name, sample, 1)
                                      : spec.GetArgument<T>(name);
}

// Pixels go through the steps in chunks held channel by channel (int32), so that each step is a
// plain loop over a chunk that the compiler vectorises (bit-exact: IEEE single operations, no
// contraction, see pil_color.h).
constexpr int kChunk = 256;

struct Chunk {
  alignas(64) int32_t r[kChunk];
  alignas(64) int32_t g[kChunk];
  alignas(64) int32_t b[kChunk];
};

struct ChunkSteps {
  const pil::ColorParams &params;
  uint8_t brightness[256];  // brightness and contrast blend every channel with a constant:
  uint8_t contrast[256];    // 256-entry tables

  void load(Chunk &c, const uint8_t *hwc, int n) const {
    for (int i = 0; i < n; ++i) {
      c.r[i] = hwc[3 * i];
      c.g[i] = hwc[3 * i + 1];
      c.b[i] = hwc[3 * i + 2];
    }
  }
  void store(const Chunk &c, uint8_t *hwc, int n) const {
    for (int i = 0; i < n; ++i) {
      hwc[3 * i] = static_cast<uint8_t>(c.r[i]);
      hwc[3 * i + 1] = static_cast<uint8_t>(c.g[i]);
      hwc[3 * i + 2] = static_cast<uint8_t>(c.b[i]);
    }
  }
  static void lookup(Chunk &c, int n, const uint8_t *table) {
    for (int i = 0; i < n; ++i) {
      c.r[i] = table[c.r[i]];
      c.g[i] = table[c.g[i]];
      c.b[i] = table[c.b[i]];
    }
  }
  void saturation(Chunk &c, int n) const {
    for (int i = 0; i < n; ++i) {
      const int32_t l = pil::luma({c.r[i], c.g[i], c.b[i]});
      c.r[i] = pil::blend(l, c.r[i], params.saturation);
      c.g[i] = pil::blend(l, c.g[i], params.saturation);
      c.b[i] = pil::blend(l, c.b[i], params.saturation);
    }
  }
  void hue(Chunk &c, int n) const {
    for (int i = 0; i < n; ++i) {
      const pil::Rgb out = pil::shift_hue({c.r[i], c.g[i], c.b[i]}, params.hue_shift);
      c.r[i] = out.r;
      c.g[i] = out.g;
      c.b[i] = out.b;
    }
  }
  static void grayscale(Chunk &c, int n) {
    for (int i = 0; i < n; ++i) c.r[i] = c.g[i] = c.b[i] = pil::luma({c.r[i], c.g[i], c.b[i]});
  }
  static int64_t luma_sum(const Chunk &c, int n) {
    int32_t sum = 0;  // at most 255 kChunk
    for (int i = 0; i < n; ++i) sum += pil::luma({c.r[i], c.g[i], c.b[i]});
    return sum;
  }
  void run(Chunk &c, int n, int first, int last) const {
    for (int k = first; k < last; ++k) {
      switch (params.order[k]) {
        case pil::kBrightness: lookup(c, n, brightness); break;
        case pil::kContrast: lookup(c, n, contrast); break;
        case pil::kSaturation: saturation(c, n); break;
        case pil::kHue: hue(c, n); break;
        default: break;
      }
    }
  }
};

// One HWC uint8 image (pixels contiguous). The steps before contrast run first, into ``out``,
// summing the luma for contrast's grey level; the rest then run on ``out`` in place. Compiled
// for AVX2 and for the baseline, chosen at load time (the AVX2 clone is ~5x faster: its
// variable shifts vectorise the hue); flatten inlines the steps into each clone.
__attribute__((target_clones("avx2", "default"), flatten))
void color_image(const uint8_t *in, uint8_t *out, int64_t pixels, const pil::ColorParams &p) {
  ChunkSteps steps{p, {}, {}};
  for (int v = 0; v < 256; ++v)
    steps.brightness[v] = static_cast<uint8_t>(pil::blend(0, v, p.brightness));
  const int contrast_at = pil::contrast_position(p);
  Chunk c;
  const uint8_t *source = in;
  int first = 0;
  if (contrast_at < pil::kJitterSteps) {
    int64_t luma_sum = 0;
    for (int64_t start = 0; start < pixels; start += kChunk) {
      const int n = static_cast<int>(std::min<int64_t>(kChunk, pixels - start));
      steps.load(c, in + 3 * start, n);
      steps.run(c, n, 0, contrast_at);
      luma_sum += ChunkSteps::luma_sum(c, n);
      steps.store(c, out + 3 * start, n);
    }
    const int32_t grey = pil::contrast_grey(luma_sum, pixels);
    for (int v = 0; v < 256; ++v)
      steps.contrast[v] = static_cast<uint8_t>(pil::blend(grey, v, p.contrast));
    source = out;
    first = contrast_at;
  }
  for (int64_t start = 0; start < pixels; start += kChunk) {
    const int n = static_cast<int>(std::min<int64_t>(kChunk, pixels - start));
    steps.load(c, source + 3 * start, n);
    steps.run(c, n, first, pil::kJitterSteps);
    if (p.grayscale) ChunkSteps::grayscale(c, n);
    steps.store(c, out + 3 * start, n);
  }
}

}  // namespace

std::vector<pil::ColorParams> read_color_params(const ::dali::OpSpec &spec,
                                                const ::dali::Workspace &ws, int batch_size) {
  std::vector<int> constant_order;
  if (!spec.HasTensorArgument("order")) {
    constant_order = spec.GetRepeatedArgument<int>("order");
    DALI_ENFORCE(constant_order.size() == pil::kJitterSteps,
                 ::dali::make_string("fmicl.color_jitter: argument `order` needs ",
                                     pil::kJitterSteps, " value(s) per sample, got ",
                                     constant_order.size()));
  }
  std::vector<pil::ColorParams> params(batch_size);
  for (int i = 0; i < batch_size; ++i) {
    pil::ColorParams &p = params[i];
    p.brightness = scalar_argument<float>(spec, ws, "brightness", i);
    p.contrast = scalar_argument<float>(spec, ws, "contrast", i);
    p.saturation = scalar_argument<float>(spec, ws, "saturation", i);
    p.hue_shift = scalar_argument<int32_t>(spec, ws, "hue_shift", i);
    DALI_ENFORCE(0 <= p.hue_shift && p.hue_shift < 256,
                 ::dali::make_string("fmicl.color_jitter: hue_shift must be in [0, 256), got ",
                                     p.hue_shift, " at sample ", i));
    if (constant_order.empty())
      std::memcpy(p.order, sample_argument<int32_t>(ws, "order", i, pil::kJitterSteps),
                  sizeof(p.order));
    else
      std::copy(constant_order.begin(), constant_order.end(), p.order);
    for (int32_t step : p.order)
      DALI_ENFORCE(pil::kNoStep <= step && step <= pil::kHue,
                   ::dali::make_string("fmicl.color_jitter: order holds step ", step,
                                       " at sample ", i, "; steps are -1 (none) to 3"));
    p.grayscale = scalar_argument<bool>(spec, ws, "grayscale", i);
  }
  return params;
}

class ColorJitterCpu : public ColorJitterBase<::dali::CPUBackend> {
 public:
  using ColorJitterBase<::dali::CPUBackend>::ColorJitterBase;

 protected:
  void RunImpl(::dali::Workspace &ws) override;
};

void ColorJitterCpu::RunImpl(::dali::Workspace &ws) {
  const auto &images = ws.Input<::dali::CPUBackend>(0);
  auto &output = ws.Output<::dali::CPUBackend>(0);
  output.SetLayout(images.GetLayout());
  const int batch_size = images.num_samples();
  const std::vector<pil::ColorParams> params = read_color_params(spec_, ws, batch_size);
  auto &pool = ws.GetThreadPool();
  for (int i = 0; i < batch_size; ++i) {
    const auto shape = images.tensor_shape_span(i);
    const int64_t pixels = shape[0] * shape[1];
    pool.AddWork([&, i, pixels](int) {
      color_image(images.tensor<uint8_t>(i), output.mutable_tensor<uint8_t>(i), pixels, params[i]);
    }, pixels);
  }
  pool.RunAll();
}

}  // namespace fmicl::dali_ops

namespace dali {

DALI_SCHEMA(fmicl__ColorJitter)
    .DocStr(R"(torchvision's ColorJitter then RandomGrayscale, as on PIL images, bit for bit.

Per sample: brightness, contrast, saturation (Image.blend factors; 1 leaves the image), the hue
shift (added to Pillow's 8-bit hue modulo 256), the order of the four steps (0 brightness,
1 contrast, 2 saturation, 3 hue, -1 none) and whether to convert to grey after them.)")
    .NumInput(1)
    .NumOutput(1)
    .InputLayout(0, "HWC")
    .AddArg("brightness", "Brightness factor.", DALI_FLOAT, true)
    .AddArg("contrast", "Contrast factor.", DALI_FLOAT, true)
    .AddArg("saturation", "Saturation factor.", DALI_FLOAT, true)
    .AddArg("hue_shift", "Added to the 8-bit hue, in [0, 256).", DALI_INT32, true)
    .AddArg("order", "The four steps in order (0-3; -1 none).", DALI_INT_VEC, true)
    .AddArg("grayscale", "Convert to grey after the jitter.", DALI_BOOL, true);

DALI_REGISTER_OPERATOR(fmicl__ColorJitter, ::fmicl::dali_ops::ColorJitterCpu, CPU);

}  // namespace dali
