// PEFT LoRA adapter folders (huggingface/peft save_pretrained layout, formats.md section 3):
//   adapter_model.safetensors  keys base_model.model.<module>.lora_A.weight (r, in) / .lora_B.weight (out, r),
//                              metadata {"format": "pt"}
//   adapter_config.json        LoraConfig.to_dict(), json.dumps(indent=2, sort_keys=True)
// Reading accepts our files and PEFT-written ones (keys with or without the ".default" adapter name).
#pragma once

#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lora/lora_model.h"

namespace qlora::lora {

namespace fs = std::filesystem;

inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
// Written as adapter_config.json "peft_version": the PEFT release whose format these files follow.
inline constexpr const char* kPeftFormatVersion = "0.17.0";

struct SaveAdapterOptions {
  std::string base_model_name_or_path;        // adapter_config.json base_model_name_or_path (null if empty)
  torch::ScalarType dtype = torch::kFloat32;  // fp32 (PEFT default) | bf16 | fp16
  bool overwrite = false;
};

// One module's weights read from an adapter folder.
struct AdapterModule {
  std::string module;         // HF module name, e.g. "model.layers.0.self_attn.q_proj"
  torch::Tensor a;            // (r, in), dtype as stored
  torch::Tensor b;            // (out, r)
  LoraLinearOptions options;  // r, alpha (after rank/alpha patterns), dropout, rslora
  double scale() const { return lora_scale(options.r, options.alpha, options.rslora); }
};

struct AdapterFile {
  fs::path dir;
  LoraConfig config;
  std::string base_model_name_or_path;
  nlohmann::json raw_config;           // adapter_config.json as read
  std::vector<AdapterModule> modules;  // sorted by module name
  const AdapterModule* find(const std::string& module) const;
};

// adapter_config.json content for `adapters` (every PEFT LoraConfig field, PEFT defaults where we have no value).
nlohmann::json adapter_config_json(const LoraAdapters& adapters, const std::string& base_model_name_or_path);
// json.dumps(j, indent=2, sort_keys=True) as Python writes it (ASCII only, no trailing newline).
std::string dump_python_json(const nlohmann::json& j);

// Writes both files into `dir` (an existing folder; each file is written atomically). For checkpoints.
void write_adapter_files(const fs::path& dir, const LoraAdapters& adapters, const SaveAdapterOptions& options = {});
// Writes a new adapter folder atomically (AtomicDir): refuses an existing `dir` unless options.overwrite.
void save_adapter(const fs::path& dir, const LoraAdapters& adapters, const SaveAdapterOptions& options = {});

// Reads and validates an adapter folder: peft_type LORA, no DoRA / lora_bias / bias tensors, every key a lora_A or
// lora_B weight of a module (unknown key -> qlora::Error naming it), A and B present for each module with ranks
// matching the config (r / rank_pattern). Tensors stay on the CPU in their stored dtype.
AdapterFile load_adapter(const fs::path& dir);
// Parses adapter_config.json content into a LoraConfig (source names the file in errors).
LoraConfig parse_adapter_config(const nlohmann::json& j, const std::string& source);

// Checks each adapter module exists in `shapes` (module -> {out, in}) and that A is (r, in) and B (out, r).
// Errors name the module and the expected and found shapes. `base_desc` names the base in messages.
void check_adapter_shapes(const AdapterFile& adapter, const std::map<std::string, std::pair<int64_t, int64_t>>& shapes,
                          const std::string& base_desc);

// Attaches the adapter's modules to `model` with the file's weights (after check_adapter_shapes).
LoraAdapters apply_adapter(model::LlamaModel& model, const AdapterFile& adapter);

}  // namespace qlora::lora
