#include "gguf/gguf_families.h"

#include <cmath>
#include <regex>

#include "common/error.h"
#include "gguf/gguf_llama.h"

namespace qlora::gguf {
namespace {

bool llama_arch(const io::LlamaConfig& c) {
  return c.family == io::Family::kLlama || c.family == io::Family::kMistral;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string gguf_architecture(const io::LlamaConfig& c, const std::filesystem::path& config_json) {
  const std::string where = config_json.string();
  switch (c.family) {
    case io::Family::kLlama:
    case io::Family::kMistral:
      if (c.traits.qkv_bias || c.traits.mlp_bias) {
        throw_file_error(where, "GGUF export of Llama models with attention_bias / mlp_bias is not supported");
      }
      return "llama";
    case io::Family::kPhi3:
      return "phi3";
    case io::Family::kGemma2: {
      const double scalar = c.traits.query_pre_attn_scalar;
      const bool head = scalar == static_cast<double>(c.head_dim);
      const bool layout_27b =
          c.num_hidden_layers == 46 && scalar == static_cast<double>(c.hidden_size / c.num_attention_heads);
      for (int64_t i = 0; c.sliding_window > 0 && i < c.num_hidden_layers; ++i) {
        if (c.layer_is_sliding(i) != (i % 2 == 0)) {
          throw_file_error(where,
                           "GGUF export of Gemma 2 needs sliding-window attention on every other layer "
                           "(0, 2, 4, ...), as llama.cpp computes it; layer_types says otherwise");
        }
      }
      if (!head && !layout_27b) {
        throw_file_error(where,
                         "GGUF export of this Gemma 2 config is not supported: query_pre_attn_scalar " +
                             std::to_string(static_cast<int64_t>(scalar)) + " differs from head_dim " +
                             std::to_string(c.head_dim),
                         "llama.cpp scales Gemma 2 attention by head_dim^-0.5 (hidden/heads for the 27B layout), so "
                         "the exported model would compute something else");
      }
      return "gemma2";
    }
    case io::Family::kQwen2:
    case io::Family::kQwen3:
      if (c.sliding_window > 0) {
        throw_file_error(where, "GGUF export of Qwen models with use_sliding_window is not supported",
                         "llama.cpp's qwen2/qwen3 architectures attend to the whole context");
      }
      return c.family == io::Family::kQwen2 ? "qwen2" : "qwen3";
  }
  throw_file_error(where, std::string("GGUF export of ") + io::family_name(c.family) + " models is not supported");
}

std::vector<std::string> ordered_tensor_names(const io::LlamaConfig& c) {
  std::vector<std::string> out = {"model.embed_tokens.weight"};
  const auto norms = io::layer_norms(c);
  const auto projections = io::layer_projections(c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back(p + norms[0].path + ".weight");  // input_layernorm
    for (const auto& pr : projections) {
      if (pr.group != "self_attn") continue;
      out.push_back(p + pr.path() + ".weight");
      if (pr.bias) out.push_back(p + pr.path() + ".bias");
    }
    for (size_t n = 1; n < norms.size(); ++n) out.push_back(p + norms[n].path + ".weight");
    for (const auto& pr : projections) {
      if (pr.group != "mlp") continue;
      out.push_back(p + pr.path() + ".weight");
      if (pr.bias) out.push_back(p + pr.path() + ".bias");
    }
  }
  out.push_back("model.norm.weight");
  if (!c.tie_word_embeddings) out.push_back("lm_head.weight");
  return out;
}

std::optional<std::string> family_tensor_name(const std::string& hf_name, const io::LlamaConfig& c) {
  if (llama_arch(c)) return gguf_tensor_name(hf_name);
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(hf_name, m, layer_re)) {
    const std::string rest = m[2];
    std::vector<std::pair<std::string, std::string>> map;
    if (c.family == io::Family::kPhi3) {
      map = {{"input_layernorm.weight", "attn_norm.weight"},    {"self_attn.qkv_proj.weight", "attn_qkv.weight"},
             {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
             {"mlp.gate_up_proj.weight", "ffn_up.weight"},      {"mlp.down_proj.weight", "ffn_down.weight"}};
    } else if (c.family == io::Family::kQwen2 || c.family == io::Family::kQwen3) {
      map = {{"input_layernorm.weight", "attn_norm.weight"},
             {"self_attn.q_proj.weight", "attn_q.weight"},
             {"self_attn.k_proj.weight", "attn_k.weight"},
             {"self_attn.v_proj.weight", "attn_v.weight"},
             {"self_attn.q_proj.bias", "attn_q.bias"},
             {"self_attn.k_proj.bias", "attn_k.bias"},
             {"self_attn.v_proj.bias", "attn_v.bias"},
             {"self_attn.q_norm.weight", "attn_q_norm.weight"},
             {"self_attn.k_norm.weight", "attn_k_norm.weight"},
             {"self_attn.o_proj.weight", "attn_output.weight"},
             {"post_attention_layernorm.weight", "ffn_norm.weight"},
             {"mlp.gate_proj.weight", "ffn_gate.weight"},
             {"mlp.up_proj.weight", "ffn_up.weight"},
             {"mlp.down_proj.weight", "ffn_down.weight"}};
    } else {  // Gemma 2
      map = {{"input_layernorm.weight", "attn_norm.weight"},
             {"self_attn.q_proj.weight", "attn_q.weight"},
             {"self_attn.k_proj.weight", "attn_k.weight"},
             {"self_attn.v_proj.weight", "attn_v.weight"},
             {"self_attn.o_proj.weight", "attn_output.weight"},
             {"post_attention_layernorm.weight", "post_attention_norm.weight"},
             {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
             {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
             {"mlp.gate_proj.weight", "ffn_gate.weight"},
             {"mlp.up_proj.weight", "ffn_up.weight"},
             {"mlp.down_proj.weight", "ffn_down.weight"}};
    }
    for (const auto& [hf, gg] : map) {
      if (rest == hf) return "blk." + std::string(m[1]) + "." + gg;
    }
    if (rest.find("rotary_emb.inv_freq") != std::string::npos) return std::nullopt;
    throw Error("tensor '" + hf_name + "' has no llama.cpp (GGUF) equivalent in the " +
                std::string(io::family_name(c.family)) + " architecture");
  }
  return gguf_tensor_name(hf_name);  // embeddings, final norm, lm_head: the same names in every architecture
}

torch::Tensor family_tensor_data(const std::string& hf_name, torch::Tensor t, const io::LlamaConfig& c) {
  if (llama_arch(c)) {
    if (const int64_t heads = permute_heads_for(hf_name, c)) t = permute_qk(t, heads);
    return t;
  }
  // Gemma's norms scale by (1 + w); llama.cpp's RMSNorm by w: the converter stores 1 + w.
  if (c.traits.norm_one_plus && ends_with(hf_name, "norm.weight")) t = t.to(torch::kFloat32) + 1.0;
  return t;
}

void add_family_hparams(GgufWriter& w, const io::LlamaConfig& c) {
  if (llama_arch(c)) {
    add_llama_hparams(w, c);
    return;
  }
  const std::string a = c.family == io::Family::kPhi3     ? "phi3"
                        : c.family == io::Family::kGemma2 ? "gemma2"
                        : c.family == io::Family::kQwen2  ? "qwen2"
                                                          : "qwen3";
  if (!c.rope_scaling.type.empty()) {
    throw Error("rope_scaling type '" + c.rope_scaling.type + "' cannot be exported to GGUF for " + a);
  }
  w.add_u32(a + ".context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.add_u32(a + ".embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.add_u32(a + ".block_count", static_cast<uint32_t>(c.num_hidden_layers));
  w.add_u32(a + ".feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.add_u32(a + ".attention.head_count", static_cast<uint32_t>(c.num_attention_heads));
  w.add_u32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.num_key_value_heads));
  w.add_f32(a + ".rope.freq_base", static_cast<float>(c.rope_theta));
  w.add_f32(a + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.add_u32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
  w.add_u32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  w.add_u32(a + ".rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  if (c.sliding_window > 0) w.add_u32(a + ".attention.sliding_window", static_cast<uint32_t>(c.sliding_window));
  if (c.family == io::Family::kPhi3) {
    w.add_u32(a + ".rope.scaling.original_context_length", static_cast<uint32_t>(c.max_position_embeddings));
  } else if (c.family == io::Family::kGemma2) {
    if (c.traits.attn_softcap > 0) w.add_f32(a + ".attn_logit_softcapping", static_cast<float>(c.traits.attn_softcap));
    if (c.traits.final_softcap > 0) {
      w.add_f32(a + ".final_logit_softcapping", static_cast<float>(c.traits.final_softcap));
    }
  }
}

}  // namespace qlora::gguf
