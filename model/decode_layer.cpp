#include "model/decode_layer.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <immintrin.h>

#include "common/cpu_isa.h"
#include "ops/fused_kernels.h"
#include "ops/kernel_loop.h"
#include "quant/linear_4bit.h"

namespace qlora::model {
namespace {

// Runs body(t, size) on a team of `size` threads (OpenMP's, LibTorch's pool), or on the calling thread alone where
// the build has no OpenMP or the call is already inside a parallel region.
template <class Body>
void run_team(int size, const Body& body) {
#ifdef _OPENMP
  if (size > 1 && !at::in_parallel_region()) {
#pragma omp parallel num_threads(size)
    body(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  body(0, 1);
}

// Bytes a team member reads next (its rows of the next projection), prefetched into its L2 while it waits at a
// barrier: a member that finishes its share first streams the next one's weights instead of idling, so the memory
// stays busy across the steps of a layer.
struct Ahead {
  static constexpr int64_t kMaxBytes = int64_t{384} << 10;  // within a core's L2 next to what the step itself reads
  static constexpr int64_t kPiece = 1024;                   // bytes prefetched between checks of the barrier
  static constexpr int kRanges = 3;
  std::pair<const char*, const char*> ranges[kRanges] = {};  // [begin, end) of bytes, fetched in order
  int current = kRanges;
  int64_t budget = 0;

  // Rows [o0, o1) of the weights' joint rows (the first's rows, then the second's, ...): their packed codes (the
  // absmax bytes are 1/32 of them). Same rows of each weight instead where `same_rows` (gate and up).
  void set(std::initializer_list<const quant::QuantizedTensor*> ws, int64_t o0, int64_t o1, bool same_rows = false) {
    current = kRanges - static_cast<int>(ws.size());
    int slot = current;
    int64_t base = 0;
    for (const quant::QuantizedTensor* w : ws) {
      const int64_t rows = w->shape[0];
      const int64_t lo = same_rows ? o0 : std::clamp<int64_t>(o0 - base, 0, rows);
      const int64_t hi = same_rows ? o1 : std::clamp<int64_t>(o1 - base, 0, rows);
      const auto* bytes = static_cast<const char*>(w->packed.data_ptr());
      ranges[slot++] = {bytes + lo * w->shape[1] / 2, bytes + hi * w->shape[1] / 2};
      base += rows;
    }
    budget = kMaxBytes;
  }
  // Prefetches the next piece; false when there is nothing left to fetch.
  bool step() {
    while (current < kRanges && ranges[current].first >= ranges[current].second) ++current;
    if (current == kRanges || budget <= 0) return false;
    auto& [at, end] = ranges[current];
    const char* stop = std::min(end, at + kPiece);
    for (; at < stop; at += 64) _mm_prefetch(at, _MM_HINT_T1);
    budget -= kPiece;
    return true;
  }
};

// A spinning barrier for one team (sense by generation): waiters run `ahead` while the last member has not arrived.
class TeamBarrier {
 public:
  static constexpr int kSpins = 2048;  // pauses (~0.1 ms at most) before the waiter starts yielding its core

  // `size`: the team's (every member passes the same).
  void wait(int size, Ahead& ahead) {
    if (size == 1) return;
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    // Spin while the wait is short; then yield, so that a member the OS has not scheduled (more threads than free
    // cores: several generations at once, other processes) gets the core instead of waiting out our time slice.
    for (int idle = 0; generation_.load(std::memory_order_acquire) == gen;) {
      if (ahead.step()) continue;
      if (++idle < kSpins) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// One thread's share of a layer call: its copy of the normed row (every thread norms the same row itself rather than
// wait for one to do it), the x its GEMV rows read, attention scratch.
struct ThreadScratch {
  torch::Tensor normed;  // (H), the activations' dtype
  quant::CpuGemvRows gemv;
  std::vector<float> norm_weight;  // (H): the layer's norm weight as the norm kernel reads it
  std::vector<float> attention;    // S + d
  Ahead ahead;                     // what it prefetches while it waits
};

// The buffers of one token through one layer, shaped once per model shape and reused (per calling thread).
struct Scratch {
  int64_t hidden = -1, heads = -1, kv_heads = -1, head_dim = -1, intermediate = -1;
  torch::ScalarType dtype = torch::kBFloat16;
  torch::Tensor q, k, v, q_rot, attn, o, h, gate, up, act, down;
  torch::Tensor out[2];
  int next = 0;  // which of out[] the next call writes
  std::vector<ThreadScratch> threads;

  void shape(const DecodeLayerWeights& w, int64_t hidden_size, torch::ScalarType type, int team) {
    const int64_t inter = w.gate->shape[0];
    if (hidden != hidden_size || heads != w.heads || kv_heads != w.kv_heads || head_dim != w.head_dim ||
        intermediate != inter || dtype != type) {
      hidden = hidden_size, heads = w.heads, kv_heads = w.kv_heads, head_dim = w.head_dim, intermediate = inter;
      dtype = type;
      const auto opts = torch::TensorOptions().dtype(type);  // the activations' dtype (bf16 or fp32)
      q = torch::empty({heads * head_dim}, opts);
      q_rot = torch::empty_like(q);
      attn = torch::empty_like(q);
      k = torch::empty({kv_heads * head_dim}, opts);
      v = torch::empty_like(k);
      o = torch::empty({hidden}, opts);
      h = torch::empty_like(o);
      gate = torch::empty({inter}, opts);
      up = torch::empty_like(gate);
      act = torch::empty_like(gate);
      down = torch::empty_like(o);
      out[0] = torch::empty({1, 1, hidden}, opts);
      out[1] = torch::empty_like(out[0]);
      threads.clear();
    }
    while (static_cast<int>(threads.size()) < team) {
      threads.emplace_back();
      threads.back().normed = torch::empty({hidden}, torch::TensorOptions().dtype(type));
      threads.back().norm_weight.resize(static_cast<size_t>(hidden));
    }
  }
};

// [begin, end) of `n` items for member `t` of a team of `size`: contiguous shares, as even as `align` allows.
std::pair<int64_t, int64_t> share(int64_t n, int t, int size, int64_t align = 1) {
  const int64_t units = (n + align - 1) / align;
  const int64_t b = units * t / size * align, e = units * (t + 1) / size * align;
  return {std::min(b, n), std::min(e, n)};
}

bool resident_on_cpu(const quant::QuantizedTensor* w) {
  return w != nullptr && w->packed.defined() && w->packed.is_cpu() && w->shape.size() == 2 && w->shape[1] % 32 == 0;
}

bool cpu_of(const torch::Tensor& t, torch::ScalarType dtype) {
  return t.defined() && t.is_cpu() && t.scalar_type() == dtype && t.is_contiguous();
}

// A norm weight the team copies itself (norm_weight below): contiguous fp32, bf16 or fp16 on the CPU, H elements.
bool norm_weight_fits(const torch::Tensor& n, int64_t hidden) {
  const torch::ScalarType t = n.scalar_type();
  return n.is_cpu() && n.is_contiguous() && n.numel() == hidden &&
         (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kHalf);
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
  if (!norm_weight_fits(w.input_norm, x.size(2)) || !norm_weight_fits(w.post_attention_norm, x.size(2))) return false;
  if (!mask.defined()) return true;
  return mask.scalar_type() == torch::kBool && mask.is_cpu() && mask.is_contiguous() && mask.dim() == 4 &&
         mask.size(0) == 1 && mask.size(1) == 1 && mask.size(2) == 1;
}

namespace {

// One layer of a call as raw pointers.
template <class T>
struct LayerPtrs {
  const DecodeLayerWeights* w;
  const bool* allowed;  // (past + 1) or null
  T *kb, *vb;           // (kv_heads, capacity, d)
  int64_t capacity;
  float scale;
  const T* in;  // the layer's input row (H)
  T* out;       // its output row (H)
};

// The norm weight as ops::detail::rms_norm_forward_cpu reads it (cast to the activations' dtype T, then to fp32).
template <class T>
void norm_weight(const torch::Tensor& weight, float* out) {
  ops::detail::dispatch_dtype(weight.scalar_type(), [&](auto tag) {  // fp32, bf16 or fp16 (decode_layer_applies)
    using W = decltype(tag);
    const W* p = static_cast<const W*>(weight.data_ptr());
    for (int64_t i = 0, n = weight.numel(); i < n; ++i) {
      out[i] = static_cast<float>(static_cast<T>(static_cast<float>(p[i])));
    }
  });
}

// decode_layers_cpu's steps on T rows (float or bf16), each step's work split over the team, barriers between steps
// that read what another thread wrote. The kernels and roundings are those of the layer's LibTorch ops.
template <class T>
struct TokenCall {
  const std::vector<LayerPtrs<T>>& layers;
  Scratch& s;
  const T *cos, *sin;
  int64_t past;
  quant::CpuGemv gemv;
  Isa isa;
  TeamBarrier& team_barrier;

  static constexpr int kSteps = 6;  // per layer

  static T* ptr(const torch::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

  // y_i (rows [0, W_i.out) of each) = W_i xin for weights sharing xin, the joint rows split over the team; xin is
  // prepared by every thread for itself. Returns member t's joint rows.
  std::pair<int64_t, int64_t> project(ThreadScratch& me, const T* xin, int64_t in,
                                      std::initializer_list<std::pair<const quant::QuantizedTensor*, T*>> outs, int t,
                                      int size) const {
    me.gemv.prepare(gemv, xin, s.dtype, in, isa);
    int64_t total = 0;
    for (const auto& o : outs) total += o.first->shape[0];
    const auto [b, e] = share(total, t, size, 16);
    int64_t base = 0;
    for (const auto& [wt, y] : outs) {
      const int64_t lo = std::max(b, base), hi = std::min(e, base + wt->shape[0]);
      if (lo < hi) me.gemv.rows(*wt, y, lo - base, hi - base);
      base += wt->shape[0];
    }
    return {b, e};
  }

  static void add(const T* a, const T* b, T* o, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) o[i] = T(static_cast<float>(a[i]) + static_cast<float>(b[i]));
  }

  // Member t's rows of the joint q/k/v rows of layer l (step 0's share), for prefetching.
  void ahead_qkv(Ahead& ahead, const DecodeLayerWeights& w, int t, int size) const {
    const auto [b, e] = share(w.q->shape[0] + w.k->shape[0] + w.v->shape[0], t, size, 16);
    ahead.set({w.q, w.k, w.v}, b, e);
  }

  // Step i of layer l on member t of a team of `size`; every member runs the steps in order with a barrier between
  // consecutive ones (run()).
  void step(const LayerPtrs<T>& l, int i, int t, int size) const {
    const DecodeLayerWeights& w = *l.w;
    ThreadScratch& me = s.threads[static_cast<size_t>(t)];
    T* normed = ptr(me.normed);
    float* norm_w = me.norm_weight.data();
    const int64_t hidden = s.hidden, d = s.head_dim, group = s.heads / s.kv_heads, len = past + 1;
    const auto [h0, h1] = share(s.heads, t, size);  // query heads
    int64_t b = 0, e = 0;
    switch (i) {
      case 0:  // input norm (every thread its own copy), q, k, v
        norm_weight<T>(w.input_norm, norm_w);
        rms_norm_row(l.in, norm_w, static_cast<float>(w.eps), normed);
        project(me, normed, hidden, {{w.q, ptr(s.q)}, {w.k, ptr(s.k)}, {w.v, ptr(s.v)}}, t, size);
        std::tie(b, e) = share(hidden, t, size, 16);  // step 3's rows of o_proj, fetched through steps 1 and 2
        me.ahead.set({w.o}, b, e);
        return;
      case 1: {  // RoPE; this position's key and value into the cache
        const auto [k0, k1] = share(s.kv_heads, t, size);
        for (int64_t kh = k0; kh < k1; ++kh) {
          ops::detail::rope_row_cpu(ptr(s.k) + kh * d, cos, sin, d, l.kb + (kh * l.capacity + past) * d, isa);
          std::memcpy(l.vb + (kh * l.capacity + past) * d, ptr(s.v) + kh * d, sizeof(T) * static_cast<size_t>(d));
        }
        for (int64_t qh = h0; qh < h1; ++qh) {
          ops::detail::rope_row_cpu(ptr(s.q) + qh * d, cos, sin, d, ptr(s.q_rot) + qh * d, isa);
        }
        return;
      }
      case 2:  // attention over positions [0, past]
        me.attention.resize(static_cast<size_t>(len + d));
        for (int64_t qh = h0; qh < h1; ++qh) {
          const int64_t kh = qh / group;
          ops::detail::decode_attention_row_cpu(ptr(s.q_rot) + qh * d, l.kb + kh * l.capacity * d,
                                                l.vb + kh * l.capacity * d, d, d, l.allowed, len, d, l.scale,
                                                me.attention.data(), ptr(s.attn) + qh * d, isa);
        }
        return;
      case 3:  // o_proj and the residual h = x + o, each thread on its own rows
        std::tie(b, e) = project(me, ptr(s.attn), s.heads * d, {{w.o, ptr(s.o)}}, t, size);
        add(l.in, ptr(s.o), ptr(s.h), b, e);
        std::tie(b, e) = share(s.intermediate, t, size, 16);
        me.ahead.set({w.gate, w.up}, b, e, /*same_rows=*/true);
        return;
      case 4:  // post-attention norm (every thread), gate and up on the same rows, SwiGLU of those rows
        norm_weight<T>(w.post_attention_norm, norm_w);
        rms_norm_row(ptr(s.h), norm_w, static_cast<float>(w.eps), normed);
        me.gemv.prepare(gemv, normed, s.dtype, hidden, isa);
        std::tie(b, e) = share(s.intermediate, t, size, 16);
        if (b < e) {
          me.gemv.rows(*w.gate, ptr(s.gate), b, e);
          me.gemv.rows(*w.up, ptr(s.up), b, e);
          ops::detail::swiglu_range_cpu(ptr(s.gate), ptr(s.up), b, e, ptr(s.act), isa);
        }
        std::tie(b, e) = share(hidden, t, size, 16);
        me.ahead.set({w.down}, b, e);
        return;
      default:  // down_proj and the residual, out = h + down
        std::tie(b, e) = project(me, ptr(s.act), s.intermediate, {{w.down, ptr(s.down)}}, t, size);
        add(ptr(s.h), ptr(s.down), l.out, b, e);
        return;
    }
  }

  // Every step of every layer on member t. A step that throws records the first error and the member skips its later
  // steps, but still meets every barrier, so the team never waits on it.
  void run(int t, int size, std::atomic<bool>& failed, std::exception_ptr& error) const {
    Ahead& ahead = s.threads[static_cast<size_t>(t)].ahead;
    for (size_t li = 0; li < layers.size(); ++li) {
      for (int i = 0; i < kSteps; ++i) {
        if (!failed.load()) {
          try {
            step(layers[li], i, t, size);
            if (i + 1 == kSteps && li + 1 < layers.size()) ahead_qkv(ahead, *layers[li + 1].w, t, size);
          } catch (...) {
            if (!failed.exchange(true)) error = std::current_exception();
          }
        }
        if (i + 1 < kSteps || li + 1 < layers.size()) team_barrier.wait(size, ahead);
      }
    }
  }

  void rms_norm_row(const T* in, const float* weight, float eps, T* normed) const {
    ops::detail::rms_norm_row_cpu(in, weight, s.hidden, eps, normed, isa);
  }
};

}  // namespace

torch::Tensor decode_layer_cpu(const DecodeLayerWeights& w, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& mask, torch::Tensor& kb,
                               torch::Tensor& vb, int64_t past) {
  return decode_layers_cpu({DecodeLayerStep{&w, mask, &kb, &vb}}, x, cos, sin, past);
}

torch::Tensor decode_layers_cpu(const std::vector<DecodeLayerStep>& layers, const torch::Tensor& x,
                                const torch::Tensor& cos, const torch::Tensor& sin, int64_t past) {
  TORCH_CHECK(!layers.empty(), "decode_layers_cpu: no layers");
  const torch::ScalarType dt = x.scalar_type();
  const int64_t hidden = x.size(-1), len = past + 1;
  const DecodeLayerWeights& w0 = *layers[0].w;
  for (const DecodeLayerStep& l : layers) {
    const DecodeLayerWeights& w = *l.w;
    const torch::Tensor &kb = *l.kb, &vb = *l.vb;
    TORCH_CHECK(cpu_of(kb, dt) && cpu_of(vb, dt) && kb.dim() == 4 && kb.size(0) == 1 && kb.size(1) == w.kv_heads &&
                    kb.size(2) > past && kb.size(3) == w.head_dim && vb.sizes() == kb.sizes(),
                "decode_layer_cpu: cache buffers ", kb.sizes(), " / ", vb.sizes(), " cannot take position ", past);
    TORCH_CHECK(!l.mask.defined() || l.mask.size(3) == len, "decode_layer_cpu: mask of ", l.mask.size(3), " keys for ",
                len, " positions");
    TORCH_CHECK(w.q->shape[0] == w.heads * w.head_dim && w.k->shape[0] == w.kv_heads * w.head_dim &&
                    w.v->shape[0] == w.kv_heads * w.head_dim && w.o->shape[1] == w.heads * w.head_dim &&
                    w.o->shape[0] == hidden && w.gate->shape[1] == hidden && w.up->shape == w.gate->shape &&
                    w.down->shape[1] == w.gate->shape[0] && w.down->shape[0] == hidden && w.q->shape[1] == hidden &&
                    w.heads % w.kv_heads == 0,
                "decode_layer_cpu: projection shapes do not match the hidden size and heads");
    TORCH_CHECK(w.heads == w0.heads && w.kv_heads == w0.kv_heads && w.head_dim == w0.head_dim &&
                    w.gate->shape[0] == w0.gate->shape[0],
                "decode_layers_cpu: the layers differ in heads or intermediate size");
    TORCH_CHECK(norm_weight_fits(w.input_norm, hidden) && norm_weight_fits(w.post_attention_norm, hidden),
                "decode_layer_cpu: norm weights must be contiguous fp32, bf16 or fp16 CPU tensors of ", hidden,
                " elements");
  }
  const int team = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  thread_local Scratch s;
  s.shape(w0, hidden, dt, team);
  TeamBarrier team_barrier;
  torch::Tensor result;
  const auto call = [&](auto tag) {
    using T = decltype(tag);
    std::vector<LayerPtrs<T>> ptrs;
    const T* in = static_cast<const T*>(x.data_ptr());
    for (const DecodeLayerStep& l : layers) {
      result = s.out[s.next];  // each layer writes the buffer its input is not in
      s.next ^= 1;
      const DecodeLayerWeights& w = *l.w;
      const double scale = w.scale > 0 ? w.scale : 1.0 / std::sqrt(static_cast<double>(w.head_dim));
      ptrs.push_back({&w, l.mask.defined() ? l.mask.data_ptr<bool>() : nullptr, static_cast<T*>(l.kb->data_ptr()),
                      static_cast<T*>(l.vb->data_ptr()), l.kb->size(2), static_cast<float>(scale), in,
                      static_cast<T*>(result.data_ptr())});
      in = static_cast<const T*>(result.data_ptr());
    }
    const TokenCall<T> c{ptrs,
                         s,
                         static_cast<const T*>(cos.data_ptr()),
                         static_cast<const T*>(sin.data_ptr()),
                         past,
                         quant::cpu_gemv(),
                         active_isa(),
                         team_barrier};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    run_team(team, [&](int t, int size) { c.run(t, size, failed, error); });  // size <= team
    if (error) std::rethrow_exception(error);
  };
  if (dt == torch::kFloat32) {
    call(float{});
  } else {
    call(c10::BFloat16{});
  }
  return result;
}

}  // namespace qlora::model
