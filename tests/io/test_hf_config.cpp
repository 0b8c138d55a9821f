// config.json parsing against real published configs (values copied from the HF hub) and hand-computed
// parameter counts.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "io/hf_config.h"
#include "test_util.h"

namespace qlora::io {
namespace {

using nlohmann::json;

// meta-llama/Llama-2-7b-hf config.json
const char* kLlama2_7b = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.32.0.dev0", "use_cache": true, "vocab_size": 32000})";

// meta-llama/Llama-3.1-8B-Instruct config.json
const char* kLlama31_8b = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 128256})";

// mistralai/Mistral-7B-v0.1 config.json
const char* kMistral7b = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

// Llama-3.2-1B as transformers v5 writes it: `dtype`, `rope_parameters`, explicit head_dim, tied embeddings.
const char* kLlama32_1b_v5 = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "dtype": "bfloat16", "tie_word_embeddings": true, "vocab_size": 128256,
  "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})";

// unsloth/llama-3-8b-bnb-4bit style quantization_config (BitsAndBytesConfig.to_dict()).
const char* kBnb = R"({"_load_in_4bit": true, "_load_in_8bit": false, "bnb_4bit_compute_dtype": "bfloat16",
  "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
  "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
  "llm_int8_skip_modules": ["lm_head"], "llm_int8_threshold": 6.0, "load_in_4bit": true, "load_in_8bit": false,
  "quant_method": "bitsandbytes"})";

void expect_error(const json& j, const std::vector<std::string>& substrings, const std::string& source = "cfg.json") {
  try {
    parse_llama_config(j, source);
    FAIL() << "no error for " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(source), std::string::npos) << msg;
    for (const auto& s : substrings) EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in: " << msg;
  }
}

TEST(HfConfig, Llama2_7B) {
  const LlamaConfig c = parse_llama_config(json::parse(kLlama2_7b), "llama2/config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_FALSE(c.quantization.has_value());
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 4096);
  EXPECT_EQ(c.num_parameters(), 6738415616);  // the published Llama-2-7B count
}

TEST(HfConfig, Llama31_8B_Llama3RopeScaling) {
  const LlamaConfig c = parse_llama_config(json::parse(kLlama31_8b), "llama31/config.json");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_parameters(), 8030261248);  // the published Llama-3.1-8B count
}

TEST(HfConfig, Mistral7B) {
  const LlamaConfig c = parse_llama_config(json::parse(kMistral7b), "mistral/config.json");
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_parameters(), 7241732096);  // 7.24 B
}

TEST(HfConfig, RopeParametersFormAndV5Dtype) {
  const LlamaConfig c = parse_llama_config(json::parse(kLlama32_1b_v5), "v5/config.json");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{128001});
  // Llama-3.2-1B: 1.24 B parameters (tied lm_head).
  EXPECT_EQ(c.num_parameters(), 1235814400);
}

TEST(HfConfig, DefaultRopeParametersIsNoScaling) {
  json j = json::parse(kLlama2_7b);
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  const LlamaConfig c = parse_llama_config(j, "x");
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_DOUBLE_EQ(c.rope_theta, 250000.0);
}

TEST(HfConfig, LinearRopeScalingOldTypeKey) {
  json j = json::parse(kLlama2_7b);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const LlamaConfig c = parse_llama_config(j, "x");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
}

TEST(HfConfig, DefaultsForKvHeadsAndHeadDim) {
  json j = json::parse(kLlama2_7b);
  j.erase("num_key_value_heads");
  j["hidden_size"] = 256;
  j["num_attention_heads"] = 8;
  j["pad_token_id"] = 0;
  const LlamaConfig c = parse_llama_config(j, "x");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 32);
  ASSERT_TRUE(c.pad_token_id.has_value());
  EXPECT_EQ(*c.pad_token_id, 0);
}

TEST(HfConfig, UnknownArchitectureRejected) {
  json j = json::parse(kLlama2_7b);
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  expect_error(j, {"GPT2LMHeadModel", "unsupported architecture"}, "models/gpt2/config.json");
}

TEST(HfConfig, UnsupportedRopeTypesRejected) {
  for (const std::string type : {"yarn", "dynamic", "longrope"}) {
    json j = json::parse(kLlama2_7b);
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 2.0}};
    expect_error(j, {"rope_scaling", "'" + type + "'", "not supported"});
  }
  json j = json::parse(kLlama2_7b);
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2.0}, {"rope_theta", 1e4}};
  expect_error(j, {"rope_parameters", "yarn"});
}

TEST(HfConfig, InvalidShapesRejected) {
  json j = json::parse(kLlama2_7b);
  j["num_key_value_heads"] = 5;
  expect_error(j, {"num_key_value_heads"});
  j = json::parse(kLlama2_7b);
  j["num_attention_heads"] = 30;
  expect_error(j, {"num_attention_heads", "divide"});
  j = json::parse(kLlama2_7b);
  j["hidden_size"] = "4096";
  expect_error(j, {"hidden_size", "integer"});
  j = json::parse(kLlama2_7b);
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act", "gelu"});
  j = json::parse(kLlama2_7b);
  j["eos_token_id"] = "2";
  expect_error(j, {"eos_token_id"});
  expect_error(json::array(), {"not a JSON object"});
}

TEST(HfConfig, BnbQuantizationConfig) {
  json j = json::parse(kLlama31_8b);
  j["quantization_config"] = json::parse(kBnb);
  const LlamaConfig c = parse_llama_config(j, "bnb/config.json");
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->quant_type, "nf4");
  EXPECT_TRUE(c.quantization->double_quant);
  EXPECT_EQ(c.quantization->compute_dtype, "bfloat16");
  EXPECT_EQ(c.quantization->skip_modules, std::vector<std::string>{"lm_head"});

  // Minimal form with torch-prefixed dtype and bnb's defaults for absent keys (fp4, no double quant).
  j["quantization_config"] = {
      {"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"bnb_4bit_compute_dtype", "torch.float16"}};
  const LlamaConfig d = parse_llama_config(j, "bnb/config.json");
  EXPECT_EQ(d.quantization->quant_type, "fp4");
  EXPECT_FALSE(d.quantization->double_quant);
  EXPECT_EQ(d.quantization->compute_dtype, "float16");
  EXPECT_TRUE(d.quantization->skip_modules.empty());

  j["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}};
  expect_error(j, {"quantization_config", "4-bit"});
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  expect_error(j, {"quantization_config.quant_method", "gptq"});
}

TEST(HfConfig, ToJsonRoundTripAndBnbKeySet) {
  LlamaConfig c = parse_llama_config(json::parse(kLlama31_8b), "x");
  c.quantization = BnbQuantConfig{};
  c.quantization->skip_modules = {"lm_head"};
  const json j = llama_config_to_json(c);
  EXPECT_EQ(j.at("architectures"), json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j.at("model_type"), "llama");
  EXPECT_EQ(j.at("torch_dtype"), "bfloat16");
  EXPECT_EQ(j.at("rope_scaling").at("rope_type"), "llama3");
  EXPECT_EQ(j.at("eos_token_id"), json::array({128001, 128008, 128009}));
  // bitsandbytes' BitsAndBytesConfig.to_dict() key set (formats.md section 2).
  std::set<std::string> keys;
  for (auto it = j.at("quantization_config").begin(); it != j.at("quantization_config").end(); ++it)
    keys.insert(it.key());
  const std::set<std::string> expected = {"_load_in_4bit",
                                          "_load_in_8bit",
                                          "bnb_4bit_compute_dtype",
                                          "bnb_4bit_quant_storage",
                                          "bnb_4bit_quant_type",
                                          "bnb_4bit_use_double_quant",
                                          "llm_int8_enable_fp32_cpu_offload",
                                          "llm_int8_has_fp16_weight",
                                          "llm_int8_skip_modules",
                                          "llm_int8_threshold",
                                          "load_in_4bit",
                                          "load_in_8bit",
                                          "quant_method"};
  EXPECT_EQ(keys, expected);
  EXPECT_EQ(j.at("quantization_config").at("quant_method"), "bitsandbytes");

  const LlamaConfig r = parse_llama_config(j, "roundtrip");
  EXPECT_EQ(r.vocab_size, c.vocab_size);
  EXPECT_EQ(r.hidden_size, c.hidden_size);
  EXPECT_EQ(r.intermediate_size, c.intermediate_size);
  EXPECT_EQ(r.num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(r.num_attention_heads, c.num_attention_heads);
  EXPECT_EQ(r.num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(r.head_dim, c.head_dim);
  EXPECT_EQ(r.max_position_embeddings, c.max_position_embeddings);
  EXPECT_DOUBLE_EQ(r.rms_norm_eps, c.rms_norm_eps);
  EXPECT_DOUBLE_EQ(r.rope_theta, c.rope_theta);
  EXPECT_EQ(r.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(r.rope_scaling.factor, 8.0);
  EXPECT_EQ(r.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(r.eos_token_ids, c.eos_token_ids);
  EXPECT_EQ(r.bos_token_id, c.bos_token_id);
  ASSERT_TRUE(r.quantization.has_value());
  EXPECT_EQ(r.quantization->quant_type, "nf4");
  EXPECT_TRUE(r.quantization->double_quant);
  EXPECT_EQ(r.quantization->skip_modules, std::vector<std::string>{"lm_head"});

  // No scaling and no quantization: rope_scaling is null and quantization_config is absent.
  const json plain = llama_config_to_json(parse_llama_config(json::parse(kLlama2_7b), "x"));
  EXPECT_TRUE(plain.at("rope_scaling").is_null());
  EXPECT_FALSE(plain.contains("quantization_config"));
  EXPECT_EQ(plain.at("eos_token_id"), 2);
}

TEST(HfConfig, LoadFromFileErrorsNameTheFile) {
  const fs::path dir = qlora::test::temp_dir();
  EXPECT_THROW(load_llama_config(dir / "config.json"), Error);
  { std::ofstream(dir / "config.json") << "{\"hidden_size\": 12,"; }
  try {
    load_llama_config(dir / "config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("JSON"), std::string::npos) << e.what();
  }
  { std::ofstream(dir / "config.json") << kMistral7b; }
  EXPECT_EQ(load_llama_config(dir / "config.json").architecture, "MistralForCausalLM");
}

}  // namespace
}  // namespace qlora::io
