// HF Llama folder -> GGUF model file, and PEFT LoRA adapter folder -> GGUF LoRA adapter, both loadable by llama.cpp.
//
// Model: 16-bit safetensors, or a bnb-4bit checkpoint (NF4/FP4 have no GGUF type: each projection is dequantized and
// re-encoded in the outtype), optionally with a PEFT adapter merged on the fly (W + scale * B @ A in fp32).
// Tensors stream one at a time from the mapped checkpoint; the file is written atomically.
//
// Adapter: lora_A (r, in) / lora_B (out, r) become `<gguf name>.weight.lora_a` (ne [in, r]) / `.lora_b` (ne [r, out]),
// B's rows permuted like the base q/k weights; adapter.lora.alpha is chosen so that llama.cpp's scale alpha / r equals
// PEFT's (alpha / r, or alpha / sqrt(r) with rsLoRA); per-module differences (alpha_pattern) are folded into B.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "gguf/gguf_llama.h"

namespace qlora::gguf {

namespace fs = std::filesystem;

struct ExportOptions {
  OutType out_type = OutType::kF16;
  fs::path adapter_dir;  // optional PEFT adapter to merge into the weights
  std::string name;      // general.name; default: the model folder's name
  bool overwrite = false;
  bool show_progress = true;
};

struct AdapterExportOptions {
  OutType out_type = OutType::kF32;  // f32 (llama.cpp's converter default) | f16 | bf16 | q8_0
  std::string name;                  // general.name; default: the adapter folder's name
  bool overwrite = false;
};

struct ExportSummary {
  fs::path path;
  int64_t tensors = 0;
  uint64_t bytes = 0;                              // file size
  std::map<std::string, int64_t> tensors_by_type;  // "Q8_0" -> count
  int64_t merged_modules = 0;                      // adapter modules merged (model export)
};

ExportSummary export_model_gguf(const fs::path& model_dir, const fs::path& out, const ExportOptions& options = {});

// `base_dir` gives the base model's config.json (head counts for the q/k permutation, shapes to validate against);
// empty: the adapter's base_model_name_or_path when it is a local folder.
ExportSummary export_adapter_gguf(const fs::path& adapter_dir, const fs::path& base_dir, const fs::path& out,
                                  const AdapterExportOptions& options = {});

}  // namespace qlora::gguf
