// Merging a PEFT LoRA adapter into its base model, streamed one tensor at a time from the base folder:
//   W' = W + scale · B · A      (W dequantized to fp32 first when the base is a bnb-4bit checkpoint)
// Output (an HF folder, written through AtomicDir — any error leaves nothing behind):
//   bf16 / fp16: 16-bit safetensors (HF sharding + index), config.json without quantization_config;
//   nf4: every decoder projection 4-bit in the bitsandbytes layout with the base's quant settings (NF4 + double
//        quant, blocksize 64 for a 16-bit base), config.json with quantization_config; reports the
//        re-quantization error of each projection.
// Tokenizer files and generation_config.json are copied.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace qlora::lora {

namespace fs = std::filesystem;

enum class MergeFormat { kBF16, kFP16, kNF4 };
MergeFormat parse_merge_format(const std::string& name);  // "bf16" | "fp16" | "nf4" (qlora::Error otherwise)
std::string merge_format_name(MergeFormat f);

// HF max_shard_size strings: "5GB" = 5e9 bytes, "500MB", "2GiB" = 2^31, "1000" (bytes). qlora::Error if malformed.
uint64_t parse_size_bytes(const std::string& text);

struct MergeOptions {
  fs::path base_dir;     // HF folder: 16-bit safetensors or a bnb-4bit checkpoint
  fs::path adapter_dir;  // PEFT adapter folder
  fs::path out_dir;
  MergeFormat format = MergeFormat::kBF16;
  uint64_t max_shard_bytes = 5'000'000'000ull;  // HF default "5GB"
  bool overwrite = false;
  bool show_progress = true;
};

// Re-quantization error of one 4-bit projection written to an nf4 output:
// mean_rel = mean|dequant(q(W')) - W'| / mean|W'|, max_rel = max|dequant(q(W')) - W'| / max|W'|.
struct RequantError {
  std::string module;
  bool merged = false;  // had an adapter
  double mean_rel = 0.0;
  double max_rel = 0.0;
};

struct MergeReport {
  fs::path out_dir;
  MergeFormat format = MergeFormat::kBF16;
  bool base_was_4bit = false;
  int64_t modules_merged = 0;
  int64_t tensors_written = 0;
  uint64_t bytes_read = 0;
  std::vector<std::string> files;     // written into out_dir
  std::vector<RequantError> requant;  // nf4 output only
  double requant_mean_rel = 0.0;      // mean over requant entries of mean_rel
  double requant_max_rel = 0.0;       // max over requant entries of max_rel
  double seconds = 0.0;
};

// Checks everything it can first (adapter keys and shapes against the base, output path) and fails with a
// qlora::Error before writing anything; then streams the base. Throws qlora::Interrupted on SIGINT/SIGTERM.
MergeReport merge_adapter(const MergeOptions& options);

}  // namespace qlora::lora
