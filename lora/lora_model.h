// Attaching LoRA adapters to a LlamaModel: which projections get one (PEFT's target_modules matching, rank/alpha
// patterns), deterministic initialisation, and the handle the optimizer and the adapter writer use.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lora/lora_linear.h"
#include "model/llama.h"

namespace qlora::lora {

// `targets` value meaning every decoder projection (q/k/v/o/gate/up/down), never lm_head (PEFT's "all-linear").
inline constexpr const char* kAllLinear = "all-linear";
// The 7 decoder projection suffixes, in layer order.
const std::vector<std::string>& llama_projection_suffixes();

struct LoraConfig {
  int64_t r = 16;
  double alpha = 32.0;
  double dropout = 0.05;
  // Module-name suffixes (PEFT: name == t or name ends with "." + t), or {kAllLinear}.
  std::vector<std::string> targets = {kAllLinear};
  // When non-empty, replaces `targets`: a full-match regex over the module name (PEFT's string target_modules).
  std::string target_regex;
  bool rslora = false;
  torch::ScalarType dtype = torch::kFloat32;  // storage dtype of every adapter's A and B (LoraLinearOptions::dtype)
  // PEFT rank_pattern / alpha_pattern: key k matches module m when m == k or m fully matches "(.*\.)?(k)".
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
};

// Throws qlora::Error for r <= 0, dropout outside [0, 1), alpha <= 0, an empty target list.
void validate_lora_config(const LoraConfig& config);
// Whether `module` (an HF name) is targeted by `config`.
bool is_lora_target(const std::string& module, const LoraConfig& config);
// Rank/alpha/dropout/rslora for `module` after rank_pattern / alpha_pattern.
LoraLinearOptions lora_options_for(const std::string& module, const LoraConfig& config);
// The seed of one module's A: a hash of (seed, module name), so it does not depend on which others are targeted.
uint64_t module_seed(uint64_t seed, const std::string& module);

// The adapters attached to a model, in the model's named_linears order.
struct LoraAdapters {
  LoraConfig config;
  std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> modules;

  // The trainable tensors, deterministic order: A, B of each module in layer order.
  std::vector<torch::Tensor> adapter_parameters() const;
  // Same tensors under their PEFT file keys ("base_model.model.<module>.lora_A.weight", ...).
  std::vector<std::pair<std::string, torch::Tensor>> named_adapter_parameters() const;
  int64_t num_parameters() const;
  // nullptr when the module has no adapter.
  std::shared_ptr<LoraLinearImpl> find(const std::string& module) const;
  // Sorted unique last name components of the adapted modules ("q_proj", ...): adapter_config target_modules.
  std::vector<std::string> target_module_suffixes() const;
};

// The PEFT key of a module's A or B: "base_model.model.<module>.lora_A.weight" (which = 'A' or 'B').
std::string peft_key(const std::string& module, char which);

// Wraps every targeted projection in a LoraLinear (via replace_linear), initialised from `seed`, and freezes every
// other parameter of the model. Throws qlora::Error when a target matches no module, or a module already has an
// adapter. Afterwards exactly the adapter parameters require grad (checked).
LoraAdapters attach_lora(model::LlamaModel& model, const LoraConfig& config, uint64_t seed);

// Wraps exactly the modules in `ranks` (module -> options) — used to apply adapter files; same checks.
LoraAdapters attach_lora_modules(model::LlamaModel& model, const LoraConfig& config,
                                 const std::vector<std::pair<std::string, LoraLinearOptions>>& modules, uint64_t seed);

// Puts the base layers back (drops the adapters). Returns the number of modules restored.
int64_t detach_lora(model::LlamaModel& model, const LoraAdapters& adapters);

}  // namespace qlora::lora
