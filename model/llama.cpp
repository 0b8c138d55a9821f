#include "model/llama.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "common/labels.h"
#include "model/decode_layer.h"
#include "ops/activation_checkpoint.h"
#include "ops/attention.h"
#include "ops/fused_ops.h"
#include "ops/rope.h"

namespace qlora::model {
namespace {

// A module holding one frozen "weight" tensor (embedding, norm), so HF names come out of named_parameters().
struct WeightHolderImpl : torch::nn::Module {
  explicit WeightHolderImpl(torch::Tensor w) { weight = register_parameter("weight", w, /*requires_grad=*/false); }
  torch::Tensor weight;
};

torch::Tensor placeholder(int64_t out, int64_t in, torch::ScalarType dtype) {
  // Never touched before load_model replaces it, so it costs address space, not RSS.
  return torch::empty({out, in}, torch::TensorOptions().dtype(dtype));
}

// RMSNorm of the family: Llama's (ops::rms_norm: normalized, rounded, times weight) or Gemma's (normalized times
// 1 + weight, in fp32, then rounded).
torch::Tensor family_norm(const io::LlamaConfig& c, const torch::Tensor& x, const torch::Tensor& weight) {
  if (!c.traits.norm_one_plus) return ops::rms_norm(x, weight, c.rms_norm_eps);
  torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor n = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + c.rms_norm_eps);
  return (n * (1.0 + weight.to(torch::kFloat32))).to(x.scalar_type());
}

// Makes layer `layer`'s cache buffers hold at least `need` positions of keys / values shaped (B, nKV, *, d) like k
// and v (allocated, or grown to at least double, keeping the positions written) and checks that they take them.
void cache_make_room(KVCache& c, size_t layer, const torch::Tensor& k, const torch::Tensor& v, int64_t need) {
  const int64_t past = c.filled;
  torch::Tensor& kb = c.k[layer];
  torch::Tensor& vb = c.v[layer];
  if (!kb.defined() || kb.size(2) < need) {
    const int64_t cap = std::max({need, c.reserved, kb.defined() ? 2 * kb.size(2) : int64_t{0}});
    auto grow = [&](torch::Tensor& buf, const torch::Tensor& like) {
      torch::Tensor bigger = torch::empty({like.size(0), like.size(1), cap, like.size(3)}, like.options());
      if (buf.defined() && past > 0) bigger.narrow(2, 0, past).copy_(buf.narrow(2, 0, past));
      buf = bigger;
    };
    grow(kb, k);
    grow(vb, v);
  }
  TORCH_CHECK(kb.size(0) == k.size(0) && kb.size(1) == k.size(1) && kb.size(3) == k.size(3) &&
                  kb.scalar_type() == k.scalar_type(),
              "KVCache: cached ", kb.sizes(), " cannot take keys ", k.sizes(), " (a new batch needs a new cache)");
}

// Writes k / v (B, nKV, T, d) at positions [past, past + T) of layer `layer`'s cache buffers and returns views of
// positions [0, past + T) of them.
std::pair<torch::Tensor, torch::Tensor> cache_append(KVCache& c, size_t layer, const torch::Tensor& k,
                                                     const torch::Tensor& v) {
  TORCH_CHECK(!torch::GradMode::is_enabled() || !(k.requires_grad() || v.requires_grad()),
              "KVCache: no autograd through the cache (run generation under NoGradGuard or InferenceMode)");
  const int64_t past = c.filled, t = k.size(2), need = past + t;
  cache_make_room(c, layer, k, v, need);
  torch::Tensor& kb = c.k[layer];
  torch::Tensor& vb = c.v[layer];
  kb.narrow(2, past, t).copy_(k);
  vb.narrow(2, past, t).copy_(v);
  return {kb.narrow(2, 0, need), vb.narrow(2, 0, need)};
}

// One decoder layer; the module tree mirrors HF: self_attn.<projections> (and q_norm/k_norm), mlp.<projections>,
// the norms. Which projections and norms a family has comes from io::layer_projections / io::layer_norms.
struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const io::LlamaConfig& c, int64_t layer_index, torch::ScalarType dtype)
      : config(c), sliding(c.layer_is_sliding(layer_index)) {
    self_attn = register_module("self_attn", std::make_shared<torch::nn::Module>());
    mlp = register_module("mlp", std::make_shared<torch::nn::Module>());
    for (const auto& p : io::layer_projections(c)) {
      torch::Tensor bias = p.bias ? torch::zeros({p.out}, torch::TensorOptions().dtype(dtype)) : torch::Tensor();
      LinearLayerPtr lin = FrozenLinearImpl::dense(placeholder(p.out, p.in, dtype), bias);
      group(p.group)->register_module(p.name, lin);
      linears[p.name] = lin;
      groups[p.name] = p.group;
    }
    // Gemma stores norm weights as offsets from 1: zeros are the identity there.
    const float identity = c.traits.norm_one_plus ? 0.0f : 1.0f;
    for (const auto& n : io::layer_norms(c)) {
      auto w = torch::full({n.size}, identity, torch::TensorOptions().dtype(dtype));
      const auto dot = n.path.find('.');
      auto holder = std::make_shared<WeightHolderImpl>(w);
      if (dot == std::string::npos) {
        register_module(n.path, holder);
      } else {
        group(n.path.substr(0, dot))->register_module(n.path.substr(dot + 1), holder);
      }
      norms[n.path] = holder;
    }
  }

  std::shared_ptr<torch::nn::Module> group(const std::string& name) { return name == "self_attn" ? self_attn : mlp; }

  void replace(const std::string& proj, LinearLayerPtr layer) {
    auto it = linears.find(proj);
    TORCH_CHECK(it != linears.end(), "unknown projection ", proj);
    group(groups.at(proj))->replace_module(proj, layer);
    it->second = std::move(layer);
    std::lock_guard<std::mutex> lock(decode_mutex);
    decode_checked = false;
  }

  // The layer as decode_layer_cpu takes it, or none: a family trait it does not compute, or a projection that is
  // not a frozen 4-bit one without bias (dense, or with an adapter). Looked up once per set of projections; a copy,
  // so that threads decoding with one model share nothing but the lookup.
  std::optional<DecodeLayerWeights> decode_weights() {
    std::lock_guard<std::mutex> lock(decode_mutex);
    if (!decode_checked) {
      decode_checked = true;
      decode.reset();
      const auto& tr = config.traits;
      if (tr.norm_one_plus || tr.qk_norm || tr.sandwich_norms || tr.fused_projections || tr.attn_softcap > 0 ||
          config.hidden_act != "silu") {
        return std::nullopt;
      }
      auto frozen_4bit = [&](const char* name) -> const quant::QuantizedTensor* {
        auto f = std::dynamic_pointer_cast<FrozenLinearImpl>(linears.at(name));
        return f && f->is_quantized() && !f->bias().defined() ? &f->quantized_weight() : nullptr;
      };
      DecodeLayerWeights w;
      w.q = frozen_4bit("q_proj"), w.k = frozen_4bit("k_proj"), w.v = frozen_4bit("v_proj");
      w.o = frozen_4bit("o_proj"), w.gate = frozen_4bit("gate_proj"), w.up = frozen_4bit("up_proj");
      w.down = frozen_4bit("down_proj");
      for (const auto* p : {w.q, w.k, w.v, w.o, w.gate, w.up, w.down}) {
        if (p == nullptr) return std::nullopt;
      }
      w.eps = config.rms_norm_eps;
      w.heads = config.num_attention_heads, w.kv_heads = config.num_key_value_heads, w.head_dim = config.head_dim;
      w.scale = score_scale();
      decode = w;
    }
    if (!decode) return std::nullopt;
    DecodeLayerWeights w = *decode;
    w.input_norm = norms.at("input_layernorm")->weight;  // the current tensors (loading may swap them)
    w.post_attention_norm = norms.at("post_attention_layernorm")->weight;
    return w;
  }

  // The attention score scale of the family (Gemma's query_pre_attn_scalar), 0 for the default head_dim^-0.5.
  double score_scale() const {
    const double s = config.traits.query_pre_attn_scalar;
    return s > 0 ? 1.0 / std::sqrt(s) : 0.0;
  }

  torch::Tensor norm(const std::string& path, const torch::Tensor& x) {
    return family_norm(config, x, norms.at(path)->weight);
  }

  // n (B, T, H) -> q (B, nH, T, d), k and v (B, nKV, T, d), before RoPE.
  std::array<torch::Tensor, 3> project_qkv(const torch::Tensor& n) {
    const int64_t b = n.size(0), t = n.size(1), d = config.head_dim;
    torch::Tensor q, k, v;
    if (config.traits.fused_projections) {
      torch::Tensor qkv = linears.at("qkv_proj")->forward(n);
      q = qkv.narrow(-1, 0, config.q_dim());
      k = qkv.narrow(-1, config.q_dim(), config.kv_dim());
      v = qkv.narrow(-1, config.q_dim() + config.kv_dim(), config.kv_dim());
    } else {
      q = linears.at("q_proj")->forward(n);
      k = linears.at("k_proj")->forward(n);
      v = linears.at("v_proj")->forward(n);
    }
    q = q.reshape({b, t, config.num_attention_heads, d});
    k = k.reshape({b, t, config.num_key_value_heads, d});
    v = v.reshape({b, t, config.num_key_value_heads, d});
    if (config.traits.qk_norm) {  // Qwen3: per head, before RoPE
      q = norm("self_attn.q_norm", q);
      k = norm("self_attn.k_norm", k);
    }
    return {q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)};
  }

  torch::Tensor mlp_forward(const torch::Tensor& m) {
    torch::Tensor gate, up;
    if (config.traits.fused_projections) {
      torch::Tensor gu = linears.at("gate_up_proj")->forward(m);
      gate = gu.narrow(-1, 0, config.intermediate_size);
      up = gu.narrow(-1, config.intermediate_size, config.intermediate_size);
    } else {
      gate = linears.at("gate_proj")->forward(m);
      up = linears.at("up_proj")->forward(m);
    }
    torch::Tensor act = config.hidden_act == "silu" ? ops::swiglu(gate, up) : torch::gelu(gate, "tanh") * up;
    return linears.at("down_proj")->forward(act);
  }

  // The layer as decode_layer_cpu takes this step (one position, batch 1, with a cache), its cache buffers (slot
  // `index`) made to hold the position; none where the step takes the general path.
  std::optional<DecodeLayerWeights> fused_decode_step(const torch::Tensor& x, const torch::Tensor& cos,
                                                      const torch::Tensor& sin, const torch::Tensor& mask,
                                                      KVCache* cache, size_t index) {
    if (!cache || !cache->fused_decode || x.size(1) != 1 || (!mask.defined() && cache->filled != 0)) {
      return std::nullopt;  // an undefined mask means causal with no past
    }
    std::optional<DecodeLayerWeights> w = decode_weights();
    if (!w || !decode_layer_applies(*w, x, cos, sin, mask)) return std::nullopt;
    if (!cache->k[index].defined() || cache->k[index].size(2) <= cache->filled) {
      const auto like = torch::empty({1, w->kv_heads, 1, w->head_dim}, x.options());
      cache_make_room(*cache, index, like, like, cache->filled + 1);
    }
    return w;
  }

  // x: (B, T, H) -> (B, T, H). cos/sin: (B, T, d). mask: this layer's (full or sliding) mask. With a cache, this
  // layer's keys / values (B, nKV, T, d) are written at positions [cache->length(), + T) of its buffers (slot
  // `index`) and attention reads positions [0, cache->length() + T).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVCache* cache, size_t index) {
    const int64_t b = x.size(0), t = x.size(1);
    if (const std::optional<DecodeLayerWeights> w = fused_decode_step(x, cos, sin, mask, cache, index)) {
      ++cache->fused_layer_steps;
      return decode_layer_cpu(*w, x, cos, sin, mask, cache->k[index], cache->v[index], cache->filled);
    }
    auto [q, k, v] = project_qkv(norm("input_layernorm", x));
    q = ops::apply_rope(q, cos, sin);
    k = ops::apply_rope(k, cos, sin);
    if (cache) std::tie(k, v) = cache_append(*cache, index, k, v);
    const auto& tr = config.traits;
    torch::Tensor attn = ops::grouped_query_attention(q, k, v, mask, score_scale(), tr.attn_softcap);  // (B, nH, T, d)
    attn = linears.at("o_proj")->forward(attn.transpose(1, 2).reshape({b, t, config.q_dim()}));
    if (tr.sandwich_norms) {  // Gemma 2
      torch::Tensor h = x + norm("post_attention_layernorm", attn);
      return h + norm("post_feedforward_layernorm", mlp_forward(norm("pre_feedforward_layernorm", h)));
    }
    torch::Tensor h = x + attn;
    return h + mlp_forward(norm("post_attention_layernorm", h));
  }

  io::LlamaConfig config;
  bool sliding = false;  // this layer attends within the sliding window
  std::shared_ptr<torch::nn::Module> self_attn, mlp;
  std::map<std::string, std::shared_ptr<WeightHolderImpl>> norms;  // by path under the layer
  std::map<std::string, LinearLayerPtr> linears;                   // by projection name
  std::map<std::string, std::string> groups;                       // projection name -> "self_attn" | "mlp"
  std::mutex decode_mutex;                                         // guards the two below
  bool decode_checked = false;                                     // decode_weights() looked at the projections
  std::optional<DecodeLayerWeights> decode;                        // what it found (none: the general path)
};

}  // namespace

struct LlamaModelImpl::Impl {
  std::shared_ptr<torch::nn::Module> root;  // "model"
  std::shared_ptr<WeightHolderImpl> embed_tokens, norm;
  std::vector<std::shared_ptr<DecoderLayerImpl>> layers;
  LinearLayerPtr lm_head;  // null when tied to the embedding
  torch::Tensor inv_freq;  // fp32 (d/2), moved lazily to the model's device
  bool checkpointing = false;
  LayerHooks hooks;
};

LlamaModelImpl::LlamaModelImpl(io::LlamaConfig config, torch::ScalarType compute_dtype)
    : impl_(std::make_shared<Impl>()), config_(std::move(config)), compute_dtype_(compute_dtype) {
  TORCH_CHECK(compute_dtype == torch::kBFloat16 || compute_dtype == torch::kFloat16 || compute_dtype == torch::kFloat32,
              "compute dtype must be bf16, fp16 or fp32");
  auto& m = *impl_;
  const auto opts = torch::TensorOptions().dtype(compute_dtype);
  m.root = register_module("model", std::make_shared<torch::nn::Module>());
  m.embed_tokens = m.root->register_module("embed_tokens", std::make_shared<WeightHolderImpl>(torch::empty(
                                                               {config_.vocab_size, config_.hidden_size}, opts)));
  auto layer_list = m.root->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    auto layer = std::make_shared<DecoderLayerImpl>(config_, i, compute_dtype);
    layer_list->push_back(layer);
    m.layers.push_back(layer);
  }
  m.norm = m.root->register_module("norm", std::make_shared<WeightHolderImpl>(torch::full(
                                               {config_.hidden_size}, config_.traits.norm_one_plus ? 0.0 : 1.0, opts)));
  if (!config_.tie_word_embeddings) {
    m.lm_head = register_module(
        "lm_head",
        LinearLayerPtr(FrozenLinearImpl::dense(placeholder(config_.vocab_size, config_.hidden_size, compute_dtype))));
  }
  m.inv_freq = ops::rope_inv_freq(config_);
}

torch::Device LlamaModelImpl::device() const {
  return impl_->embed_tokens->weight.device();
}

torch::Tensor LlamaModelImpl::forward_hidden(const torch::Tensor& input_ids, const ForwardInputs& in, KVCache* cache) {
  auto& m = *impl_;
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be (B, T), got ", input_ids.sizes());
  const torch::Device dev = device();
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  const int64_t past = cache ? cache->length() : 0;
  if (cache && cache->k.empty()) {
    cache->k.resize(m.layers.size());
    cache->v.resize(m.layers.size());
  }
  torch::Tensor ids = input_ids.to(dev, torch::kInt64);
  torch::Tensor pos = in.position_ids.defined()
                          ? in.position_ids.to(dev, torch::kInt64)
                          : torch::arange(past, past + t, torch::TensorOptions().device(dev).dtype(torch::kInt64))
                                .unsqueeze(0)
                                .expand({b, t});
  if (m.inv_freq.device() != dev) m.inv_freq = m.inv_freq.to(dev);
  auto [cos, sin] = ops::rope_cos_sin(m.inv_freq, pos, compute_dtype_);
  torch::Tensor mask = ops::build_attention_mask(b, t, past, in.attention_mask, in.segment_ids, dev);
  torch::Tensor sliding_mask;  // for the layers with a sliding window (Mistral, Gemma 2, ...)
  if (config_.sliding_window > 0) {
    sliding_mask =
        ops::build_attention_mask(b, t, past, in.attention_mask, in.segment_ids, dev, config_.sliding_window);
  }

  torch::Tensor h = torch::embedding(m.embed_tokens->weight, ids).to(compute_dtype_);  // (B, T, H)
  if (config_.traits.scale_embeddings) {
    // Gemma: times sqrt(hidden_size) rounded to the compute dtype first, as transformers does.
    h = h * torch::scalar_tensor(std::sqrt(static_cast<double>(config_.hidden_size)), h.options());
  }
  const bool ckpt = m.checkpointing && !cache && torch::GradMode::is_enabled();
  const LayerHooks hooks = m.hooks;  // copied: the recompute in backward runs with the hooks of this forward
  bool layers_done = false;
  if (cache && t == 1 && !hooks.before && !hooks.after) {
    // Batch-1 decoding on the CPU: every layer in one call (one parallel region a token) where all of them take it.
    std::vector<DecodeLayerWeights> weights;
    weights.reserve(m.layers.size());  // never reallocated: steps point into it
    std::vector<DecodeLayerStep> steps;
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const torch::Tensor& layer_mask = m.layers[i]->sliding ? sliding_mask : mask;
      std::optional<DecodeLayerWeights> w = m.layers[i]->fused_decode_step(h, cos, sin, layer_mask, cache, i);
      if (!w) break;
      weights.push_back(std::move(*w));
      steps.push_back({&weights.back(), layer_mask, &cache->k[i], &cache->v[i]});
    }
    if (steps.size() == m.layers.size()) {
      h = decode_layers_cpu(steps, h, cos, sin, past);
      cache->fused_layer_steps += static_cast<int64_t>(steps.size());
      layers_done = true;
    }
  }
  for (size_t i = 0; !layers_done && i < m.layers.size(); ++i) {
    auto layer = m.layers[i];
    const auto idx = static_cast<int64_t>(i);
    const torch::Tensor& layer_mask = layer->sliding ? sliding_mask : mask;
    if (ckpt) {
      h = ops::checkpoint(
          [layer, cos = cos, sin = sin, mask = layer_mask, hooks, idx](const std::vector<torch::Tensor>& xs) {
            // Grad mode is off in the checkpointed forward and on in the recompute.
            const LayerPass pass =
                torch::GradMode::is_enabled() ? LayerPass::kRecompute : LayerPass::kForwardCheckpoint;
            if (hooks.before) hooks.before(idx, pass);
            torch::Tensor out = layer->forward(xs[0], cos, sin, mask, nullptr, 0);
            if (hooks.after) hooks.after(idx, pass);
            return std::vector<torch::Tensor>{out};
          },
          {h})[0];
    } else {
      if (hooks.before) hooks.before(idx, LayerPass::kForward);
      h = layer->forward(h, cos, sin, layer_mask, cache, i);
      if (hooks.after) hooks.after(idx, LayerPass::kForward);
    }
  }
  if (cache) cache->filled = past + t;
  return family_norm(config_, h, m.norm->weight);
}

torch::Tensor LlamaModelImpl::head_logits(const torch::Tensor& hidden) {
  auto& m = *impl_;
  torch::Tensor lg = m.lm_head ? m.lm_head->forward(hidden)
                               : torch::nn::functional::linear(hidden, m.embed_tokens->weight.to(hidden.scalar_type()));
  const double cap = config_.traits.final_softcap;
  if (cap > 0) lg = torch::tanh(lg / cap) * cap;  // Gemma 2, in the compute dtype as transformers does
  return lg;
}

torch::Tensor LlamaModelImpl::logits(const torch::Tensor& hidden) {
  return head_logits(hidden).to(torch::kFloat32);
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& input_ids, const ForwardInputs& in, KVCache* cache) {
  return logits(forward_hidden(input_ids, in, cache));
}

std::pair<torch::Tensor, int64_t> LlamaModelImpl::causal_lm_loss(const torch::Tensor& input_ids,
                                                                 const torch::Tensor& labels, const ForwardInputs& in,
                                                                 int64_t chunk_tokens) {
  TORCH_CHECK(labels.sizes() == input_ids.sizes(), "labels ", labels.sizes(), " must match input_ids ",
              input_ids.sizes());
  TORCH_CHECK(chunk_tokens > 0, "chunk_tokens must be positive");
  torch::Tensor hidden = forward_hidden(input_ids, in);
  const int64_t b = hidden.size(0), t = hidden.size(1);
  if (t < 2) return {hidden.sum().to(torch::kFloat32) * 0.0, 0};
  // Logits at t predict the label at t + 1.
  torch::Tensor h = hidden.narrow(1, 0, t - 1);
  torch::Tensor y = labels.to(hidden.device(), torch::kInt64).narrow(1, 1, t - 1);
  const int64_t count = (y != kIgnoreIndex).sum().item<int64_t>();
  const int64_t chunk = std::max<int64_t>(1, chunk_tokens / b);
  const bool chunked = chunk < t - 1;
  torch::Tensor total;
  for (int64_t s = 0; s < t - 1; s += chunk) {
    const int64_t len = std::min(chunk, t - 1 - s);
    torch::Tensor yc = y.narrow(1, s, len).reshape({-1});
    auto chunk_loss = [this, yc](const std::vector<torch::Tensor>& xs) {
      // (B, len, V) in the compute dtype: the only logits alive at a time. The fused loss reads them in fp32
      // and writes their gradient in their own dtype (no fp32 logits or log-probs).
      // A contiguous chunk: LibTorch 2.x's matmul cannot fold a strided (B, len, H) slice into one mm and would
      // expand lm_head's weight to (B, H, V) for a bmm instead (a full copy of the weight per batch row).
      torch::Tensor lg = head_logits(xs[0].contiguous());
      return std::vector<torch::Tensor>{ops::cross_entropy_sum(lg.reshape({-1, lg.size(-1)}), yc, kIgnoreIndex)};
    };
    torch::Tensor hc = h.narrow(1, s, len);
    // Checkpointed when chunked, so backward also holds one chunk's logits at a time.
    torch::Tensor l = chunked ? ops::checkpoint(chunk_loss, {hc})[0] : chunk_loss({hc})[0];
    total = total.defined() ? total + l : l;
  }
  return {total, count};
}

std::vector<std::pair<std::string, LinearLayerPtr>> LlamaModelImpl::named_linears() const {
  std::vector<std::pair<std::string, LinearLayerPtr>> out;
  for (size_t i = 0; i < impl_->layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const auto& spec : io::layer_projections(config_)) {
      out.emplace_back(p + spec.path(), impl_->layers[i]->linears.at(spec.name));
    }
  }
  if (impl_->lm_head) out.emplace_back("lm_head", impl_->lm_head);
  return out;
}

void LlamaModelImpl::replace_linear(const std::string& hf_name, LinearLayerPtr layer) {
  TORCH_CHECK(layer, "replace_linear(", hf_name, "): null layer");
  if (hf_name == "lm_head") {
    TORCH_CHECK(impl_->lm_head, "replace_linear: lm_head is tied to the embedding in this model");
    replace_module("lm_head", layer);
    impl_->lm_head = std::move(layer);
    return;
  }
  const std::string prefix = "model.layers.";
  TORCH_CHECK(hf_name.rfind(prefix, 0) == 0, "replace_linear: unknown projection '", hf_name, "'");
  size_t dot = hf_name.find('.', prefix.size());
  TORCH_CHECK(dot != std::string::npos, "replace_linear: unknown projection '", hf_name, "'");
  const int64_t idx = std::stoll(hf_name.substr(prefix.size(), dot - prefix.size()));
  TORCH_CHECK(idx >= 0 && idx < static_cast<int64_t>(impl_->layers.size()), "replace_linear: layer out of range in '",
              hf_name, "'");
  const std::string rest = hf_name.substr(dot + 1);
  const size_t dot2 = rest.find('.');
  TORCH_CHECK(dot2 != std::string::npos, "replace_linear: unknown projection '", hf_name, "'");
  const std::string group = rest.substr(0, dot2), proj = rest.substr(dot2 + 1);
  const auto& groups = impl_->layers[idx]->groups;
  TORCH_CHECK(groups.count(proj) && groups.at(proj) == group, "replace_linear: unknown projection '", hf_name, "'");
  impl_->layers[idx]->replace(proj, std::move(layer));
}

void LlamaModelImpl::set_gradient_checkpointing(bool on) {
  impl_->checkpointing = on;
}
bool LlamaModelImpl::gradient_checkpointing() const {
  return impl_->checkpointing;
}
void LlamaModelImpl::set_layer_hooks(LayerHooks hooks) {
  impl_->hooks = std::move(hooks);
}

std::vector<std::pair<std::string, torch::Tensor>> LlamaModelImpl::named_dense_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", impl_->embed_tokens->weight);
  for (size_t i = 0; i < impl_->layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const auto& n : io::layer_norms(config_)) {
      out.emplace_back(p + n.path + ".weight", impl_->layers[i]->norms.at(n.path)->weight);
    }
    for (const auto& spec : io::layer_projections(config_)) {
      if (!spec.bias) continue;
      auto base = impl_->layers[i]->linears.at(spec.name)->frozen_base();
      if (base && base->bias().defined()) out.emplace_back(p + spec.path() + ".bias", base->bias());
    }
  }
  out.emplace_back("model.norm.weight", impl_->norm->weight);
  if (auto f = std::dynamic_pointer_cast<FrozenLinearImpl>(impl_->lm_head); f && !f->is_quantized()) {
    out.emplace_back("lm_head.weight", f->dense_weight_ref());
  }
  return out;
}

void LlamaModelImpl::init_weights(double stddev) {
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().dtype(compute_dtype_).device(device());
  const double norm_base = config_.traits.norm_one_plus ? 0.0 : 1.0;
  for (auto& [name, t] : named_dense_tensors()) {
    if (name.find("norm") != std::string::npos) {
      t.copy_(norm_base + 0.1 * torch::randn(t.sizes(), opts.dtype(torch::kFloat32)));
    } else {
      t.copy_(stddev * torch::randn(t.sizes(), opts.dtype(torch::kFloat32)));
    }
  }
  for (auto& [name, lin] : named_linears()) {
    if (name == "lm_head") continue;  // dense: filled above with the other dense tensors
    auto w = (stddev * torch::randn({lin->out_features(), lin->in_features()}, opts.dtype(torch::kFloat32)))
                 .to(compute_dtype_);
    torch::Tensor bias;
    if (auto f = lin->frozen_base(); f && f->bias().defined()) {
      bias = (stddev * torch::randn({lin->out_features()}, opts.dtype(torch::kFloat32))).to(compute_dtype_);
    }
    replace_linear(name, FrozenLinearImpl::dense(w, bias));
  }
}

}  // namespace qlora::model
