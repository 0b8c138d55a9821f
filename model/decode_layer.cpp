#include "model/decode_layer.h"

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstring>

#include "common/cpu_isa.h"
#include "ops/fused_kernels.h"
#include "quant/linear_4bit.h"

namespace qlora::model {
namespace {

// The buffers of one token through one layer, shaped once per model shape and reused (per thread).
struct Scratch {
  int64_t hidden = -1, heads = -1, kv_heads = -1, head_dim = -1, intermediate = -1;
  torch::ScalarType dtype = torch::kBFloat16;
  torch::Tensor normed, rstd, q, k, v, q_rot, k_rot, attn, o, h, gate, up, act, down;
  torch::Tensor out[2];
  int next = 0;  // which of out[] the next call writes

  void shape(const DecodeLayerWeights& w, int64_t hidden_size, torch::ScalarType type) {
    const int64_t inter = w.gate->shape[0];
    if (hidden == hidden_size && heads == w.heads && kv_heads == w.kv_heads && head_dim == w.head_dim &&
        intermediate == inter && dtype == type) {
      return;
    }
    hidden = hidden_size, heads = w.heads, kv_heads = w.kv_heads, head_dim = w.head_dim, intermediate = inter;
    dtype = type;
    const auto opts = torch::TensorOptions().dtype(type);  // the activations' dtype (bf16 or fp32)
    normed = torch::empty({1, 1, hidden}, opts);
    rstd = torch::empty({1}, opts.dtype(torch::kFloat32));
    q = torch::empty({1, heads, 1, head_dim}, opts);
    q_rot = torch::empty_like(q);
    attn = torch::empty_like(q);
    k = torch::empty({1, kv_heads, 1, head_dim}, opts);
    k_rot = torch::empty_like(k);
    v = torch::empty_like(k);
    o = torch::empty({1, 1, hidden}, opts);
    h = torch::empty_like(o);
    gate = torch::empty({1, 1, inter}, opts);
    up = torch::empty_like(gate);
    act = torch::empty_like(gate);
    down = torch::empty_like(o);
    out[0] = torch::empty_like(o);
    out[1] = torch::empty_like(o);
  }
};

// out = round(a + b) elementwise in T (LibTorch's add: the fp32 sum, rounded to nearest even for bf16).
template <class T>
void add_rows(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out) {
  const auto* pa = a.data_ptr<T>();
  const auto* pb = b.data_ptr<T>();
  auto* po = out.data_ptr<T>();
  for (int64_t i = 0, n = out.numel(); i < n; ++i) po[i] = T(static_cast<float>(pa[i]) + static_cast<float>(pb[i]));
}

void add(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out) {
  if (out.scalar_type() == torch::kFloat32) {
    add_rows<float>(a, b, out);
  } else {
    add_rows<c10::BFloat16>(a, b, out);
  }
}

// Copies the (1, kv_heads, 1, d) rows of src to position `pos` of the (1, kv_heads, capacity, d) buffer dst.
void write_position(const torch::Tensor& src, torch::Tensor& dst, int64_t pos) {
  const int64_t heads = dst.size(1), cap = dst.size(2), d = dst.size(3);
  const auto* s = static_cast<const char*>(src.data_ptr());
  auto* t = static_cast<char*>(dst.data_ptr());
  const auto es = static_cast<int64_t>(dst.element_size());
  for (int64_t hd = 0; hd < heads; ++hd) {
    std::memcpy(t + (hd * cap + pos) * d * es, s + hd * d * es, static_cast<size_t>(d * es));
  }
}

bool resident_on_cpu(const quant::QuantizedTensor* w) {
  return w != nullptr && w->packed.defined() && w->packed.is_cpu() && w->shape.size() == 2 && w->shape[1] % 32 == 0;
}

bool cpu_of(const torch::Tensor& t, torch::ScalarType dtype) {
  return t.defined() && t.is_cpu() && t.scalar_type() == dtype && t.is_contiguous();
}

}  // namespace

bool decode_layer_applies(const DecodeLayerWeights& w, const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin, const torch::Tensor& mask) {
  const torch::ScalarType dt = x.scalar_type();
  if (!c10::InferenceMode::is_enabled() || !quant::cpu_gemv_takes(dt) || !cpu_of(x, dt) || x.dim() != 3 ||
      x.size(0) != 1 || x.size(1) != 1) {
    return false;
  }
  for (const auto* p : {w.q, w.k, w.v, w.o, w.gate, w.up, w.down}) {
    if (!resident_on_cpu(p)) return false;
  }
  const int64_t d = w.head_dim;
  if (!cpu_of(cos, dt) || !cpu_of(sin, dt) || cos.dim() != 3 || cos.numel() != d || sin.sizes() != cos.sizes() ||
      d % 2 != 0) {
    return false;
  }
  if (!w.input_norm.is_cpu() || !w.post_attention_norm.is_cpu()) return false;
  if (!mask.defined()) return true;
  return mask.scalar_type() == torch::kBool && mask.is_cpu() && mask.is_contiguous() && mask.dim() == 4 &&
         mask.size(0) == 1 && mask.size(1) == 1 && mask.size(2) == 1;
}

torch::Tensor decode_layer_cpu(const DecodeLayerWeights& w, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& mask, torch::Tensor& kb,
                               torch::Tensor& vb, int64_t past) {
  TORCH_CHECK(cpu_of(kb, x.scalar_type()) && cpu_of(vb, x.scalar_type()) && kb.dim() == 4 && kb.size(0) == 1 &&
                  kb.size(1) == w.kv_heads && kb.size(2) > past && kb.size(3) == w.head_dim && vb.sizes() == kb.sizes(),
              "decode_layer_cpu: cache buffers ", kb.sizes(), " / ", vb.sizes(), " cannot take position ", past);
  thread_local Scratch s;
  s.shape(w, x.size(-1), x.scalar_type());
  const Isa isa = active_isa();

  ops::detail::rms_norm_forward_cpu(x, w.input_norm, w.eps, s.normed, s.rstd, isa);
  quant::gemv_4bit_out({{w.q, &s.q}, {w.k, &s.k}, {w.v, &s.v}}, s.normed);
  ops::detail::rope_cpu(s.q, cos, sin, /*backward=*/false, s.q_rot, isa);
  ops::detail::rope_cpu(s.k, cos, sin, /*backward=*/false, s.k_rot, isa);
  write_position(s.k_rot, kb, past);
  write_position(s.v, vb, past);
  const int64_t len = past + 1;
  torch::Tensor allowed;
  if (mask.defined()) {
    TORCH_CHECK(mask.size(3) == len, "decode_layer_cpu: mask of ", mask.size(3), " keys for ", len, " positions");
    allowed = mask.view({1, len});
  }
  const double scale = w.scale > 0 ? w.scale : 1.0 / std::sqrt(static_cast<double>(w.head_dim));
  ops::detail::decode_attention_cpu(s.q_rot, kb.narrow(2, 0, len), vb.narrow(2, 0, len), allowed, scale, s.attn, isa);
  quant::gemv_4bit_out(*w.o, s.attn, s.o);
  add(x, s.o, s.h);

  ops::detail::rms_norm_forward_cpu(s.h, w.post_attention_norm, w.eps, s.normed, s.rstd, isa);
  quant::gemv_4bit_out({{w.gate, &s.gate}, {w.up, &s.up}}, s.normed);
  ops::detail::swiglu_forward_cpu(s.gate, s.up, s.act, isa);
  quant::gemv_4bit_out(*w.down, s.act, s.down);
  torch::Tensor& out = s.out[s.next];
  s.next ^= 1;
  add(s.h, s.down, out);
  return out;
}

}  // namespace qlora::model
