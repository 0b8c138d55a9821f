// load_model (declared in model/llama.h) lives in loader.cpp. This header exposes the pieces it is built from
// so qlora-quantize and tests can reuse them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "io/hf_config.h"

namespace qlora::model {

// Every tensor name an HF LlamaForCausalLM checkpoint of this config holds, with its shape
// (lm_head.weight only when untied).
std::map<std::string, std::vector<int64_t>> expected_llama_tensors(const io::LlamaConfig& config);

// True for projection names ("...q_proj.weight") whose module name ends with one of `targets`.
bool is_projection_target(const std::string& tensor_name, const std::vector<std::string>& targets);

}  // namespace qlora::model
