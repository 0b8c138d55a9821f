// HF config.json of the decoder families we load: one decoder (model/llama.h) with small, named per-family
// differences (FamilyTraits), read from config.json's architectures / model_type:
//   llama   LlamaForCausalLM (Llama 1/2/3, TinyLlama)      mistral  MistralForCausalLM (sliding window)
//   qwen2   Qwen2ForCausalLM (q/k/v bias)                   qwen3    Qwen3ForCausalLM (per-head q/k RMSNorm)
//   gemma2  Gemma2ForCausalLM (GeGLU, 1 + w norms, sandwich norms, soft-capping, alternating sliding window)
//   phi3    Phi3ForCausalLM (fused qkv_proj and gate_up_proj)
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

enum class Family { kLlama, kMistral, kQwen2, kQwen3, kGemma2, kPhi3 };

// What one family does differently from Llama (all false / 0: Llama). Set from the family and config.json.
struct FamilyTraits {
  bool qkv_bias = false;           // q/k/v (or qkv_proj) carry a bias: Qwen2, Llama's attention_bias
  bool o_bias = false;             // o_proj carries a bias: Llama's attention_bias
  bool mlp_bias = false;           // gate/up/down carry a bias: Llama's mlp_bias
  bool qk_norm = false;            // Qwen3: RMSNorm over head_dim on q and k (self_attn.q_norm / k_norm) before RoPE
  bool fused_projections = false;  // Phi-3: self_attn.qkv_proj = [q; k; v], mlp.gate_up_proj = [gate; up]
  bool norm_one_plus = false;      // Gemma: norms scale by (1 + weight), in fp32, then cast
  bool scale_embeddings = false;   // Gemma: embeddings times sqrt(hidden_size) (rounded to the compute dtype)
  bool sandwich_norms = false;     // Gemma 2: post_attention_layernorm on the attention output, pre_ and
                                   // post_feedforward_layernorm around the MLP
  double attn_softcap = 0.0;       // Gemma 2: scores = cap * tanh(scores / cap) (0: none)
  double final_softcap = 0.0;      // Gemma 2: logits = cap * tanh(logits / cap) (0: none)
  double query_pre_attn_scalar = 0.0;  // Gemma 2: scores scaled by this^-0.5 instead of head_dim^-0.5 (0: head_dim)
};

struct LlamaConfig {
  Family family = Family::kLlama;
  FamilyTraits traits;
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
  std::string hidden_act = "silu";       // silu (SwiGLU) | gelu_pytorch_tanh (GeGLU, Gemma)
  // Sliding-window attention: a query at sequence index i sees keys j with i - window < j <= i, in the layers
  // marked in sliding_layers (Mistral, Phi-3: all; Gemma 2: every other; Qwen2/3 with use_sliding_window).
  int64_t sliding_window = 0;                  // 0: none
  std::vector<bool> sliding_layers;            // empty, or num_hidden_layers entries
  std::optional<BnbQuantConfig> quantization;  // present for bnb-4bit checkpoints

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  bool layer_is_sliding(int64_t layer) const {
    return sliding_window > 0 && layer >= 0 && layer < static_cast<int64_t>(sliding_layers.size()) &&
           sliding_layers[static_cast<size_t>(layer)];
  }
  // Parameter count of the full model (embeddings, lm_head unless tied, all layers).
  int64_t num_parameters() const;
};

// Parses config.json; validates architecture (one of the families above), positive sizes,
// heads dividing hidden, kv heads dividing heads, act silu, and rope scaling types. Reads both the
// `rope_theta` + `rope_scaling` form and the newer `rope_parameters` form. Errors are qlora::Error naming
// the file and the key.
LlamaConfig load_llama_config(const fs::path& config_json);
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& source_name);
nlohmann::json llama_config_to_json(const LlamaConfig& c);  // a config.json transformers can read

const char* family_name(Family f);      // "llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"
const char* supported_architectures();  // for error hints

// The linear projections of a decoder layer of any family, as suffixes (what NF4 quantization and "all-linear"
// LoRA target): q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, and Phi-3's qkv_proj, gate_up_proj.
// Suffixes a model does not have match nothing.
const std::vector<std::string>& llama_projection_names();

// One linear projection of a decoder layer: HF module path under the layer ("self_attn.q_proj"), shape, bias.
struct ProjectionSpec {
  std::string group;  // "self_attn" | "mlp"
  std::string name;   // "q_proj", ..., "qkv_proj", "gate_up_proj"
  int64_t out = 0, in = 0;
  bool bias = false;
  std::string path() const { return group + "." + name; }
};
// The projections of one layer, in forward order.
std::vector<ProjectionSpec> layer_projections(const LlamaConfig& c);

// One norm weight of a decoder layer: path under the layer ("input_layernorm", "self_attn.q_norm") and size.
struct NormSpec {
  std::string path;
  int64_t size = 0;
};
std::vector<NormSpec> layer_norms(const LlamaConfig& c);

}  // namespace qlora::io
