// HF config.json for LlamaForCausalLM (Llama 1/2/3, Mistral, TinyLlama share it).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace qlora::io {

namespace fs = std::filesystem;

struct RopeScaling {
  std::string type;  // "" (none) | "linear" | "llama3" | "dynamic" (rejected) ...
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

// bitsandbytes quantization_config of a pre-quantized (bnb-4bit) checkpoint.
struct BnbQuantConfig {
  std::string quant_type = "nf4";  // nf4 | fp4
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";
  std::vector<std::string> skip_modules;
};

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;  // hidden_size / heads unless given
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype = "bfloat16";  // "torch_dtype" (or transformers v5 "dtype")
  std::string hidden_act = "silu";
  std::optional<BnbQuantConfig> quantization;  // present for bnb-4bit checkpoints

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Parameter count of the full model (embeddings, lm_head unless tied, all layers).
  int64_t num_parameters() const;
};

// Parses config.json; validates architecture (LlamaForCausalLM / MistralForCausalLM), positive sizes,
// heads dividing hidden, kv heads dividing heads, act silu, and rope scaling types. Reads both the
// `rope_theta` + `rope_scaling` form and the newer `rope_parameters` form. Errors are qlora::Error naming
// the file and the key.
LlamaConfig load_llama_config(const fs::path& config_json);
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& source_name);
nlohmann::json llama_config_to_json(const LlamaConfig& c);  // a config.json transformers can read

// The 7 linear projections of a Llama decoder layer, in layer order: q_proj, k_proj, v_proj, o_proj, gate_proj,
// up_proj, down_proj (the suffixes HF names them by, and what NF4 quantization and "all-linear" LoRA target).
const std::vector<std::string>& llama_projection_names();

}  // namespace qlora::io
