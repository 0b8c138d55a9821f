// config.json of the families beyond Llama, against the published configs (values as on the HF hub) and their
// published parameter counts (7.62 B, 8.19 B, 9.24 B, 3.82 B: the model cards' figures).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/hf_config.h"

namespace qlora::io {
namespace {

using nlohmann::json;

// Qwen/Qwen2.5-7B-Instruct
const char* kQwen25_7b = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
  "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
  "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
  "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 152064})";

// Qwen/Qwen3-8B
const char* kQwen3_8b = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 12288, "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

// google/gemma-2-9b-it
const char* kGemma2_9b = R"({
  "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
  "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 16, "num_hidden_layers": 42,
  "num_key_value_heads": 8, "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0, "sliding_window": 4096, "sliding_window_size": 4096, "torch_dtype": "float32",
  "transformers_version": "4.42.0.dev0", "use_cache": true, "vocab_size": 256000})";

// microsoft/Phi-3-mini-4k-instruct
const char* kPhi3_mini = R"({
  "architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0,
  "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096, "pad_token_id": 32000,
  "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "sliding_window": 2047,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": true,
  "attention_bias": false, "vocab_size": 32064})";

std::vector<std::string> projection_names(const LlamaConfig& c) {
  std::vector<std::string> out;
  for (const auto& p : layer_projections(c)) out.push_back(p.path() + (p.bias ? "+bias" : ""));
  return out;
}

std::vector<std::string> norm_paths(const LlamaConfig& c) {
  std::vector<std::string> out;
  for (const auto& n : layer_norms(c)) out.push_back(n.path);
  return out;
}

TEST(HfConfigFamilies, Qwen25_7B) {
  const LlamaConfig c = parse_llama_config(json::parse(kQwen25_7b), "qwen2.5/config.json");
  EXPECT_EQ(c.family, Family::kQwen2);
  EXPECT_TRUE(c.traits.qkv_bias);
  EXPECT_FALSE(c.traits.o_bias);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window: false
  EXPECT_EQ(projection_names(c),
            (std::vector<std::string>{"self_attn.q_proj+bias", "self_attn.k_proj+bias", "self_attn.v_proj+bias",
                                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}));
  EXPECT_EQ(c.num_parameters(), 7615616512);  // "7.61B"
}

TEST(HfConfigFamilies, Qwen3_8B) {
  const LlamaConfig c = parse_llama_config(json::parse(kQwen3_8b), "qwen3/config.json");
  EXPECT_EQ(c.family, Family::kQwen3);
  EXPECT_TRUE(c.traits.qk_norm);
  EXPECT_FALSE(c.traits.qkv_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(norm_paths(c), (std::vector<std::string>{"input_layernorm", "post_attention_layernorm", "self_attn.q_norm",
                                                     "self_attn.k_norm"}));
  EXPECT_EQ(c.num_parameters(), 8190735360);  // "8.19B"
}

TEST(HfConfigFamilies, Gemma2_9B) {
  const LlamaConfig c = parse_llama_config(json::parse(kGemma2_9b), "gemma2/config.json");
  EXPECT_EQ(c.family, Family::kGemma2);
  EXPECT_EQ(c.hidden_act, "gelu_pytorch_tanh");
  EXPECT_TRUE(c.traits.norm_one_plus && c.traits.scale_embeddings && c.traits.sandwich_norms);
  EXPECT_DOUBLE_EQ(c.traits.attn_softcap, 50.0);
  EXPECT_DOUBLE_EQ(c.traits.final_softcap, 30.0);
  EXPECT_DOUBLE_EQ(c.traits.query_pre_attn_scalar, 256.0);
  EXPECT_TRUE(c.tie_word_embeddings);  // Gemma2Config's default
  EXPECT_EQ(c.sliding_window, 4096);
  ASSERT_EQ(c.sliding_layers.size(), 42u);
  for (int64_t i = 0; i < 42; ++i) EXPECT_EQ(c.layer_is_sliding(i), i % 2 == 0) << i;  // transformers' layer_types
  EXPECT_EQ(norm_paths(c), (std::vector<std::string>{"input_layernorm", "post_attention_layernorm",
                                                     "pre_feedforward_layernorm", "post_feedforward_layernorm"}));
  EXPECT_EQ(c.num_parameters(), 9241705984);  // "9.24B"
}

TEST(HfConfigFamilies, Phi3Mini) {
  const LlamaConfig c = parse_llama_config(json::parse(kPhi3_mini), "phi3/config.json");
  EXPECT_EQ(c.family, Family::kPhi3);
  EXPECT_TRUE(c.traits.fused_projections);
  EXPECT_EQ(c.sliding_window, 2047);
  EXPECT_TRUE(c.layer_is_sliding(0) && c.layer_is_sliding(31));
  EXPECT_EQ(projection_names(c),
            (std::vector<std::string>{"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}));
  EXPECT_EQ(layer_projections(c)[0].out, 3 * 3072);
  EXPECT_EQ(layer_projections(c)[2].out, 2 * 8192);
  EXPECT_EQ(c.num_parameters(), 3821079552);  // "3.82B"
}

TEST(HfConfigFamilies, LayerTypesOverrideTheFamilyRule) {
  json j = json::parse(kQwen25_7b);
  j["num_hidden_layers"] = 3;
  j["use_sliding_window"] = true;
  j["sliding_window"] = 64;
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention"};
  const LlamaConfig c = parse_llama_config(j, "x");
  EXPECT_EQ(c.sliding_window, 64);
  EXPECT_FALSE(c.layer_is_sliding(0));
  EXPECT_TRUE(c.layer_is_sliding(1));
  j["layer_types"] = {"full_attention", "chunked_attention", "full_attention"};
  EXPECT_THROW(parse_llama_config(j, "x"), Error);
  j["layer_types"] = {"full_attention"};
  EXPECT_THROW(parse_llama_config(j, "x"), Error);
}

TEST(HfConfigFamilies, RoundTripThroughToJson) {
  for (const char* text : {kQwen25_7b, kQwen3_8b, kGemma2_9b, kPhi3_mini}) {
    const LlamaConfig c = parse_llama_config(json::parse(text), "x");
    const LlamaConfig r = parse_llama_config(llama_config_to_json(c), "roundtrip");
    EXPECT_EQ(r.family, c.family);
    EXPECT_EQ(r.num_parameters(), c.num_parameters());
    EXPECT_EQ(r.sliding_window, c.sliding_window);
    EXPECT_EQ(r.sliding_layers, c.sliding_layers);
    EXPECT_EQ(r.hidden_act, c.hidden_act);
    EXPECT_EQ(r.traits.qkv_bias, c.traits.qkv_bias);
    EXPECT_DOUBLE_EQ(r.traits.attn_softcap, c.traits.attn_softcap);
    EXPECT_DOUBLE_EQ(r.traits.final_softcap, c.traits.final_softcap);
    EXPECT_EQ(r.tie_word_embeddings, c.tie_word_embeddings);
  }
}

TEST(HfConfigFamilies, UnsupportedNamesWhatIsSupported) {
  json j = json::parse(kQwen25_7b);
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  j["model_type"] = "qwen2_moe";
  try {
    parse_llama_config(j, "moe/config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("moe/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Qwen2MoeForCausalLM"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Gemma2ForCausalLM"), std::string::npos) << msg;  // the list of what is supported
  }
  j = json::parse(kPhi3_mini);
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e4}, {"partial_rotary_factor", 0.75}};
  EXPECT_THROW(parse_llama_config(j, "x"), Error);
  j = json::parse(kGemma2_9b);
  j["hidden_activation"] = "relu";
  EXPECT_THROW(parse_llama_config(j, "x"), Error);
  j = json::parse(kQwen3_8b);
  j["model_type"] = "qwen2";  // contradicts the architecture
  EXPECT_THROW(parse_llama_config(j, "x"), Error);
}

}  // namespace
}  // namespace qlora::io
