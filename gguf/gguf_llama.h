// The Llama-specific parts of a GGUF export, as llama.cpp's convert_hf_to_gguf.py (LlamaModel) does them:
// tensor names, the Q/K row permutation, per-tensor types, hyperparameter keys, llama3 rope factors and the
// sentencepiece vocabulary.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gguf/ggml_quants.h"
#include "gguf/gguf_quant_mix.h"
#include "gguf/gguf_writer.h"
#include "io/hf_config.h"

namespace qlora::gguf {

namespace fs = std::filesystem;

// --outtype: f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k. The last three are llama-quantize's K-quant
// mixes (gguf/gguf_quant_mix.h), byte-identical to llama-quantize run on our f16 export.
enum class OutType { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_K_M, kQ5_K_M, kQ6_K };
OutType parse_out_type(const std::string& name);  // qlora::Error listing the choices otherwise
std::string out_type_name(OutType t);
// general.file_type (llama.cpp LlamaFileType): ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7,
// MOSTLY_Q4_K_M 15, MOSTLY_Q5_K_M 17, MOSTLY_Q6_K 18, MOSTLY_BF16 32.
uint32_t llama_file_type(OutType t);
// q4_k_m / q5_k_m / q6_k: the weights are rounded to fp16 first (llama-quantize reads them from the f16 file).
bool is_kquant_mix(OutType t);

// HF tensor name -> llama.cpp name ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight").
// std::nullopt for tensors llama.cpp does not use (rotary_emb.inv_freq). Anything else unknown: qlora::Error.
std::optional<std::string> gguf_tensor_name(const std::string& hf_name);

// HF (half-split RoPE) rows -> llama.cpp's interleaved-pair rows, per head (convert_hf_to_gguf LlamaModel.permute):
// w (rows, ...) viewed as (n_head, 2, rows / n_head / 2, ...), axes 1 and 2 swapped, back to (rows, ...).
// Row r' = h*hd + 2*i + j of the result is row h*hd + j*hd/2 + i of the input. Used for q (n_head) and k (n_head_kv).
torch::Tensor permute_qk(const torch::Tensor& w, int64_t n_head);
// Which permutation a tensor needs: heads count for q/k projections (HF names), 0 for none.
int64_t permute_heads_for(const std::string& hf_name, const io::LlamaConfig& config);

// The ggml type of a tensor in a full-model export. 1-D tensors (norms, rope_freqs) are F32 always; 2-D weights take
// the outtype (token_embd and output too, as the converter does for q8_0), falling back to F16 when the row length is
// not a multiple of 32 for q8_0/q4_0. With q4_0, output.weight is Q8_0 (llama-quantize gives it a higher-precision
// type, Q6_K). The K-quant mixes choose per tensor as llama-quantize does (gguf/gguf_quant_mix.h), which needs the
// layer count and whether the model has an output.weight (`model`).
GgmlType tensor_type_for(const std::string& gguf_name, const std::vector<int64_t>& shape, OutType out,
                         const KQuantModel& model = {});

// llama3 rope scaling as llama.cpp consumes it: per rotary pair i (head_dim / 2 entries) the divisor of the base
// frequency freq_i = theta^(-2i/d): 1 for short wavelengths (< orig_ctx / high_freq_factor), `factor` for long ones
// (> orig_ctx / low_freq_factor), and 1 / ((1 - s) / factor + s) in between with s = (orig_ctx / wavelen - low) /
// (high - low). Empty unless config.rope_scaling.type == "llama3".
std::vector<float> llama3_rope_factors(const io::LlamaConfig& config);

// general.architecture "llama" hyperparameters (llama.context_length ... llama.vocab_size, rope scaling keys).
void add_llama_hparams(GgufWriter& w, const io::LlamaConfig& config);

// Sentencepiece vocabulary of `model_dir/tokenizer.model` as convert_hf_to_gguf's _set_vocab_sentencepiece writes it:
// tokenizer.ggml.model "llama", pre "default", tokens / scores / token_type (padded to vocab_size with "[PAD<i>]"
// UNUSED entries), special ids, add_bos_token true, add_eos_token false.
struct SentencePieceVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  // The model's chat template, as transformers finds it: chat_template.jinja beside the tokenizer, else
  // tokenizer_config.json's chat_template (a string, or the "default" entry of a list of {name, template}).
  // Written as tokenizer.chat_template, which llama.cpp uses to format chats. Empty: none.
  std::string chat_template;
};
SentencePieceVocab load_sentencepiece_vocab(const fs::path& model_dir, int64_t vocab_size,
                                            const io::LlamaConfig& config);
void add_sentencepiece_vocab(GgufWriter& w, const SentencePieceVocab& vocab);

// model_dir/<file> parsed (read_json_file), or null when the file does not exist.
nlohmann::json read_json_if_exists(const fs::path& file);
// The chat template as SentencePieceVocab::chat_template describes it ("" when none).
std::string read_chat_template(const fs::path& model_dir, const nlohmann::json& tok_config);

}  // namespace qlora::gguf
