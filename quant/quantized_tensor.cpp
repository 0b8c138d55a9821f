// Codebooks, QuantizedTensor bookkeeping and quantize_4bit (bit-compatible with bitsandbytes' default
// backend, see docs in quantized_tensor.h and shared/reference/formats.md section 1).
#include "quant/quantized_tensor.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "quant/dequant_kernels.h"

#if defined(QLORA_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>

#include "quant/dequant_cuda.h"
#endif

namespace qlora::quant {
namespace {

constexpr float kMinAbsmax = 1e-38f;  // bitsandbytes clamps the absmax to this before the reciprocal

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_blocksize(int64_t blocksize) {
  const bool pow2 = blocksize > 0 && (blocksize & (blocksize - 1)) == 0;
  if (!pow2 || blocksize < 32 || blocksize > 4096) {
    throw Error("quantize_4bit: blocksize " + std::to_string(blocksize) +
                " is not supported\nHINT: use a power of two between 32 and 4096 (bitsandbytes uses 64)");
  }
}

// fp32 linspace(start, end, steps) bit for bit as LibTorch 2.x's CPU kernel computes it on AVX2 / AVX-512 machines
// (torch 2.15): every element is start + step * idx (or end - step * (steps - idx - 1) from halfway on) rounded once
// (a fused multiply-add). bitsandbytes' create_dynamic_map calls torch.linspace, so the map follows the torch
// version: torch 1.13's vectorized base + k * step (two roundings) differs in 42 of the 256 entries.
std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  for (int64_t i = 0; i < steps; ++i) {
    out[static_cast<size_t>(i)] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                                              : std::fma(-step, static_cast<float>(steps - i - 1), end);
  }
  return out;
}

// bitsandbytes functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8).
std::vector<float> make_dynamic_map_signed() {
  constexpr int kMaxExponentBits = 7;
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int64_t fraction_items = (int64_t{1} << i) + 1;
    const std::vector<float> b = linspace_f32(0.1f, 1.0f, fraction_items);
    const float scale = static_cast<float>(std::pow(10.0, -(kMaxExponentBits - 1) + i));
    std::vector<float> means;
    for (size_t k = 0; k + 1 < b.size(); ++k) means.push_back((b[k] + b[k + 1]) / 2.0f);
    for (float m : means) data.push_back(scale * m);
    for (float m : means) data.push_back(-scale * m);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  TORCH_CHECK(data.size() == 256, "dynamic map has ", data.size(), " entries");
  std::sort(data.begin(), data.end());
  return data;
}

// Sorted decision bounds of a codebook: bounds[i] = (sorted[i] + sorted[i+1]) / 2 in fp32, padded with
// +inf to a power of two so a branchless binary search counts the bounds below x (= torch.bucketize,
// right=False: a value exactly on a bound goes to the lower index). order maps sorted -> code index.
template <size_t N>
struct Bounds {
  std::array<float, N> bounds;
  std::array<uint8_t, N> order;

  explicit Bounds(const std::vector<float>& code) {
    TORCH_CHECK(code.size() == N, "codebook size");
    std::array<int, N> idx;
    for (size_t i = 0; i < N; ++i) idx[i] = static_cast<int>(i);
    // Stable: equal values (+0 / -0 in FP4) keep table order, as torch.argsort does for this table.
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return code[a] < code[b]; });
    for (size_t i = 0; i < N; ++i) order[i] = static_cast<uint8_t>(idx[i]);
    for (size_t i = 0; i + 1 < N; ++i) bounds[i] = (code[idx[i]] + code[idx[i + 1]]) / 2.0f;
    bounds[N - 1] = std::numeric_limits<float>::infinity();
  }

  // Number of bounds strictly below x, in [0, N-1].
  int bucket(float x) const {
    int i = 0;
    for (size_t step = N / 2; step >= 1; step /= 2) {
      if (x > bounds[i + step - 1]) i += static_cast<int>(step);
    }
    return i;
  }
};

// Blockwise 8-bit quantization of v (n values) against the sorted dynamic map, blocksize 256.
void quantize_nested(const std::vector<float>& v, uint8_t* q, float* absmax2) {
  static const Bounds<256> bnd(dynamic_map_signed());
  const int64_t n = static_cast<int64_t>(v.size());
  const int64_t nb = ceil_div(n, kNestedBlocksize);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t e0 = b * kNestedBlocksize;
    const int64_t e1 = std::min(n, e0 + kNestedBlocksize);
    float m = 0.0f;
    for (int64_t e = e0; e < e1; ++e) m = std::max(m, std::fabs(v[static_cast<size_t>(e)]));
    absmax2[b] = m;
    const float inv = 1.0f / std::max(m, kMinAbsmax);
    for (int64_t e = e0; e < e1; ++e) {
      const float s = std::min(1.0f, std::max(-1.0f, v[static_cast<size_t>(e)] * inv));
      q[e] = static_cast<uint8_t>(bnd.bucket(s));
    }
  }
}

}  // namespace

std::string quant_type_name(QuantType t) {
  return t == QuantType::kNF4 ? "nf4" : "fp4";
}

QuantType parse_quant_type(const std::string& name) {
  if (name == "nf4") return QuantType::kNF4;
  if (name == "fp4") return QuantType::kFP4;
  throw Error("unknown 4-bit quant type '" + name + "'\nHINT: use \"nf4\" (QLoRA) or \"fp4\"");
}

std::vector<std::string> quant_option_names() {
  return {quant_type_name(QuantType::kNF4), quant_type_name(QuantType::kFP4), kNoQuant};
}

std::optional<QuantType> parse_quant_option(const std::string& name) {
  if (name == kNoQuant) return std::nullopt;
  return parse_quant_type(name);
}

const std::vector<float>& nf4_code() {
  static const std::vector<float> code = {-1.0f,
                                          -0.6961928009986877f,
                                          -0.5250730514526367f,
                                          -0.39491748809814453f,
                                          -0.28444138169288635f,
                                          -0.18477343022823334f,
                                          -0.09105003625154495f,
                                          0.0f,
                                          0.07958029955625534f,
                                          0.16093020141124725f,
                                          0.24611230194568634f,
                                          0.33791524171829224f,
                                          0.44070982933044434f,
                                          0.5626170039176941f,
                                          0.7229568362236023f,
                                          1.0f};
  return code;
}

const std::vector<float>& fp4_code() {
  static const std::vector<float> code = [] {
    const float raw[16] = {0, 0.0625f, 8, 12, 4, 6, 2, 3, -0.0f, -0.0625f, -8, -12, -4, -6, -2, -3};
    std::vector<float> c(16);
    for (int i = 0; i < 16; ++i) c[static_cast<size_t>(i)] = raw[i] / 12.0f;
    return c;
  }();
  return code;
}

const std::vector<float>& dynamic_map_signed() {
  static const std::vector<float> map = make_dynamic_map_signed();
  return map;
}

int64_t QuantizedTensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

int64_t QuantizedTensor::num_blocks() const {
  return ceil_div(numel(), blocksize);
}

int64_t QuantizedTensor::nbytes() const {
  int64_t total = 0;
  for (const torch::Tensor* t : {&packed, &code, &absmax, &absmax2, &nested_code}) {
    if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return total;
}

// packed codes + 16-entry fp32 codebook + absmax (fp32, or uint8 + fp32 absmax2 per 256 blocks + the
// 256-entry fp32 dynamic map).
int64_t QuantizedTensor::nbytes_for(int64_t numel, int64_t blocksize, bool double_quant) {
  const int64_t nblocks = ceil_div(numel, blocksize);
  int64_t total = ceil_div(numel, 2) + 16 * 4;
  if (double_quant) {
    total += nblocks + 4 * ceil_div(nblocks, kNestedBlocksize) + 256 * 4;
  } else {
    total += 4 * nblocks;
  }
  return total;
}

QuantizedTensor QuantizedTensor::to(torch::Device device) const {
  QuantizedTensor r = *this;
  auto move = [&](const torch::Tensor& t) { return t.defined() ? t.to(device) : t; };
  r.packed = move(packed);
  r.code = move(code);
  r.absmax = move(absmax);
  r.absmax2 = move(absmax2);
  r.nested_code = move(nested_code);
  return r;
}

torch::Tensor QuantizedTensor::absmax_fp32() const {
  if (!double_quant) return absmax.to(torch::kFloat32);
  if (!device().is_cpu()) {
    auto idx = absmax.to(torch::kLong);
    auto scale = absmax2.repeat_interleave(kNestedBlocksize).narrow(0, 0, num_blocks());
    return nested_code.index_select(0, idx) * scale + offset;
  }
  QuantizedTensor cpu = *this;
  cpu.absmax = absmax.contiguous();
  cpu.absmax2 = absmax2.contiguous();
  cpu.nested_code = nested_code.contiguous();
  auto out = torch::empty({num_blocks()}, torch::kFloat32);
  detail::decode_absmax(cpu, 0, num_blocks(), out.data_ptr<float>());
  return out;
}

QuantizedTensor quantize_4bit(const torch::Tensor& w, QuantType type, int64_t blocksize, bool double_quant) {
  return detail::quantize_4bit_with(w, type, blocksize, double_quant, active_isa());
}

QuantizedTensor detail::quantize_4bit_with(const torch::Tensor& w, QuantType type, int64_t blocksize, bool double_quant,
                                           Isa isa) {
  check_blocksize(blocksize);
  const auto dt = w.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kBFloat16 && dt != torch::kHalf) {
    throw Error(std::string("quantize_4bit: unsupported dtype ") + c10::toString(dt) +
                "\nHINT: 4-bit quantization takes float32, bfloat16 or float16 weights");
  }
  TORCH_CHECK(w.numel() > 0, "quantize_4bit: empty tensor");
  // Quantization runs once at load: always on the CPU (bit-exact everywhere), then moved back.
  const torch::Tensor x = w.device().is_cpu() ? w.contiguous() : w.to(torch::kCPU).contiguous();
  const int64_t n = x.numel();
  const int64_t nblocks = ceil_div(n, blocksize);

  QuantizedTensor q;
  q.type = type;
  q.blocksize = blocksize;
  q.shape = x.sizes().vec();
  q.dtype = dt;
  const std::vector<float>& code = type == QuantType::kNF4 ? nf4_code() : fp4_code();
  q.code = torch::from_blob(const_cast<float*>(code.data()), {16}, torch::kFloat32).clone();

  auto absmax = torch::empty({nblocks}, torch::kFloat32);
  q.packed = torch::empty({(n + 1) / 2}, torch::kUInt8);
  float* am = absmax.data_ptr<float>();
  uint8_t* p = q.packed.data_ptr<uint8_t>();
  const void* src = x.data_ptr();
  const detail::CodeBounds cb = detail::code_bounds(code);
  const int64_t grain = std::max<int64_t>(1, 65536 / blocksize);
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    detail::quantize_blocks_cpu(src, dt, n, blocksize, b0, b1, cb, am, p, isa);
  });

  q.double_quant = double_quant;
  if (!double_quant) {
    q.absmax = absmax;
  } else {
    q.offset = detail::torch_mean_f32(am, nblocks);
    std::vector<float> centered(static_cast<size_t>(nblocks));
    for (int64_t b = 0; b < nblocks; ++b) centered[static_cast<size_t>(b)] = am[b] - q.offset;
    q.absmax = torch::empty({nblocks}, torch::kUInt8);
    q.absmax2 = torch::empty({ceil_div(nblocks, kNestedBlocksize)}, torch::kFloat32);
    quantize_nested(centered, q.absmax.data_ptr<uint8_t>(), q.absmax2.data_ptr<float>());
    const std::vector<float>& dyn = dynamic_map_signed();
    q.nested_code = torch::from_blob(const_cast<float*>(dyn.data()), {256}, torch::kFloat32).clone();
  }
  return w.device().is_cpu() ? q : q.to(w.device());
}

namespace {

// The CUDA kernel (quant/dequant_cuda.cu) when this is a CUDA build and q, out are CUDA tensors it can take;
// false otherwise (the caller falls back to LibTorch ops).
bool dequantize_cuda_into(const QuantizedTensor& q, torch::Tensor& out) {
#if defined(QLORA_WITH_CUDA)
  if (!q.device().is_cuda()) return false;
  cuda::Dequant4bitArgs a;
  switch (out.scalar_type()) {
    case torch::kFloat32:
      a.out_type = cuda::OutType::kF32;
      break;
    case torch::kBFloat16:
      a.out_type = cuda::OutType::kBF16;
      break;
    case torch::kHalf:
      a.out_type = cuda::OutType::kF16;
      break;
    default:
      return false;
  }
  const auto aligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  if (!q.packed.is_contiguous() || !aligned(q.packed.data_ptr(), 4) || !aligned(out.data_ptr(), 16)) return false;
  a.w = detail::packed_view(q);
  a.n = q.numel();
  a.out = out.data_ptr();
  cuda::dequantize_4bit(a, c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
  return true;
#else
  (void)q;
  (void)out;
  return false;
#endif
}

}  // namespace

torch::Tensor dequantize_4bit(const QuantizedTensor& q, torch::ScalarType out_dtype) {
#if defined(QLORA_WITH_CUDA)
  if (q.device().is_cuda() && out_dtype != torch::kFloat64) {
    auto out = torch::empty(q.shape, torch::TensorOptions().dtype(out_dtype).device(q.device()));
    if (dequantize_cuda_into(q, out)) return out;
  }
#endif
  if (!q.device().is_cpu() || out_dtype == torch::kFloat64) return detail::dequantize_ops(q, out_dtype);
  auto out = torch::empty(q.shape, torch::TensorOptions().dtype(out_dtype));
  detail::dequantize_cpu_into(q, out, active_isa());
  return out;
}

void dequantize_4bit_into(const QuantizedTensor& q, torch::Tensor& out) {
  TORCH_CHECK(out.is_contiguous() && out.numel() == q.numel(), "dequantize_4bit_into: out must be contiguous with ",
              q.numel(), " elements");
  TORCH_CHECK(out.device() == q.device(), "dequantize_4bit_into: out is on ", out.device(), ", weight on ", q.device());
  if (dequantize_cuda_into(q, out)) return;
  if (!q.device().is_cpu() || out.scalar_type() == torch::kFloat64) {
    out.copy_(detail::dequantize_ops(q, out.scalar_type()).view_as(out));
    return;
  }
  detail::dequantize_cpu_into(q, out, active_isa());
}

}  // namespace qlora::quant
