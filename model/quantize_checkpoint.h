// 16-bit HF Llama folder -> bnb-4bit HF folder (what qlora-quantize does), streaming one tensor at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "quant/quantized_tensor.h"

namespace qlora::model {

namespace fs = std::filesystem;

struct QuantizeCheckpointOptions {
  quant::QuantType type = quant::QuantType::kNF4;
  int64_t blocksize = quant::kDefaultBlocksize;
  bool double_quant = true;
  bool overwrite = false;
  uint64_t max_shard_bytes = 5ull << 30;
  std::vector<std::string> targets = io::llama_projection_names();
  bool show_progress = true;
};

struct QuantizeCheckpointSummary {
  int64_t tensors_quantized = 0;
  int64_t tensors_copied = 0;
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  double seconds = 0.0;
};

// Writes `out` atomically (AtomicDir): weights (model.safetensors or shards + index), config.json with
// "quantization_config" added, and the tokenizer / generation_config files copied. Rejects an input that
// is already quantized.
QuantizeCheckpointSummary quantize_checkpoint(const fs::path& in, const fs::path& out,
                                              const QuantizeCheckpointOptions& options);

}  // namespace qlora::model
