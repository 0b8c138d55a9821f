// A small random HF Llama folder for the GGUF tests (config.json, model.safetensors in bf16, and the sentencepiece
// model tests/fixtures/gguf_tokenizer.model), plus a PEFT adapter folder writer. Independent of qlora-make-tiny so
// the export tests can pin every size (e.g. a row length that is not a multiple of 32).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "test_util.h"

namespace qlora::test {

struct MiniLlama {
  int64_t hidden = 64;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t inter = 96;
  int64_t vocab = 300;  // the fixture tokenizer has 300 pieces; larger pads with [PADi]
  bool tied = false;
  nlohmann::json rope_scaling;  // null: none
  torch::ScalarType dtype = torch::kBFloat16;
  double stddev = 0.02;
};

inline nlohmann::json mini_config_json(const MiniLlama& m) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"vocab_size", m.vocab},
                      {"hidden_size", m.hidden},
                      {"intermediate_size", m.inter},
                      {"num_hidden_layers", m.layers},
                      {"num_attention_heads", m.heads},
                      {"num_key_value_heads", m.kv_heads},
                      {"max_position_embeddings", 256},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"bos_token_id", 1},
                      {"eos_token_id", 2},
                      {"hidden_act", "silu"},
                      {"tie_word_embeddings", m.tied},
                      {"torch_dtype", m.dtype == torch::kFloat32 ? "float32" : "bfloat16"}};
  if (!m.rope_scaling.is_null()) j["rope_scaling"] = m.rope_scaling;
  return j;
}

// HF name -> tensor (PyTorch shapes), seeded.
inline std::vector<std::pair<std::string, torch::Tensor>> mini_weights(const MiniLlama& m, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t hd = m.hidden / m.heads;
  auto w = [&](std::vector<int64_t> shape) { return (torch::randn(shape) * m.stddev).to(m.dtype); };
  auto norm = [&](int64_t n) { return (1.0 + 0.1 * torch::randn({n})).to(m.dtype); };
  std::vector<std::pair<std::string, torch::Tensor>> t;
  t.emplace_back("model.embed_tokens.weight", w({m.vocab, m.hidden}));
  for (int64_t i = 0; i < m.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.emplace_back(p + "input_layernorm.weight", norm(m.hidden));
    t.emplace_back(p + "self_attn.q_proj.weight", w({m.heads * hd, m.hidden}));
    t.emplace_back(p + "self_attn.k_proj.weight", w({m.kv_heads * hd, m.hidden}));
    t.emplace_back(p + "self_attn.v_proj.weight", w({m.kv_heads * hd, m.hidden}));
    t.emplace_back(p + "self_attn.o_proj.weight", w({m.hidden, m.heads * hd}));
    t.emplace_back(p + "post_attention_layernorm.weight", norm(m.hidden));
    t.emplace_back(p + "mlp.gate_proj.weight", w({m.inter, m.hidden}));
    t.emplace_back(p + "mlp.up_proj.weight", w({m.inter, m.hidden}));
    t.emplace_back(p + "mlp.down_proj.weight", w({m.hidden, m.inter}));
  }
  t.emplace_back("model.norm.weight", norm(m.hidden));
  if (!m.tied) t.emplace_back("lm_head.weight", w({m.vocab, m.hidden}));
  return t;
}

inline fs::path make_mini_llama(const fs::path& dir, const MiniLlama& m = {}, uint64_t seed = 7) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << mini_config_json(m).dump(2);
  io::save_safetensors(dir / "model.safetensors", mini_weights(m, seed));
  fs::copy_file(fixtures_dir() / "gguf_tokenizer.model", dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  return dir;
}

// PEFT adapter folder: modules -> (A (r, in), B (out, r)) saved under base_model.model.<module>.lora_{A,B}.weight.
inline fs::path make_peft_adapter(
    const fs::path& dir, const std::vector<std::pair<std::string, std::pair<torch::Tensor, torch::Tensor>>>& mods,
    int64_t r, double alpha, bool rslora = false, const std::string& base = "") {
  fs::create_directories(dir);
  std::vector<std::string> targets;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [module, ab] : mods) {
    tensors.emplace_back("base_model.model." + module + ".lora_A.weight", ab.first.contiguous());
    tensors.emplace_back("base_model.model." + module + ".lora_B.weight", ab.second.contiguous());
    const std::string last = module.substr(module.rfind('.') + 1);
    if (std::find(targets.begin(), targets.end(), last) == targets.end()) targets.push_back(last);
  }
  nlohmann::json cfg = {{"peft_type", "LORA"},
                        {"task_type", "CAUSAL_LM"},
                        {"base_model_name_or_path", base.empty() ? nlohmann::json() : nlohmann::json(base)},
                        {"r", r},
                        {"lora_alpha", alpha},
                        {"lora_dropout", 0.0},
                        {"target_modules", targets},
                        {"bias", "none"},
                        {"fan_in_fan_out", false},
                        {"use_rslora", rslora},
                        {"inference_mode", true},
                        {"init_lora_weights", true}};
  std::ofstream(dir / "adapter_config.json") << cfg.dump(2);
  io::save_safetensors(dir / "adapter_model.safetensors", tensors);
  return dir;
}

// Inverse of llama.cpp's permute, from its definition: output row h*hd + 2*i + j holds input row h*hd + j*hd/2 + i.
inline std::vector<float> unpermute_rows(const std::vector<float>& p, int64_t rows, int64_t cols, int64_t n_head) {
  const int64_t hd = rows / n_head;
  std::vector<float> out(p.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t c = 0; c < cols; ++c)
          out[(h * hd + j * hd / 2 + i) * cols + c] = p[(h * hd + 2 * i + j) * cols + c];
  return out;
}

inline std::vector<float> to_vec(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat32).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

}  // namespace qlora::test
