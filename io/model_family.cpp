// The decoder families: which config.json names them, what each does differently (FamilyTraits), and the tensors
// of one layer (projections and norms) that follow from it. Semantics as in transformers' modeling_<family>.py.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "io/config_keys.h"
#include "io/hf_config.h"
#include "io/hf_config_impl.h"

namespace qlora::io {

namespace {

using detail::KeyReader;
using nlohmann::json;

struct FamilyName {
  Family family;
  const char* model_type;
  const char* architecture;
};

const FamilyName kFamilies[] = {
    {Family::kLlama, "llama", "LlamaForCausalLM"},    {Family::kMistral, "mistral", "MistralForCausalLM"},
    {Family::kQwen2, "qwen2", "Qwen2ForCausalLM"},    {Family::kQwen3, "qwen3", "Qwen3ForCausalLM"},
    {Family::kGemma2, "gemma2", "Gemma2ForCausalLM"}, {Family::kPhi3, "phi3", "Phi3ForCausalLM"},
};

const FamilyName* by_architecture(const std::string& arch) {
  for (const auto& f : kFamilies) {
    if (arch == f.architecture) return &f;
  }
  return nullptr;
}

const FamilyName* by_model_type(const std::string& type) {
  for (const auto& f : kFamilies) {
    if (type == f.model_type) return &f;
  }
  return nullptr;
}

// Which layers use the sliding window: `layer_types` when given, else the family's rule.
void parse_sliding_window(const json& j, const KeyReader& r, LlamaConfig& c) {
  const int64_t n = c.num_hidden_layers;
  c.sliding_window = 0;
  c.sliding_layers.clear();
  bool enabled = r.has("sliding_window");
  if (c.family == Family::kQwen2 || c.family == Family::kQwen3)
    enabled = enabled && r.get_bool("use_sliding_window", false);
  if (c.family == Family::kLlama) enabled = false;  // LlamaConfig has no sliding window
  if (!enabled) return;
  c.sliding_window = r.get_positive("sliding_window", 0);
  if (r.has("layer_types")) {
    const json& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int64_t>(lt.size()) != n) {
      r.fail("layer_types", "must be a list of num_hidden_layers (" + std::to_string(n) + ") strings (got " +
                                detail::describe(lt) + ")");
    }
    for (const auto& t : lt) {
      const std::string s = t.is_string() ? t.get<std::string>() : "";
      if (s != "sliding_attention" && s != "full_attention") {
        r.fail("layer_types",
               "entries must be \"sliding_attention\" or \"full_attention\" (got " + detail::describe(t) + ")");
      }
      c.sliding_layers.push_back(s == "sliding_attention");
    }
    return;
  }
  const int64_t max_window_layers = r.get_int("max_window_layers", 0);
  for (int64_t i = 0; i < n; ++i) {
    bool sliding = true;                                    // Mistral, Phi-3: every layer
    if (c.family == Family::kGemma2) sliding = i % 2 == 0;  // Gemma 2: layers 0, 2, 4, ...
    if (c.family == Family::kQwen2 || c.family == Family::kQwen3) sliding = i >= max_window_layers;
    c.sliding_layers.push_back(sliding);
  }
}

// Soft-capping values: a positive number or null/absent (off).
double get_cap(const KeyReader& r, const std::string& key, double def) {
  const double v = r.get_double(key, def);
  if (v < 0) r.fail(key, "must be positive or null");
  return v;
}

void parse_traits(const KeyReader& r, LlamaConfig& c) {
  FamilyTraits& t = c.traits;
  t = FamilyTraits{};
  switch (c.family) {
    case Family::kLlama:
      t.qkv_bias = t.o_bias = r.get_bool("attention_bias", false);
      t.mlp_bias = r.get_bool("mlp_bias", false);
      break;
    case Family::kMistral:
      break;
    case Family::kQwen2:
      t.qkv_bias = true;
      break;
    case Family::kQwen3:
      t.qk_norm = true;
      t.qkv_bias = t.o_bias = r.get_bool("attention_bias", false);
      break;
    case Family::kGemma2:
      t.norm_one_plus = t.scale_embeddings = t.sandwich_norms = true;
      t.qkv_bias = t.o_bias = r.get_bool("attention_bias", false);
      // An explicit null turns capping off; absent keys take transformers' Gemma2Config defaults.
      t.attn_softcap = r.has("attn_logit_softcapping")             ? get_cap(r, "attn_logit_softcapping", 0)
                       : r.contains_null("attn_logit_softcapping") ? 0.0
                                                                   : 50.0;
      t.final_softcap = r.has("final_logit_softcapping")             ? get_cap(r, "final_logit_softcapping", 0)
                        : r.contains_null("final_logit_softcapping") ? 0.0
                                                                     : 30.0;
      t.query_pre_attn_scalar = r.get_double("query_pre_attn_scalar", 256);
      if (t.query_pre_attn_scalar <= 0) r.fail("query_pre_attn_scalar", "must be positive");
      break;
    case Family::kPhi3:
      t.fused_projections = true;
      break;
  }
}

}  // namespace

const char* family_name(Family f) {
  for (const auto& n : kFamilies) {
    if (n.family == f) return n.model_type;
  }
  return "?";
}

const char* supported_architectures() {
  return "LlamaForCausalLM (Llama 1/2/3, TinyLlama), MistralForCausalLM, Qwen2ForCausalLM (Qwen2, Qwen2.5), "
         "Qwen3ForCausalLM, Gemma2ForCausalLM, Phi3ForCausalLM (Phi-3)";
}

void parse_family(const json& j, const KeyReader& r, LlamaConfig& c) {
  std::string arch;
  if (r.has("architectures")) {
    const json& a = j["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string()) {
      r.fail("architectures", "must be a non-empty list of strings (got " + detail::describe(a) + ")");
    }
    arch = a[0].get<std::string>();
  }
  const std::string model_type = r.get_string("model_type", "");
  const FamilyName* f = nullptr;
  if (arch.empty()) {
    if (model_type.empty()) r.fail("architectures", "missing (and no model_type either)", "is this an HF config.json?");
    f = by_model_type(model_type);
    if (!f) {
      r.fail("model_type", "unsupported model type '" + model_type + "'",
             std::string("supported: llama, mistral, qwen2, qwen3, gemma2, phi3 (") + supported_architectures() + ")");
    }
  } else {
    f = by_architecture(arch);
    if (!f) {
      r.fail("architectures", "unsupported architecture '" + arch + "'",
             std::string("supported: ") + supported_architectures());
    }
    if (!model_type.empty() && model_type != f->model_type) {
      r.fail("model_type", "model type '" + model_type + "' does not match architecture " + arch + " (expected '" +
                               f->model_type + "')");
    }
  }
  c.family = f->family;
  c.architecture = f->architecture;
  c.model_type = f->model_type;
}

void parse_family_details(const json& j, const KeyReader& r, LlamaConfig& c) {
  parse_traits(r, c);
  // Gemma names its activation `hidden_activation` (older configs: `hidden_act`).
  const std::string act_key =
      c.family == Family::kGemma2 && r.has("hidden_activation") ? "hidden_activation" : "hidden_act";
  c.hidden_act = r.get_string(act_key, c.family == Family::kGemma2 ? "gelu_pytorch_tanh" : "silu");
  const bool gemma = c.family == Family::kGemma2;
  if (c.hidden_act != "silu" && !(gemma && (c.hidden_act == "gelu_pytorch_tanh" || c.hidden_act == "gelu"))) {
    r.fail(act_key, "unsupported activation '" + c.hidden_act + "'",
           gemma ? "Gemma 2 uses gelu_pytorch_tanh" : "this family uses silu");
  }
  if (c.hidden_act == "gelu") c.hidden_act = "gelu_pytorch_tanh";  // transformers' Gemma maps gelu to the tanh form
  parse_sliding_window(j, r, c);
}

std::vector<ProjectionSpec> layer_projections(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, im = c.intermediate_size;
  const FamilyTraits& t = c.traits;
  if (t.fused_projections) {
    return {{"self_attn", "qkv_proj", c.q_dim() + 2 * c.kv_dim(), h, t.qkv_bias},
            {"self_attn", "o_proj", h, c.q_dim(), t.o_bias},
            {"mlp", "gate_up_proj", 2 * im, h, t.mlp_bias},
            {"mlp", "down_proj", h, im, t.mlp_bias}};
  }
  return {{"self_attn", "q_proj", c.q_dim(), h, t.qkv_bias},
          {"self_attn", "k_proj", c.kv_dim(), h, t.qkv_bias},
          {"self_attn", "v_proj", c.kv_dim(), h, t.qkv_bias},
          {"self_attn", "o_proj", h, c.q_dim(), t.o_bias},
          {"mlp", "gate_proj", im, h, t.mlp_bias},
          {"mlp", "up_proj", im, h, t.mlp_bias},
          {"mlp", "down_proj", h, im, t.mlp_bias}};
}

std::vector<NormSpec> layer_norms(const LlamaConfig& c) {
  std::vector<std::pair<const char*, int64_t>> names = {{"input_layernorm", c.hidden_size},
                                                        {"post_attention_layernorm", c.hidden_size}};
  if (c.traits.sandwich_norms) {
    names.emplace_back("pre_feedforward_layernorm", c.hidden_size);
    names.emplace_back("post_feedforward_layernorm", c.hidden_size);
  }
  if (c.traits.qk_norm) {
    names.emplace_back("self_attn.q_norm", c.head_dim);
    names.emplace_back("self_attn.k_norm", c.head_dim);
  }
  std::vector<NormSpec> out(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    out[i].path = names[i].first;
    out[i].size = names[i].second;
  }
  return out;
}

const std::vector<std::string>& llama_projection_names() {
  static const std::vector<std::string> kNames = {"q_proj",  "k_proj",    "v_proj",   "o_proj",      "gate_proj",
                                                  "up_proj", "down_proj", "qkv_proj", "gate_up_proj"};
  return kNames;
}

}  // namespace qlora::io
