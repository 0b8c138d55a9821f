#include "io/hf_config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "io/config_keys.h"
#include "io/hf_config_impl.h"

namespace qlora::io {

namespace {

using detail::describe;
using detail::KeyReader;
using nlohmann::json;

// "torch.bfloat16" -> "bfloat16"; validates the name.
std::string normalize_dtype(const KeyReader& r, const std::string& key, const std::string& value) {
  std::string s = value;
  if (s.rfind("torch.", 0) == 0) s = s.substr(6);
  if (s == "float32" || s == "float16" || s == "bfloat16") return s;
  if (s == "float") return "float32";
  if (s == "half") return "float16";
  r.fail(key, "unsupported dtype '" + value + "'", "use one of float32, float16, bfloat16");
}

// Parses a rope scaling object (old `rope_scaling` or new `rope_parameters`).
RopeScaling parse_rope(const json& j, const std::string& source, const std::string& key) {
  RopeScaling rs;
  if (!j.is_object())
    throw_file_error(source, "key '" + key + "': must be an object or null (got " + describe(j) + ")");
  KeyReader r(j, source, key + ".");
  std::string type = r.get_string("rope_type", r.get_string("type", "default"));
  if (type == "default" || type.empty()) return rs;
  if (type != "linear" && type != "llama3") {
    r.fail(j.contains("rope_type") ? "rope_type" : "type", "rope scaling type '" + type + "' is not supported",
           "supported types: default, linear, llama3 (yarn, dynamic, longrope, ntk are not supported yet)");
  }
  rs.type = type;
  if (!r.has("factor")) r.fail("factor", "missing (required for rope type '" + type + "')");
  rs.factor = r.get_double("factor", 1.0);
  if (rs.factor <= 0) r.fail("factor", "must be positive");
  if (type == "llama3") {
    rs.low_freq_factor = r.get_double("low_freq_factor", rs.low_freq_factor);
    rs.high_freq_factor = r.get_double("high_freq_factor", rs.high_freq_factor);
    rs.original_max_position_embeddings =
        r.get_positive("original_max_position_embeddings", rs.original_max_position_embeddings);
    if (rs.high_freq_factor <= rs.low_freq_factor) {
      r.fail("high_freq_factor", "must be greater than low_freq_factor");
    }
  }
  return rs;
}

BnbQuantConfig parse_bnb(const json& q, const std::string& source) {
  const std::string key = "quantization_config";
  if (!q.is_object()) throw_file_error(source, "key '" + key + "': must be an object");
  KeyReader r(q, source, key + ".");
  const std::string method = r.get_string("quant_method", "bitsandbytes");
  if (method != "bitsandbytes") {
    r.fail("quant_method", "quantization method '" + method + "' is not supported",
           "only bitsandbytes 4-bit (bnb-4bit) checkpoints can be loaded; use the unquantized model instead");
  }
  const bool in4 = r.get_bool("load_in_4bit", r.get_bool("_load_in_4bit", false));
  const bool in8 = r.get_bool("load_in_8bit", r.get_bool("_load_in_8bit", false));
  if (in8 || !in4) {
    r.fail("load_in_4bit", "only 4-bit bitsandbytes checkpoints are supported (load_in_8bit checkpoints are not)");
  }
  BnbQuantConfig c;
  // Defaults as in transformers' BitsAndBytesConfig.
  c.quant_type = r.get_string("bnb_4bit_quant_type", "fp4");
  if (c.quant_type != "nf4" && c.quant_type != "fp4") {
    r.fail("bnb_4bit_quant_type", "must be \"nf4\" or \"fp4\" (got \"" + c.quant_type + "\")");
  }
  c.double_quant = r.get_bool("bnb_4bit_use_double_quant", false);
  c.compute_dtype = normalize_dtype(r, "bnb_4bit_compute_dtype", r.get_string("bnb_4bit_compute_dtype", "float32"));
  const std::string storage = r.get_string("bnb_4bit_quant_storage", "uint8");
  if (storage != "uint8" && storage != "torch.uint8") {
    r.fail("bnb_4bit_quant_storage", "only uint8 quant storage is supported (got \"" + storage + "\")");
  }
  if (r.has("llm_int8_skip_modules")) {
    const json& s = q["llm_int8_skip_modules"];
    if (!s.is_array()) r.fail("llm_int8_skip_modules", "must be a list of module names or null");
    for (const auto& m : s) {
      if (!m.is_string()) r.fail("llm_int8_skip_modules", "must contain only strings");
      c.skip_modules.push_back(m.get<std::string>());
    }
  }
  return c;
}

}  // namespace

int64_t LlamaConfig::num_parameters() const {
  // In 128 bits and saturated: a hostile config.json's sizes can each pass their bounds and still multiply past
  // int64 (found by fuzz_hf_config).
  using Wide = __int128;
  const Wide h = hidden_size;
  Wide per_layer = 0;
  for (const auto& p : layer_projections(*this)) per_layer += Wide(p.out) * p.in + (p.bias ? p.out : 0);
  for (const auto& n : layer_norms(*this)) per_layer += n.size;
  const Wide embed = Wide(vocab_size) * h;
  const Wide total = embed + (tie_word_embeddings ? 0 : embed) + Wide(num_hidden_layers) * per_layer + h;
  constexpr Wide kMax = std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(total > kMax ? kMax : total);
}

namespace {

// Defaults of transformers' <Family>Config for keys a config.json may leave out.
struct SizeDefaults {
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads /* 0: = heads */, head_dim /* 0: hidden / heads */;
  int64_t max_positions;
  double rms_norm_eps;
  bool tie_embeddings;
};

SizeDefaults size_defaults(Family f) {
  switch (f) {
    case Family::kMistral:
      return {32000, 4096, 14336, 32, 32, 8, 0, 131072, 1e-6, false};
    case Family::kQwen2:
      return {151936, 4096, 22016, 32, 32, 32, 0, 32768, 1e-6, false};
    case Family::kQwen3:
      return {151936, 4096, 22016, 32, 32, 32, 128, 32768, 1e-6, false};
    case Family::kGemma2:
      return {256000, 2304, 9216, 26, 8, 4, 256, 8192, 1e-6, true};
    case Family::kPhi3:
      return {32064, 3072, 8192, 32, 32, 0, 0, 4096, 1e-5, false};
    case Family::kLlama:
      break;
  }
  return {32000, 4096, 11008, 32, 32, 0, 0, 2048, 1e-6, false};
}

// Sizes (defaults as in transformers' config classes).
void parse_sizes(KeyReader& r, LlamaConfig& c) {
  const SizeDefaults d = size_defaults(c.family);
  c.vocab_size = r.get_positive("vocab_size", d.vocab);
  c.hidden_size = r.get_positive("hidden_size", d.hidden);
  c.intermediate_size = r.get_positive("intermediate_size", d.intermediate);
  c.num_hidden_layers = r.get_positive("num_hidden_layers", d.layers);
  c.num_attention_heads = r.get_positive("num_attention_heads", d.heads);
  c.num_key_value_heads = r.get_positive("num_key_value_heads", d.kv_heads > 0 ? d.kv_heads : c.num_attention_heads);
  if (r.has("head_dim")) {
    c.head_dim = r.get_positive("head_dim", 0);
  } else if (d.head_dim > 0) {
    c.head_dim = d.head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      r.fail("num_attention_heads", std::to_string(c.num_attention_heads) + " heads do not divide hidden_size " +
                                        std::to_string(c.hidden_size));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    r.fail("head_dim", "must be even for rotary embeddings (got " + std::to_string(c.head_dim) + ")");
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    r.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_attention_heads));
  }
  // Sane maxima, far above any real model (Llama 3 405B: hidden 16384, intermediate 53248, 126 layers; vocabularies
  // up to ~262k), so that no product of sizes below can overflow or ask for absurd memory.
  constexpr int64_t kMaxSize = int64_t{1} << 24, kMaxLayers = int64_t{1} << 16;
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                               {"hidden_size", c.hidden_size},
                               {"intermediate_size", c.intermediate_size},
                               {"num_attention_heads", c.num_attention_heads},
                               {"num_key_value_heads", c.num_key_value_heads},
                               {"head_dim", c.head_dim},
                               {"num_hidden_layers", c.num_hidden_layers}}) {
    const int64_t limit = std::string_view(key) == "num_hidden_layers" ? kMaxLayers : kMaxSize;
    if (v > limit) r.fail(key, std::to_string(v) + " is beyond any real model (at most " + std::to_string(limit) + ")");
  }
  int64_t q_dim = 0;  // num_attention_heads x head_dim (q_dim(), the width of every attention projection)
  if (__builtin_mul_overflow(c.num_attention_heads, c.head_dim, &q_dim)) {
    r.fail("head_dim", "num_attention_heads x head_dim overflows (" + std::to_string(c.num_attention_heads) + " x " +
                           std::to_string(c.head_dim) + ")");
  }
  c.max_position_embeddings = r.get_positive("max_position_embeddings", d.max_positions);
  c.rms_norm_eps = r.get_double("rms_norm_eps", d.rms_norm_eps);
  if (c.rms_norm_eps <= 0) r.fail("rms_norm_eps", "must be positive");
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", d.tie_embeddings);
}

// RoPE: `rope_parameters` (newest transformers) or `rope_theta` + `rope_scaling`.
void parse_rope_section(const json& j, const std::string& source, KeyReader& r, LlamaConfig& c) {
  c.rope_theta = r.get_double("rope_theta", 10000.0);
  if (r.has("rope_parameters")) {
    const json& rp = j["rope_parameters"];
    c.rope_scaling = parse_rope(rp, source, "rope_parameters");
    if (rp.is_object()) c.rope_theta = KeyReader(rp, source, "rope_parameters.").get_double("rope_theta", c.rope_theta);
  } else if (r.has("rope_scaling")) {
    c.rope_scaling = parse_rope(j["rope_scaling"], source, "rope_scaling");
  }
  if (c.rope_theta <= 0) r.fail("rope_theta", "must be positive");
  // Partial rotary embeddings (Phi-3.5-MoE, Phi-4-mini and others) are not implemented: refused, never ignored.
  double partial = r.get_double("partial_rotary_factor", 1.0);
  if (r.has("rope_parameters") && j["rope_parameters"].is_object()) {
    partial = KeyReader(j["rope_parameters"], source, "rope_parameters.").get_double("partial_rotary_factor", partial);
  }
  if (partial != 1.0) {
    r.fail("partial_rotary_factor",
           "partial rotary embeddings (factor " + std::to_string(partial) + ") are not supported");
  }
}

// bos_token_id, eos_token_id (an integer or a list), pad_token_id.
void parse_special_tokens(const json& j, KeyReader& r, LlamaConfig& c) {
  // Special tokens.
  c.bos_token_id = r.get_int("bos_token_id", 1);
  if (r.has("eos_token_id")) {
    const json& e = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array() && !e.empty()) {
      for (const auto& v : e) {
        if (!v.is_number_integer())
          r.fail("eos_token_id", "must be an integer or a list of integers (got " + describe(e) + ")");
        c.eos_token_ids.push_back(v.get<int64_t>());
      }
    } else {
      r.fail("eos_token_id", "must be an integer or a non-empty list of integers (got " + describe(e) + ")");
    }
  }
  if (r.has("pad_token_id")) c.pad_token_id = r.get_int("pad_token_id", 0);
}

}  // namespace

LlamaConfig parse_llama_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw_file_error(source, "config is not a JSON object");
  KeyReader r(j, source);
  LlamaConfig c;
  parse_family(j, r, c);
  parse_sizes(r, c);
  parse_family_details(j, r, c);
  parse_rope_section(j, source, r, c);
  parse_special_tokens(j, r, c);
  // Weights dtype: transformers v5 writes `dtype`, older versions `torch_dtype`.
  if (r.has("dtype")) {
    c.torch_dtype = normalize_dtype(r, "dtype", r.get_string("dtype", ""));
  } else if (r.has("torch_dtype")) {
    c.torch_dtype = normalize_dtype(r, "torch_dtype", r.get_string("torch_dtype", ""));
  }

  if (r.has("quantization_config")) c.quantization = parse_bnb(j["quantization_config"], source);
  return c;
}

LlamaConfig load_llama_config(const fs::path& config_json) {
  return parse_llama_config(read_json_file(config_json), config_json.string());
}

namespace {

// The keys of config.json that only some families have.
void write_family_keys(const LlamaConfig& c, json& j) {
  const bool sliding = c.sliding_window > 0;
  json layer_types = json::array();
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layer_types.push_back(c.layer_is_sliding(i) ? "sliding_attention" : "full_attention");
  }
  switch (c.family) {
    case Family::kLlama:
      break;
    case Family::kMistral:
    case Family::kPhi3:
      j["sliding_window"] = sliding ? json(c.sliding_window) : json(nullptr);
      break;
    case Family::kQwen2:
    case Family::kQwen3:
      j["use_sliding_window"] = sliding;
      j["sliding_window"] = sliding ? json(c.sliding_window) : json(nullptr);
      j["max_window_layers"] = c.num_hidden_layers;
      if (sliding) j["layer_types"] = layer_types;
      break;
    case Family::kGemma2:
      j.erase("hidden_act");
      j["hidden_activation"] = c.hidden_act;
      j["query_pre_attn_scalar"] = c.traits.query_pre_attn_scalar;
      j["attn_logit_softcapping"] = c.traits.attn_softcap > 0 ? json(c.traits.attn_softcap) : json(nullptr);
      j["final_logit_softcapping"] = c.traits.final_softcap > 0 ? json(c.traits.final_softcap) : json(nullptr);
      j["sliding_window"] = sliding ? json(c.sliding_window) : json(4096);
      j["layer_types"] = sliding ? layer_types : json(std::vector<std::string>(c.num_hidden_layers, "full_attention"));
      break;
  }
}

}  // namespace

json llama_config_to_json(const LlamaConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["attention_bias"] = c.traits.qkv_bias;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["pad_token_id"] = c.pad_token_id ? json(*c.pad_token_id) : json(nullptr);
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = c.hidden_act;
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["mlp_bias"] = c.traits.mlp_bias;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["pretraining_tp"] = 1;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json rs = {{"rope_type", c.rope_scaling.type}, {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.type == "llama3") {
      rs["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      rs["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      rs["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = rs;
  }
  write_family_keys(c, j);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.torch_dtype;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  if (c.quantization) {
    const BnbQuantConfig& q = *c.quantization;
    j["quantization_config"] = {
        {"_load_in_4bit", true},
        {"_load_in_8bit", false},
        {"bnb_4bit_compute_dtype", q.compute_dtype},
        {"bnb_4bit_quant_storage", "uint8"},
        {"bnb_4bit_quant_type", q.quant_type},
        {"bnb_4bit_use_double_quant", q.double_quant},
        {"llm_int8_enable_fp32_cpu_offload", false},
        {"llm_int8_has_fp16_weight", false},
        {"llm_int8_skip_modules", q.skip_modules.empty() ? json(nullptr) : json(q.skip_modules)},
        {"llm_int8_threshold", 6.0},
        {"load_in_4bit", true},
        {"load_in_8bit", false},
        {"quant_method", "bitsandbytes"},
    };
  }
  return j;
}

}  // namespace qlora::io
