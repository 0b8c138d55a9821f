#include "gguf/gguf_llama.h"

#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "tokenizer/sentencepiece_model.h"

namespace qlora::gguf {

OutType parse_out_type(const std::string& name) {
  if (name == "f32") return OutType::kF32;
  if (name == "f16") return OutType::kF16;
  if (name == "bf16") return OutType::kBF16;
  if (name == "q8_0") return OutType::kQ8_0;
  if (name == "q4_0") return OutType::kQ4_0;
  if (name == "q4_k_m") return OutType::kQ4_K_M;
  if (name == "q5_k_m") return OutType::kQ5_K_M;
  if (name == "q6_k") return OutType::kQ6_K;
  throw Error("unknown GGUF outtype '" + name + "'\nHINT: use one of f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k");
}

std::string out_type_name(OutType t) {
  switch (t) {
    case OutType::kF32:
      return "f32";
    case OutType::kF16:
      return "f16";
    case OutType::kBF16:
      return "bf16";
    case OutType::kQ8_0:
      return "q8_0";
    case OutType::kQ4_0:
      return "q4_0";
    case OutType::kQ4_K_M:
      return "q4_k_m";
    case OutType::kQ5_K_M:
      return "q5_k_m";
    case OutType::kQ6_K:
      return "q6_k";
  }
  return "?";
}

uint32_t llama_file_type(OutType t) {
  switch (t) {
    case OutType::kF32:
      return 0;
    case OutType::kF16:
      return 1;
    case OutType::kQ4_0:
      return 2;
    case OutType::kQ8_0:
      return 7;
    case OutType::kQ4_K_M:
      return 15;
    case OutType::kQ5_K_M:
      return 17;
    case OutType::kQ6_K:
      return 18;
    case OutType::kBF16:
      return 32;
  }
  return 0;
}

bool is_kquant_mix(OutType t) {
  return t == OutType::kQ4_K_M || t == OutType::kQ5_K_M || t == OutType::kQ6_K;
}

std::optional<std::string> gguf_tensor_name(const std::string& hf_name) {
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(hf_name, m, layer_re)) {
    const std::string rest = m[2];
    if (rest.find("rotary_emb.inv_freq") != std::string::npos) return std::nullopt;
    static const std::vector<std::pair<std::string, std::string>> kMap = {
        {"input_layernorm.weight", "attn_norm.weight"},    {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},      {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},       {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
    };
    for (const auto& [hf, gg] : kMap) {
      if (rest == hf) return "blk." + std::string(m[1]) + "." + gg;
    }
  }
  if (hf_name.find("rotary_emb.inv_freq") != std::string::npos) return std::nullopt;
  throw Error("tensor '" + hf_name + "' has no llama.cpp (GGUF) equivalent\nHINT: only LlamaForCausalLM weights " +
              "(embed_tokens, layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, " +
              "mlp.{gate,up,down}_proj}, norm, lm_head) can be exported");
}

torch::Tensor permute_qk(const torch::Tensor& w, int64_t n_head) {
  // w: (rows, cols...) -> same shape, rows reordered within each head.
  TORCH_CHECK(w.dim() >= 1 && n_head > 0 && w.size(0) % (2 * n_head) == 0, "permute_qk: ", w.size(0),
              " rows do not split into ", n_head, " heads of even size");
  std::vector<int64_t> view = {n_head, 2, w.size(0) / n_head / 2};
  for (int64_t d = 1; d < w.dim(); ++d) view.push_back(w.size(d));
  return w.reshape(view).transpose(1, 2).reshape(w.sizes()).contiguous();
}

int64_t permute_heads_for(const std::string& hf_name, const io::LlamaConfig& config) {
  auto ends_with = [&](const std::string& s) {
    return hf_name.size() >= s.size() && hf_name.compare(hf_name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with("self_attn.q_proj.weight") || ends_with("self_attn.q_proj")) return config.num_attention_heads;
  if (ends_with("self_attn.k_proj.weight") || ends_with("self_attn.k_proj")) return config.num_key_value_heads;
  return 0;
}

GgmlType tensor_type_for(const std::string& gguf_name, const std::vector<int64_t>& shape, OutType out,
                         const KQuantModel& model) {
  if (shape.size() <= 1) return GgmlType::kF32;
  const int64_t row = shape.back();
  switch (out) {
    case OutType::kF32:
      return GgmlType::kF32;
    case OutType::kF16:
      return GgmlType::kF16;
    case OutType::kBF16:
      return GgmlType::kBF16;
    case OutType::kQ8_0:
      return row % kQK8_0 == 0 ? GgmlType::kQ8_0 : GgmlType::kF16;
    case OutType::kQ4_0:
      if (gguf_name == "output.weight") return row % kQK8_0 == 0 ? GgmlType::kQ8_0 : GgmlType::kF16;
      return row % kQK4_0 == 0 ? GgmlType::kQ4_0 : GgmlType::kF16;
    case OutType::kQ4_K_M:
      return kquant_tensor_type(KQuantMix::kQ4_K_M, gguf_name, shape, model);
    case OutType::kQ5_K_M:
      return kquant_tensor_type(KQuantMix::kQ5_K_M, gguf_name, shape, model);
    case OutType::kQ6_K:
      return kquant_tensor_type(KQuantMix::kQ6_K, gguf_name, shape, model);
  }
  return GgmlType::kF32;
}

std::vector<float> llama3_rope_factors(const io::LlamaConfig& c) {
  if (c.rope_scaling.type != "llama3") return {};
  const double factor = c.rope_scaling.factor;
  const double low = c.rope_scaling.low_freq_factor;
  const double high = c.rope_scaling.high_freq_factor;
  const double old_ctx = static_cast<double>(c.rope_scaling.original_max_position_embeddings);
  const double low_wavelen = old_ctx / low;
  const double high_wavelen = old_ctx / high;
  std::vector<float> out;
  const int64_t d = c.head_dim;
  for (int64_t i = 0; i < d; i += 2) {
    // The converter computes freq in float32 (torch) and the rest in Python doubles.
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(i) / static_cast<float>(d));
    const double wavelen = 2.0 * M_PI / static_cast<double>(freq);
    double f;
    if (wavelen < high_wavelen) {
      f = 1.0;
    } else if (wavelen > low_wavelen) {
      f = factor;
    } else {
      const double s = (old_ctx / wavelen - low) / (high - low);
      f = 1.0 / ((1.0 - s) / factor + s);
    }
    out.push_back(static_cast<float>(f));
  }
  return out;
}

void add_llama_hparams(GgufWriter& w, const io::LlamaConfig& c) {
  w.add_u32("llama.context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.add_u32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.add_u32("llama.block_count", static_cast<uint32_t>(c.num_hidden_layers));
  w.add_u32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.add_u32("llama.attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  w.add_u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  w.add_f32("llama.rope.freq_base", static_cast<float>(c.rope_theta));
  w.add_f32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.add_u32("llama.attention.key_length", static_cast<uint32_t>(c.head_dim));
  w.add_u32("llama.attention.value_length", static_cast<uint32_t>(c.head_dim));
  w.add_u32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  w.add_u32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  if (c.rope_scaling.type == "linear") {
    w.add_string("llama.rope.scaling.type", "linear");
    w.add_f32("llama.rope.scaling.factor", static_cast<float>(c.rope_scaling.factor));
  } else if (!c.rope_scaling.type.empty() && c.rope_scaling.type != "llama3" && c.rope_scaling.type != "default") {
    throw Error("rope_scaling type '" + c.rope_scaling.type + "' cannot be exported to GGUF\nHINT: supported: none, " +
                "linear, llama3");
  }
}

nlohmann::json read_json_if_exists(const fs::path& p) {
  if (!fs::exists(p)) return nlohmann::json();
  return read_json_file(p);
}

std::string read_chat_template(const fs::path& model_dir, const nlohmann::json& tok_config) {
  if (fs::is_regular_file(model_dir / "chat_template.jinja")) return read_file(model_dir / "chat_template.jinja");
  if (!tok_config.is_object() || !tok_config.contains("chat_template")) return "";
  const auto& t = tok_config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const auto& e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string()) {
        return e["template"].get<std::string>();
      }
    }
  }
  return "";
}

SentencePieceVocab load_sentencepiece_vocab(const fs::path& model_dir, int64_t vocab_size,
                                            const io::LlamaConfig& config) {
  const fs::path sp_path = model_dir / "tokenizer.model";
  if (!fs::exists(sp_path)) {
    throw_file_error(sp_path.string(), "not found",
                     "GGUF export needs the sentencepiece tokenizer.model of the model folder (Llama-1/2 style); "
                     "BPE (tokenizer.json only) vocabularies are not supported yet");
  }
  // Read natively (tokenizer/sentencepiece_model.h): libsentencepiece cannot share a process with LibTorch.
  const auto sp = tokenizer::SentencePieceModel::load(sp_path);

  constexpr int32_t kUnused = 5, kUserDefined = 4, kControl = 3;
  SentencePieceVocab v;
  const auto sp_size = static_cast<int64_t>(sp.pieces.size());
  const int64_t n = vocab_size > 0 ? vocab_size : sp_size;
  v.tokens.resize(n);
  v.scores.assign(n, -10000.0f);
  v.types.assign(n, kUnused);
  for (int64_t i = 0; i < n; ++i) v.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (int64_t id = 0; id < std::min(n, sp_size); ++id) {
    // The ModelProto piece type is GGUF's token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    // 6 byte).
    v.tokens[id] = sp.pieces[id].piece;
    v.scores[id] = sp.pieces[id].score;
    v.types[id] = static_cast<int32_t>(sp.pieces[id].type);
  }
  // Added tokens, as the converter reads them: added_tokens.json (user-defined) and tokenizer_config.json's
  // added_tokens_decoder (control when special, else user-defined).
  const auto added = read_json_if_exists(model_dir / "added_tokens.json");
  if (added.is_object()) {
    for (const auto& [text, id_json] : added.items()) {
      const int64_t id = id_json.get<int64_t>();
      if (id < 0 || id >= n) continue;
      v.tokens[id] = text;
      v.scores[id] = -1000.0f;
      v.types[id] = kUserDefined;
    }
  }
  const auto tok_config = read_json_if_exists(model_dir / "tokenizer_config.json");
  if (tok_config.is_object() && tok_config.contains("added_tokens_decoder") &&
      tok_config["added_tokens_decoder"].is_object()) {
    for (const auto& [id_text, data] : tok_config["added_tokens_decoder"].items()) {
      const int64_t id = std::stoll(id_text);
      if (id < 0 || id >= n || !data.contains("content")) continue;
      std::string text = data["content"].get<std::string>();
      const bool special = data.value("special", false);
      if (special) {
        v.types[id] = kControl;
      } else {
        // user-defined pieces are stored pre-normalized: U+2581 -> space
        for (size_t p; (p = text.find("\xe2\x96\x81")) != std::string::npos;) text.replace(p, 3, " ");
        v.types[id] = kUserDefined;
      }
      v.scores[id] = -1000.0f;
      v.tokens[id] = text;
    }
  }
  v.chat_template = read_chat_template(model_dir, tok_config);
  v.bos_id = config.bos_token_id >= 0 ? static_cast<int32_t>(config.bos_token_id) : sp.bos_id;
  v.eos_id = !config.eos_token_ids.empty() ? static_cast<int32_t>(config.eos_token_ids.front()) : sp.eos_id;
  v.unk_id = sp.unk_id;
  v.pad_id = config.pad_token_id ? static_cast<int32_t>(*config.pad_token_id) : sp.pad_id;
  return v;
}

void add_sentencepiece_vocab(GgufWriter& w, const SentencePieceVocab& v) {
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string("tokenizer.ggml.pre", "default");
  w.add_array_string("tokenizer.ggml.tokens", v.tokens);
  w.add_array_f32("tokenizer.ggml.scores", v.scores);
  w.add_array_i32("tokenizer.ggml.token_type", v.types);
  const auto n = static_cast<int32_t>(v.tokens.size());
  if (v.bos_id >= 0 && v.bos_id < n) w.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(v.bos_id));
  if (v.eos_id >= 0 && v.eos_id < n) w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(v.eos_id));
  if (v.unk_id >= 0 && v.unk_id < n) w.add_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(v.unk_id));
  if (v.pad_id >= 0 && v.pad_id < n) w.add_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(v.pad_id));
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  if (!v.chat_template.empty()) w.add_string("tokenizer.chat_template", v.chat_template);
}

}  // namespace qlora::gguf
