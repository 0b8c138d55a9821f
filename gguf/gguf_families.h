// The per-family parts of a full-model GGUF export, as llama.cpp's convert_hf_to_gguf.py writes them:
//   llama, mistral  general.architecture "llama": q/k rows permuted to interleaved rotary pairs (gguf_llama.h)
//   phi3            "phi3": fused attn_qkv and ffn_up (= [gate; up]), NEOX rotary (no permutation), sliding window
//   gemma2          "gemma2": norms stored as 1 + weight, post_attention_norm / ffn_norm / post_ffw_norm, soft-capping
//                   and sliding-window keys (llama.cpp derives the attention scale from the head size, so
//                   query_pre_attn_scalar must equal head_dim, or hidden/heads in the 46-layer 27B layout)
//   qwen2, qwen3    "qwen2" / "qwen3": NEOX rotary (no permutation), q/k/v biases (Qwen2), attn_q_norm / attn_k_norm
//                   (Qwen3), output.weight left out when the embeddings are tied (llama.cpp reuses token_embd);
//                   their byte-level BPE vocabulary is gguf_bpe_vocab.h's
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "io/hf_config.h"

namespace qlora::gguf {

// general.architecture for the model; qlora::Error naming the family (and `config_json`) when it cannot be exported.
std::string gguf_architecture(const io::LlamaConfig& c, const std::filesystem::path& config_json);

// HF tensor names of the model in llama.cpp's natural order: embeddings, each layer's tensors, norm, head.
std::vector<std::string> ordered_tensor_names(const io::LlamaConfig& c);

// HF tensor name -> llama.cpp name for the model's family (nullopt: not exported, e.g. rotary_emb.inv_freq).
std::optional<std::string> family_tensor_name(const std::string& hf_name, const io::LlamaConfig& c);

// The tensor as llama.cpp's architecture wants it (q/k permutation for llama, 1 + w for Gemma's norms).
torch::Tensor family_tensor_data(const std::string& hf_name, torch::Tensor t, const io::LlamaConfig& c);

// The <arch>.* hyperparameters.
void add_family_hparams(GgufWriter& w, const io::LlamaConfig& c);

}  // namespace qlora::gguf
