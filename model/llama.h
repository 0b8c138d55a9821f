// The decoder of every family in io/hf_config.h in LibTorch on a frozen 4-bit base (HF transformers' modeling_llama
// semantics, with the family's differences from io::FamilyTraits):
// embed -> N x [x + o(attn(rmsnorm(x))); h + down(silu(gate(n)) * up(n))] -> rmsnorm -> lm_head.
// Device-generic: nothing here assumes CPU.
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"
#include "model/linear.h"
#include "quant/quantized_tensor.h"

namespace qlora::model {

namespace fs = std::filesystem;

// How load_model builds the frozen base.
struct LoadOptions {
  torch::ScalarType compute_dtype = torch::kBFloat16;  // bf16 | fp16 | fp32
  // nullopt: keep the projections dense in compute_dtype (quant type `none`).
  std::optional<quant::QuantType> quant = quant::QuantType::kNF4;
  int64_t blocksize = quant::kDefaultBlocksize;
  bool double_quant = true;
  // lm_head quantized like the projections (qlora-generate --quantize-lm-head: lm_head is the largest weight a decoded
  // token reads). qlora::Error when quant is nullopt or lm_head is tied to the embedding.
  bool quantize_lm_head = false;
  // With fp32 compute on the CPU, a dense lm_head stored in bf16 stays bf16 (not an fp32 copy): half the memory, and a
  // decoded token reads it at 2 bytes an element (ops::gemv_bf16); prompts and other many-row calls convert it per
  // call. For inference (qlora-generate); training keeps the fp32 copy its every step multiplies.
  bool lm_head_16bit = false;
  // Which projections to quantize (suffixes); others stay dense.
  std::vector<std::string> quant_targets = io::llama_projection_names();
  torch::Device device = torch::kCPU;
  bool show_progress = true;
};

// Per-call inputs besides input_ids. All (B, T); any may be undefined.
struct ForwardInputs {
  torch::Tensor attention_mask;  // int64/bool 1 = real token, 0 = padding (keys masked out)
  torch::Tensor position_ids;    // int64; default arange(T) (+ cache length). Packed batches restart per example.
  torch::Tensor segment_ids;     // int32/int64; tokens attend only within the same segment (packing)
};

// Key/value cache for generation (no autograd through it). Per layer a (B, n_kv, capacity, head_dim) buffer whose
// first length() positions hold the keys / values so far: each forward writes its new positions in place, never
// copying the past. reserve() before the first forward sizes the buffers for the whole generation (prompt +
// max_new_tokens); a forward past the capacity grows them (at least doubling, copying what is filled).
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer: the buffers (undefined before the first forward)
  int64_t filled = 0;               // positions written
  int64_t reserved = 0;             // capacity the first allocation makes room for
  // Batch-1 decoding on the CPU runs plain Llama layers of 4-bit projections through model/decode_layer.h (same
  // bits, less overhead; a token's layers in one decode_layers_cpu call where all of them take it); false: through
  // LibTorch ops like any other forward (tests compare the two).
  bool fused_decode = true;
  int64_t fused_layer_steps = 0;  // layer runs that took it (tests and benchmarks check it was taken)

  int64_t length() const { return filled; }
  int64_t capacity() const { return k.empty() || !k[0].defined() ? 0 : k[0].size(2); }
  void reserve(int64_t positions) { reserved = positions; }
};

// Which run of a decoder layer a LayerHooks call is about (see set_layer_hooks).
enum class LayerPass {
  kForward,            // a forward whose graph (if any) keeps what backward needs: no recompute follows
  kForwardCheckpoint,  // the no-grad forward of a checkpointed layer: it is recomputed (kRecompute) in backward
  kRecompute,          // the recompute of a checkpointed layer during backward (backward order: last layer first)
};

// Called around every run of a decoder layer (e.g. model/layer_streaming.h puts the layer's frozen weights in
// device memory in `before` and releases them in `after`). Either may be empty.
struct LayerHooks {
  std::function<void(int64_t layer, LayerPass pass)> before;
  std::function<void(int64_t layer, LayerPass pass)> after;
};

class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(io::LlamaConfig config, torch::ScalarType compute_dtype);

  const io::LlamaConfig& config() const { return config_; }
  torch::ScalarType compute_dtype() const { return compute_dtype_; }

  // input_ids: (B, T) int64 -> final hidden states (B, T, H) in compute dtype (after the final norm).
  torch::Tensor forward_hidden(const torch::Tensor& input_ids, const ForwardInputs& in = {}, KVCache* cache = nullptr);
  // hidden (B, T, H) -> logits (B, T, V) in fp32.
  torch::Tensor logits(const torch::Tensor& hidden);
  // input_ids -> logits (B, T, V) fp32.
  torch::Tensor forward(const torch::Tensor& input_ids, const ForwardInputs& in = {}, KVCache* cache = nullptr);

  // Causal LM loss with HF semantics: logits at t predict labels at t+1; label -100 is ignored.
  // Computes logits in sequence chunks of `chunk_tokens` so (T, V) fp32 logits are never all materialized.
  // Returns {sum of token losses (scalar fp32, differentiable), number of counted tokens}.
  std::pair<torch::Tensor, int64_t> causal_lm_loss(const torch::Tensor& input_ids, const torch::Tensor& labels,
                                                   const ForwardInputs& in = {}, int64_t chunk_tokens = 1024);

  // Every projection with its HF module name ("model.layers.0.self_attn.q_proj", ..., "lm_head" when it is
  // a LinearLayer), in layer order.
  std::vector<std::pair<std::string, LinearLayerPtr>> named_linears() const;
  // Swap the projection named `hf_name` (as in named_linears) for another LinearLayer (e.g. a LoRA wrapper).
  void replace_linear(const std::string& hf_name, LinearLayerPtr layer);

  // Rerun each decoder layer in backward instead of keeping its activations.
  void set_gradient_checkpointing(bool on);
  bool gradient_checkpointing() const;
  // Installs hooks run around each decoder layer (replaces earlier ones; default-constructed: none).
  void set_layer_hooks(LayerHooks hooks);

  // Non-linear tensors by HF name (embeddings, norms, projection biases, and lm_head when dense): for saving/merging.
  // These are the model's own tensors (copy_ into them to set weights).
  std::vector<std::pair<std::string, torch::Tensor>> named_dense_tensors() const;

  // Random weights (tests, benchmarks): projections dense N(0, stddev) in the compute dtype, embeddings
  // N(0, stddev), norm weights 1 + N(0, 0.1). Uses the global torch RNG (torch::manual_seed).
  void init_weights(double stddev = 0.02);
  // Where the weights live (the embedding's device).
  torch::Device device() const;

 private:
  // hidden (..., H) -> logits (..., V) in the compute dtype (the loss reads them without an fp32 copy).
  torch::Tensor head_logits(const torch::Tensor& hidden);

  struct Impl;
  std::shared_ptr<Impl> impl_;
  io::LlamaConfig config_;
  torch::ScalarType compute_dtype_;
};
TORCH_MODULE(LlamaModel);

// Reads config.json and streams the weights shard by shard from an HF folder (16-bit safetensors, or a
// bnb-4bit checkpoint, detected by quantization_config), quantizing each target projection as it is read
// and releasing the 16-bit data at once. Missing/extra tensors, wrong shapes or dtypes: one qlora::Error
// listing them.
LlamaModel load_model(const fs::path& dir, const LoadOptions& options = {});

}  // namespace qlora::model
