#include "lora/peft_io.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <map>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "io/safetensors.h"

namespace qlora::lora {

namespace {

constexpr const char* kKeyPrefix = "base_model.model.";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
std::string shape_str(torch::IntArrayRef s) {
  return shape_str(s.vec());
}

// A number as PEFT would have it in the json: integral values as ints (lora_alpha is an int in most configs).
nlohmann::json json_number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

// "<module>.lora_A.weight" / "<module>.lora_A.<adapter>.weight" -> module, which, adapter. False if not of that form.
bool parse_lora_key(const std::string& rest, std::string& module, char& which, std::string& adapter) {
  for (const char w : {'A', 'B'}) {
    const std::string tag = std::string(".lora_") + w + ".";
    const auto pos = rest.find(tag);
    if (pos == std::string::npos || pos == 0) continue;
    const std::string tail = rest.substr(pos + tag.size());  // "weight" or "<adapter>.weight"
    if (tail == "weight") {
      adapter.clear();
    } else if (tail.size() > 7 && tail.compare(tail.size() - 7, 7, ".weight") == 0 &&
               tail.find('.') == tail.size() - 7) {
      adapter = tail.substr(0, tail.size() - 7);
    } else {
      return false;
    }
    module = rest.substr(0, pos);
    which = w;
    return true;
  }
  return false;
}

std::string unknown_key_hint(const std::string& key) {
  if (key.find("lora_magnitude_vector") != std::string::npos) return "DoRA adapters (use_dora) are not supported";
  if (key.find("lora_embedding_") != std::string::npos) return "LoRA on embeddings is not supported";
  if (key.find("modules_to_save") != std::string::npos || key.find("base_layer") != std::string::npos ||
      (key.size() >= 5 && key.compare(key.size() - 5, 5, ".bias") == 0)) {
    return "only lora_A / lora_B weights are supported (no biases, no modules_to_save)";
  }
  return "expected only base_model.model.<module>.lora_A.weight and .lora_B.weight keys";
}

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw_file_error(source, fmt::format("key '{}' has the wrong type: {}", key, json_excerpt(j.at(key))));
  }
}

}  // namespace

const AdapterModule* AdapterFile::find(const std::string& module) const {
  for (const auto& m : modules) {
    if (m.module == module) return &m;
  }
  return nullptr;
}

std::string dump_python_json(const nlohmann::json& j) {
  return j.dump(2, ' ', /*ensure_ascii=*/true);
}

nlohmann::json adapter_config_json(const LoraAdapters& adapters, const std::string& base_model_name_or_path) {
  const LoraConfig& c = adapters.config;
  nlohmann::json j = nlohmann::json::object();
  auto patterns = [](const auto& m) {
    nlohmann::json o = nlohmann::json::object();
    for (const auto& [k, v] : m) o[k] = json_number(static_cast<double>(v));
    return o;
  };
  j["alpha_pattern"] = patterns(c.alpha_pattern);
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] =
      base_model_name_or_path.empty() ? nlohmann::json() : nlohmann::json(base_model_name_or_path);
  j["bias"] = "none";
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["loftq_config"] = nlohmann::json::object();
  j["lora_alpha"] = json_number(c.alpha);
  j["lora_bias"] = false;
  j["lora_dropout"] = c.dropout;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["peft_version"] = kPeftFormatVersion;
  j["r"] = c.r;
  j["rank_pattern"] = patterns(c.rank_pattern);
  j["revision"] = nullptr;
  if (!c.target_regex.empty()) {
    j["target_modules"] = c.target_regex;
  } else {
    j["target_modules"] = adapters.target_module_suffixes();  // PEFT expands all-linear to the names it found
  }
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = false;
  j["use_rslora"] = c.rslora;
  return j;
}

void write_adapter_files(const fs::path& dir, const LoraAdapters& adapters, const SaveAdapterOptions& options) {
  TORCH_CHECK(options.dtype == torch::kFloat32 || options.dtype == torch::kBFloat16 || options.dtype == torch::kFloat16,
              "adapter dtype must be fp32, bf16 or fp16");
  if (adapters.modules.empty()) throw Error("save_adapter: there are no adapters to save");
  io::NamedTensors tensors;
  for (const auto& [key, t] : adapters.named_adapter_parameters()) {
    tensors.emplace_back(key, t.detach().to(torch::kCPU, options.dtype).contiguous());
  }
  io::save_safetensors(dir / kAdapterWeightsFile, tensors, {{"format", "pt"}});
  write_file_atomic(dir / kAdapterConfigFile,
                    dump_python_json(adapter_config_json(adapters, options.base_model_name_or_path)));
}

void save_adapter(const fs::path& dir, const LoraAdapters& adapters, const SaveAdapterOptions& options) {
  AtomicDir out(dir, options.overwrite);
  write_adapter_files(out.path(), adapters, options);
  out.commit();
  spdlog::info("saved LoRA adapter ({} modules, {} parameters) to {}", adapters.modules.size(),
               adapters.num_parameters(), dir.string());
}

LoraConfig parse_adapter_config(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw_file_error(source, "not a JSON object");
  const auto peft_type = get_or<std::string>(j, "peft_type", "", source);
  if (peft_type != "LORA") {
    throw_file_error(source, fmt::format("peft_type is '{}', only LORA adapters are supported", peft_type));
  }
  if (get_or<bool>(j, "use_dora", false, source)) {
    throw_file_error(source, "use_dora is true: DoRA adapters are not supported");
  }
  if (get_or<bool>(j, "lora_bias", false, source)) {
    throw_file_error(source, "lora_bias is true: LoRA B biases are not supported");
  }
  LoraConfig c;
  c.r = get_or<int64_t>(j, "r", 8, source);  // PEFT defaults
  c.alpha = get_or<double>(j, "lora_alpha", 8.0, source);
  c.dropout = get_or<double>(j, "lora_dropout", 0.0, source);
  c.rslora = get_or<bool>(j, "use_rslora", false, source);
  c.targets.clear();
  if (j.contains("target_modules") && !j.at("target_modules").is_null()) {
    const auto& t = j.at("target_modules");
    if (t.is_string()) {
      if (t.get<std::string>() == kAllLinear) {
        c.targets = {kAllLinear};
      } else {
        c.target_regex = t.get<std::string>();
      }
    } else if (t.is_array()) {
      for (const auto& s : t) {
        if (!s.is_string()) throw_file_error(source, "target_modules must hold strings, found " + json_excerpt(s));
        c.targets.push_back(s.get<std::string>());
      }
    } else {
      throw_file_error(source, "target_modules must be a list or a string, found " + json_excerpt(t));
    }
  }
  if (c.targets.empty() && c.target_regex.empty()) c.targets = {kAllLinear};
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j.at(key).is_null()) continue;
    if (!j.at(key).is_object()) throw_file_error(source, std::string(key) + " must be an object");
    for (const auto& [k, v] : j.at(key).items()) {
      if (!v.is_number()) throw_file_error(source, fmt::format("{}['{}'] must be a number", key, k));
      if (std::string(key) == "rank_pattern") {
        if (!v.is_number_integer()) throw_file_error(source, fmt::format("rank_pattern['{}'] must be an integer", k));
        c.rank_pattern[k] = v.get<int64_t>();
      } else {
        c.alpha_pattern[k] = v.get<double>();
      }
    }
  }
  if (get_or<bool>(j, "fan_in_fan_out", false, source)) {
    // PEFT itself resets fan_in_fan_out to false for nn.Linear targets (all Llama projections); A/B shapes are
    // (r, in) / (out, r) either way.
    spdlog::warn("{}: fan_in_fan_out is true; ignored as PEFT does for nn.Linear layers", source);
  }
  try {
    validate_lora_config(c);
  } catch (const Error& e) {
    throw_file_error(source, e.what());
  }
  return c;
}

AdapterFile load_adapter(const fs::path& dir) {
  const fs::path weights_path = dir / kAdapterWeightsFile;
  const fs::path config_path = dir / kAdapterConfigFile;
  if (!fs::is_directory(dir)) throw_file_error(dir.string(), "adapter folder not found");
  if (!fs::exists(weights_path)) {
    throw_file_error(weights_path.string(), "missing",
                     fs::exists(dir / "adapter_model.bin")
                         ? "adapter_model.bin (pickle) is not supported; convert it to safetensors with PEFT"
                         : "an adapter folder holds adapter_model.safetensors and adapter_config.json");
  }
  AdapterFile out;
  out.dir = dir;
  out.raw_config = read_json_file(config_path);
  out.config = parse_adapter_config(out.raw_config, config_path.string());
  out.base_model_name_or_path =
      get_or<std::string>(out.raw_config, "base_model_name_or_path", "", config_path.string());
  const std::string bias = get_or<std::string>(out.raw_config, "bias", "none", config_path.string());

  auto file = io::SafetensorsFile::open(weights_path);
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> found;
  std::set<std::string> adapter_names;
  for (const auto& info : file->tensors()) {
    std::string module, adapter;
    char which = 0;
    const bool prefixed = info.name.rfind(kKeyPrefix, 0) == 0;
    if (!prefixed || !parse_lora_key(info.name.substr(std::string(kKeyPrefix).size()), module, which, adapter)) {
      throw_file_error(weights_path.string(), fmt::format("unknown key '{}'", info.name), unknown_key_hint(info.name));
    }
    if (info.shape.size() != 2) {
      throw_file_error(weights_path.string(),
                       fmt::format("'{}' has shape {}, expected a 2-D weight", info.name, shape_str(info.shape)));
    }
    if (!c10::isFloatingType(info.dtype)) {
      throw_file_error(weights_path.string(),
                       fmt::format("'{}' has dtype {}, expected F32/BF16/F16", info.name, info.dtype_name));
    }
    adapter_names.insert(adapter);
    auto& slot = which == 'A' ? found[module].first : found[module].second;
    if (slot.defined()) {
      throw_file_error(weights_path.string(), fmt::format("module '{}' has two lora_{} weights", module, which));
    }
    slot = file->get(info.name).clone();
  }
  if (adapter_names.size() > 1) {
    throw_file_error(weights_path.string(), "holds several named adapters; save one adapter per folder");
  }
  if (found.empty()) throw_file_error(weights_path.string(), "holds no LoRA weights");
  if (bias != "none")
    spdlog::warn("{}: bias is '{}' but no bias tensors are present; ignored", config_path.string(), bias);

  for (auto& [module, ab] : found) {
    auto& [a, b] = ab;
    if (!a.defined() || !b.defined()) {
      throw_file_error(weights_path.string(), fmt::format("module '{}' has lora_{} but no lora_{}", module,
                                                          a.defined() ? 'A' : 'B', a.defined() ? 'B' : 'A'));
    }
    AdapterModule m;
    m.module = module;
    m.options = lora_options_for(module, out.config);
    if (a.size(0) != b.size(1)) {
      throw_file_error(weights_path.string(), fmt::format("module '{}': lora_A {} and lora_B {} disagree on the rank",
                                                          module, shape_str(a.sizes()), shape_str(b.sizes())));
    }
    if (a.size(0) != m.options.r) {
      throw_file_error(weights_path.string(),
                       fmt::format("module '{}': rank {} in the weights but r = {} in {} (r / rank_pattern)", module,
                                   a.size(0), m.options.r, kAdapterConfigFile));
    }
    m.a = a;
    m.b = b;
    out.modules.push_back(std::move(m));
  }
  return out;
}

void check_adapter_shapes(const AdapterFile& adapter, const std::map<std::string, std::pair<int64_t, int64_t>>& shapes,
                          const std::string& base_desc) {
  const std::string where = (adapter.dir / kAdapterWeightsFile).string();
  for (const auto& m : adapter.modules) {
    auto it = shapes.find(m.module);
    if (it == shapes.end()) {
      throw_file_error(where, fmt::format("module '{}' does not exist in {}", m.module, base_desc),
                       "is this adapter for another base model?");
    }
    const auto [out_f, in_f] = it->second;
    const std::vector<int64_t> want_a = {m.options.r, in_f}, want_b = {out_f, m.options.r};
    if (m.a.sizes().vec() != want_a || m.b.sizes().vec() != want_b) {
      const bool a_bad = m.a.sizes().vec() != want_a;
      throw_file_error(where,
                       fmt::format("module '{}': lora_{} has shape {} but {} needs {} (base projection {} x {})",
                                   m.module, a_bad ? 'A' : 'B', shape_str(a_bad ? m.a.sizes() : m.b.sizes()), base_desc,
                                   shape_str(a_bad ? want_a : want_b), out_f, in_f),
                       "is this adapter for another base model?");
    }
  }
}

LoraAdapters apply_adapter(model::LlamaModel& model, const AdapterFile& adapter) {
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;
  for (const auto& [name, layer] : model->named_linears()) shapes[name] = {layer->out_features(), layer->in_features()};
  check_adapter_shapes(adapter, shapes, "the model");
  std::vector<std::pair<std::string, LoraLinearOptions>> modules;
  for (const auto& m : adapter.modules) modules.emplace_back(m.module, m.options);
  LoraAdapters out = attach_lora_modules(model, adapter.config, modules, /*seed=*/0);
  for (const auto& [name, layer] : out.modules) {
    const AdapterModule* m = adapter.find(name);
    TORCH_CHECK(m != nullptr, "apply_adapter: lost module ", name);
    layer->set_weights(m->a, m->b);
  }
  return out;
}

}  // namespace qlora::lora
