// config.json parsing steps shared by io/hf_config.cpp and io/model_family.cpp (io/ internal).
#pragma once

#include <nlohmann/json.hpp>

#include "io/config_keys.h"
#include "io/hf_config.h"

namespace qlora::io {

// architectures / model_type -> c.family, c.architecture, c.model_type (an unknown one names what is supported).
void parse_family(const nlohmann::json& j, const detail::KeyReader& r, LlamaConfig& c);
// After the sizes: c.traits, c.hidden_act, c.sliding_window and c.sliding_layers.
void parse_family_details(const nlohmann::json& j, const detail::KeyReader& r, LlamaConfig& c);

}  // namespace qlora::io
