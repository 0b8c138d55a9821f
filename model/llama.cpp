#include "model/llama.h"

#include <map>

#include "common/error.h"
#include "common/labels.h"
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

// x: (..., H) -> (..., H): x * rsqrt(mean(x^2) + eps) in fp32, cast back, times weight (one fused pass on CPU).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return ops::rms_norm(x, weight, eps);
}

torch::Tensor placeholder(int64_t out, int64_t in, torch::ScalarType dtype) {
  // Never touched before load_model replaces it, so it costs address space, not RSS.
  return torch::empty({out, in}, torch::TensorOptions().dtype(dtype));
}

const std::vector<std::string> kAttnProjs = {"q_proj", "k_proj", "v_proj", "o_proj"};
const std::vector<std::string> kMlpProjs = {"gate_proj", "up_proj", "down_proj"};

// One decoder layer; module tree mirrors HF: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, norms.
struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const io::LlamaConfig& c, torch::ScalarType dtype) : config(c) {
    self_attn = register_module("self_attn", std::make_shared<torch::nn::Module>());
    mlp = register_module("mlp", std::make_shared<torch::nn::Module>());
    const int64_t h = c.hidden_size;
    std::map<std::string, std::pair<int64_t, int64_t>> shapes = {{"q_proj", {c.q_dim(), h}},
                                                                 {"k_proj", {c.kv_dim(), h}},
                                                                 {"v_proj", {c.kv_dim(), h}},
                                                                 {"o_proj", {h, c.q_dim()}},
                                                                 {"gate_proj", {c.intermediate_size, h}},
                                                                 {"up_proj", {c.intermediate_size, h}},
                                                                 {"down_proj", {h, c.intermediate_size}}};
    for (const auto& [name, shape] : shapes) {
      LinearLayerPtr lin = FrozenLinearImpl::dense(placeholder(shape.first, shape.second, dtype));
      const bool attn = std::find(kAttnProjs.begin(), kAttnProjs.end(), name) != kAttnProjs.end();
      (attn ? self_attn : mlp)->register_module(name, lin);
      linears[name] = lin;
    }
    auto ones = torch::ones({h}, torch::TensorOptions().dtype(dtype));
    input_layernorm = register_module("input_layernorm", std::make_shared<WeightHolderImpl>(ones));
    post_attention_layernorm =
        register_module("post_attention_layernorm", std::make_shared<WeightHolderImpl>(ones.clone()));
  }

  void replace(const std::string& proj, LinearLayerPtr layer) {
    auto it = linears.find(proj);
    TORCH_CHECK(it != linears.end(), "unknown projection ", proj);
    const bool attn = std::find(kAttnProjs.begin(), kAttnProjs.end(), proj) != kAttnProjs.end();
    (attn ? self_attn : mlp)->replace_module(proj, layer);
    it->second = std::move(layer);
  }

  // x: (B, T, H) -> (B, T, H). cos/sin: (B, T, d). cache slots (B, nKV, S, d) are appended to when given.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, torch::Tensor* k_cache, torch::Tensor* v_cache) {
    const int64_t b = x.size(0), t = x.size(1), d = config.head_dim;
    torch::Tensor n = rms_norm(x, input_layernorm->weight, config.rms_norm_eps);
    torch::Tensor q = linears["q_proj"]->forward(n).view({b, t, config.num_attention_heads, d}).transpose(1, 2);
    torch::Tensor k = linears["k_proj"]->forward(n).view({b, t, config.num_key_value_heads, d}).transpose(1, 2);
    torch::Tensor v = linears["v_proj"]->forward(n).view({b, t, config.num_key_value_heads, d}).transpose(1, 2);
    q = ops::apply_rope(q, cos, sin);
    k = ops::apply_rope(k, cos, sin);
    if (k_cache) {
      if (k_cache->defined()) {
        k = torch::cat({*k_cache, k}, 2);
        v = torch::cat({*v_cache, v}, 2);
      }
      *k_cache = k;
      *v_cache = v;
    }
    torch::Tensor attn = ops::grouped_query_attention(q, k, v, mask);  // (B, nH, T, d)
    attn = attn.transpose(1, 2).reshape({b, t, config.num_attention_heads * d});
    torch::Tensor h = x + linears["o_proj"]->forward(attn);
    torch::Tensor m = rms_norm(h, post_attention_layernorm->weight, config.rms_norm_eps);
    torch::Tensor act = ops::swiglu(linears["gate_proj"]->forward(m), linears["up_proj"]->forward(m));
    return h + linears["down_proj"]->forward(act);
  }

  io::LlamaConfig config;
  std::shared_ptr<torch::nn::Module> self_attn, mlp;
  std::shared_ptr<WeightHolderImpl> input_layernorm, post_attention_layernorm;
  std::map<std::string, LinearLayerPtr> linears;
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
    auto layer = std::make_shared<DecoderLayerImpl>(config_, compute_dtype);
    layer_list->push_back(layer);
    m.layers.push_back(layer);
  }
  m.norm =
      m.root->register_module("norm", std::make_shared<WeightHolderImpl>(torch::ones({config_.hidden_size}, opts)));
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

  torch::Tensor h = torch::embedding(m.embed_tokens->weight, ids).to(compute_dtype_);  // (B, T, H)
  const bool ckpt = m.checkpointing && !cache && torch::GradMode::is_enabled();
  const LayerHooks hooks = m.hooks;  // copied: the recompute in backward runs with the hooks of this forward
  for (size_t i = 0; i < m.layers.size(); ++i) {
    auto layer = m.layers[i];
    const auto idx = static_cast<int64_t>(i);
    if (ckpt) {
      h = ops::checkpoint(
          [layer, cos = cos, sin = sin, mask, hooks, idx](const std::vector<torch::Tensor>& xs) {
            // Grad mode is off in the checkpointed forward and on in the recompute.
            const LayerPass pass =
                torch::GradMode::is_enabled() ? LayerPass::kRecompute : LayerPass::kForwardCheckpoint;
            if (hooks.before) hooks.before(idx, pass);
            torch::Tensor out = layer->forward(xs[0], cos, sin, mask, nullptr, nullptr);
            if (hooks.after) hooks.after(idx, pass);
            return std::vector<torch::Tensor>{out};
          },
          {h})[0];
    } else {
      if (hooks.before) hooks.before(idx, LayerPass::kForward);
      h = layer->forward(h, cos, sin, mask, cache ? &cache->k[i] : nullptr, cache ? &cache->v[i] : nullptr);
      if (hooks.after) hooks.after(idx, LayerPass::kForward);
    }
  }
  return rms_norm(h, m.norm->weight, config_.rms_norm_eps);
}

torch::Tensor LlamaModelImpl::head_logits(const torch::Tensor& hidden) {
  auto& m = *impl_;
  if (m.lm_head) return m.lm_head->forward(hidden);
  return torch::nn::functional::linear(hidden, m.embed_tokens->weight.to(hidden.scalar_type()));
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
    for (const auto& n : kAttnProjs) out.emplace_back(p + "self_attn." + n, impl_->layers[i]->linears.at(n));
    for (const auto& n : kMlpProjs) out.emplace_back(p + "mlp." + n, impl_->layers[i]->linears.at(n));
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
  const auto& names = group == "self_attn" ? kAttnProjs : kMlpProjs;
  TORCH_CHECK((group == "self_attn" || group == "mlp") && std::find(names.begin(), names.end(), proj) != names.end(),
              "replace_linear: unknown projection '", hf_name, "'");
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
    out.emplace_back(p + "input_layernorm.weight", impl_->layers[i]->input_layernorm->weight);
    out.emplace_back(p + "post_attention_layernorm.weight", impl_->layers[i]->post_attention_layernorm->weight);
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
  for (auto& [name, t] : named_dense_tensors()) {
    if (name.find("norm") != std::string::npos) {
      t.copy_(1.0 + 0.1 * torch::randn(t.sizes(), opts.dtype(torch::kFloat32)));
    } else {
      t.copy_(stddev * torch::randn(t.sizes(), opts.dtype(torch::kFloat32)));
    }
  }
  for (auto& [name, lin] : named_linears()) {
    if (name == "lm_head") continue;  // dense: filled above with the other dense tensors
    auto w = (stddev * torch::randn({lin->out_features(), lin->in_features()}, opts.dtype(torch::kFloat32)))
                 .to(compute_dtype_);
    replace_linear(name, FrozenLinearImpl::dense(w));
  }
}

}  // namespace qlora::model
