#include "io/hf_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qlora::io {

namespace {

using nlohmann::json;

// Reads typed keys of one JSON object, with errors "<source>: key '<path>': ...".
class KeyReader {
 public:
  KeyReader(const json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  [[noreturn]] void fail(const std::string& key, const std::string& what, const std::string& hint = "") const {
    throw_file_error(source_, "key '" + prefix_ + key + "': " + what, hint);
  }

  int64_t get_int(const std::string& key, int64_t def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::fabs(d) < 9e18 && d == std::floor(d)) return static_cast<int64_t>(d);
    }
    fail(key, "must be an integer (got " + v.dump() + ")");
  }

  int64_t get_positive(const std::string& key, int64_t def) const {
    const int64_t v = get_int(key, def);
    if (v <= 0) fail(key, "must be positive (got " + std::to_string(v) + ")");
    return v;
  }

  double get_double(const std::string& key, double def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_number()) fail(key, "must be a number (got " + v.dump() + ")");
    return v.get<double>();
  }

  bool get_bool(const std::string& key, bool def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_boolean()) fail(key, "must be true or false (got " + v.dump() + ")");
    return v.get<bool>();
  }

  std::string get_string(const std::string& key, const std::string& def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_string()) fail(key, "must be a string (got " + v.dump() + ")");
    return v.get<std::string>();
  }

 private:
  const json& j_;
  std::string source_;
  std::string prefix_;
};

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
  if (!j.is_object()) throw_file_error(source, "key '" + key + "': must be an object or null (got " + j.dump() + ")");
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
  const int64_t h = hidden_size;
  const int64_t per_layer = 2 * h                             // two RMSNorms
                            + h * q_dim() + 2 * h * kv_dim()  // q, k, v
                            + q_dim() * h                     // o
                            + 3 * h * intermediate_size;      // gate, up, down
  const int64_t embed = vocab_size * h;
  return embed + (tie_word_embeddings ? 0 : embed) + num_hidden_layers * per_layer + h;
}

namespace {

// architectures / model_type -> c.architecture, c.model_type.
void parse_architecture(const json& j, KeyReader& r, LlamaConfig& c) {
  std::string arch;
  if (r.has("architectures")) {
    const json& a = j["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string()) {
      r.fail("architectures", "must be a non-empty list of strings (got " + a.dump() + ")");
    }
    arch = a[0].get<std::string>();
  }
  const std::string model_type = r.get_string("model_type", "");
  if (arch.empty()) {
    if (model_type == "llama")
      arch = "LlamaForCausalLM";
    else if (model_type == "mistral")
      arch = "MistralForCausalLM";
    else if (model_type.empty())
      r.fail("architectures", "missing (and no model_type either)", "is this an HF config.json?");
    else
      r.fail("model_type", "unsupported model type '" + model_type + "'", "supported: llama, mistral");
  }
  const bool mistral = arch == "MistralForCausalLM";
  if (arch != "LlamaForCausalLM" && !mistral) {
    r.fail("architectures", "unsupported architecture '" + arch + "'",
           "supported: LlamaForCausalLM, MistralForCausalLM (Llama 1/2/3, TinyLlama, Mistral)");
  }
  c.architecture = arch;
  c.model_type = model_type.empty() ? (mistral ? "mistral" : "llama") : model_type;
  if (c.model_type != "llama" && c.model_type != "mistral") {
    r.fail("model_type", "unsupported model type '" + c.model_type + "' for architecture " + arch);
  }
}

// Sizes (defaults as in transformers' LlamaConfig / MistralConfig).
void parse_sizes(KeyReader& r, LlamaConfig& c) {
  const bool mistral = c.architecture == "MistralForCausalLM";
  c.vocab_size = r.get_positive("vocab_size", 32000);
  c.hidden_size = r.get_positive("hidden_size", 4096);
  c.intermediate_size = r.get_positive("intermediate_size", mistral ? 14336 : 11008);
  c.num_hidden_layers = r.get_positive("num_hidden_layers", 32);
  c.num_attention_heads = r.get_positive("num_attention_heads", 32);
  c.num_key_value_heads = r.get_positive("num_key_value_heads", mistral ? 8 : c.num_attention_heads);
  if (r.has("head_dim")) {
    c.head_dim = r.get_positive("head_dim", 0);
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
  c.max_position_embeddings = r.get_positive("max_position_embeddings", mistral ? 131072 : 2048);
  c.rms_norm_eps = r.get_double("rms_norm_eps", 1e-6);
  if (c.rms_norm_eps <= 0) r.fail("rms_norm_eps", "must be positive");
  c.hidden_act = r.get_string("hidden_act", "silu");
  if (c.hidden_act != "silu") {
    r.fail("hidden_act", "unsupported activation '" + c.hidden_act + "'", "Llama-family models use silu");
  }
  if (r.get_bool("attention_bias", false)) r.fail("attention_bias", "attention biases are not supported");
  if (r.get_bool("mlp_bias", false)) r.fail("mlp_bias", "MLP biases are not supported");
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
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
          r.fail("eos_token_id", "must be an integer or a list of integers (got " + e.dump() + ")");
        c.eos_token_ids.push_back(v.get<int64_t>());
      }
    } else {
      r.fail("eos_token_id", "must be an integer or a non-empty list of integers (got " + e.dump() + ")");
    }
  }
  if (r.has("pad_token_id")) c.pad_token_id = r.get_int("pad_token_id", 0);
}

}  // namespace

LlamaConfig parse_llama_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw_file_error(source, "config is not a JSON object");
  KeyReader r(j, source);
  LlamaConfig c;
  parse_architecture(j, r, c);
  parse_sizes(r, c);
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

const std::vector<std::string>& llama_projection_names() {
  static const std::vector<std::string> kNames = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
  return kNames;
}

LlamaConfig load_llama_config(const fs::path& config_json) {
  const std::string text = read_file(config_json);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw_file_error(config_json.string(), std::string("not valid JSON: ") + e.what());
  }
  return parse_llama_config(j, config_json.string());
}

json llama_config_to_json(const LlamaConfig& c) {
  json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["attention_bias"] = false;
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
  j["mlp_bias"] = false;
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
  if (c.model_type == "mistral") j["sliding_window"] = nullptr;
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
