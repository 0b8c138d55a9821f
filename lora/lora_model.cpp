#include "lora/lora_model.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <regex>
#include <set>
#include <unordered_set>

#include "common/error.h"
#include "common/hash.h"

namespace qlora::lora {

namespace {

bool ends_with_component(const std::string& name, const std::string& suffix) {
  if (name == suffix) return true;
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         name[name.size() - suffix.size() - 1] == '.';
}

bool is_decoder_projection(const std::string& name) {
  for (const auto& s : llama_projection_suffixes()) {
    if (ends_with_component(name, s)) return true;
  }
  return false;
}

// PEFT get_pattern_key: exact name, else re.match(rf"(.*\.)?({key})$", name).
template <typename V>
const V* match_pattern(const std::map<std::string, V>& patterns, const std::string& module) {
  for (const auto& [key, value] : patterns) {
    if (key == module) return &value;
  }
  for (const auto& [key, value] : patterns) {
    try {
      if (std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"))) return &value;
    } catch (const std::regex_error& e) {
      throw Error(fmt::format("LoRA rank_pattern/alpha_pattern key '{}' is not a valid regex: {}", key, e.what()));
    }
  }
  return nullptr;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Where a base layer's data lives (adapters go to the same device).
torch::Device layer_device(const model::LinearLayerPtr& layer) {
  if (auto frozen = std::dynamic_pointer_cast<model::FrozenLinearImpl>(layer)) {
    return frozen->is_quantized() ? frozen->quantized_weight().device() : frozen->dense_weight_ref().device();
  }
  for (const auto& p : layer->parameters(/*recurse=*/true)) return p.device();
  for (const auto& b : layer->buffers(/*recurse=*/true)) return b.device();
  return torch::kCPU;
}

std::string join(const std::vector<std::string>& v, size_t max_items = 12) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > max_items) out += fmt::format(", ... ({} in all)", v.size());
  return out;
}

// Freeze everything but the adapters, then check that exactly the adapter tensors require grad.
void freeze_all_but(model::LlamaModel& model, const LoraAdapters& adapters) {
  std::unordered_set<const void*> mine;
  for (const auto& t : adapters.adapter_parameters()) mine.insert(t.unsafeGetTensorImpl());
  int64_t frozen = 0;
  for (auto& p : model->parameters(/*recurse=*/true)) {
    if (!mine.count(p.unsafeGetTensorImpl()) && p.requires_grad()) {
      p.set_requires_grad(false);
      ++frozen;
    }
  }
  if (frozen > 0) spdlog::debug("attach_lora: froze {} non-adapter parameter tensors", frozen);
  for (const auto& np : model->named_parameters(/*recurse=*/true)) {
    TORCH_CHECK(np.value().requires_grad() == (mine.count(np.value().unsafeGetTensorImpl()) > 0),
                "after attach_lora, parameter ", np.key(), " has requires_grad=", np.value().requires_grad());
  }
}

}  // namespace

const std::vector<std::string>& llama_projection_suffixes() {
  return io::llama_projection_names();
}

void validate_lora_config(const LoraConfig& c) {
  if (c.r <= 0) throw Error(fmt::format("LoRA r must be positive, got {}", c.r));
  if (!(c.alpha > 0)) throw Error(fmt::format("LoRA alpha must be positive, got {}", c.alpha));
  if (!(c.dropout >= 0.0 && c.dropout < 1.0)) {
    throw Error(fmt::format("LoRA dropout must be in [0, 1), got {}", c.dropout));
  }
  if (c.targets.empty() && c.target_regex.empty()) {
    throw Error("LoRA target modules are empty\nHINT: list suffixes such as q_proj, v_proj, or use all-linear");
  }
  if (c.dtype != torch::kFloat32 && c.dtype != torch::kBFloat16 && c.dtype != torch::kFloat16) {
    throw Error(fmt::format("LoRA weight dtype must be fp32, bf16 or fp16, got {}", c10::toString(c.dtype)));
  }
  for (const auto& [k, v] : c.rank_pattern) {
    if (v <= 0) throw Error(fmt::format("LoRA rank_pattern['{}'] must be positive, got {}", k, v));
  }
}

bool is_lora_target(const std::string& module, const LoraConfig& c) {
  if (!c.target_regex.empty()) {
    try {
      return std::regex_match(module, std::regex(c.target_regex));
    } catch (const std::regex_error& e) {
      throw Error(fmt::format("LoRA target_modules regex '{}' is invalid: {}", c.target_regex, e.what()));
    }
  }
  for (const auto& t : c.targets) {
    if (t == kAllLinear ? is_decoder_projection(module) : ends_with_component(module, t)) return true;
  }
  return false;
}

LoraLinearOptions lora_options_for(const std::string& module, const LoraConfig& c) {
  LoraLinearOptions o;
  o.r = c.r;
  o.alpha = c.alpha;
  o.dropout = c.dropout;
  o.rslora = c.rslora;
  o.dtype = c.dtype;
  if (const int64_t* r = match_pattern(c.rank_pattern, module)) o.r = *r;
  if (const double* a = match_pattern(c.alpha_pattern, module)) o.alpha = *a;
  return o;
}

uint64_t module_seed(uint64_t seed, const std::string& module) {
  return splitmix64(seed ^ splitmix64(fnv1a64(module)));
}

std::string peft_key(const std::string& module, char which) {
  TORCH_CHECK(which == 'A' || which == 'B', "peft_key: which must be 'A' or 'B'");
  return "base_model.model." + module + ".lora_" + which + ".weight";
}

std::vector<torch::Tensor> LoraAdapters::adapter_parameters() const {
  std::vector<torch::Tensor> out;
  out.reserve(modules.size() * 2);
  for (const auto& [name, layer] : modules) {
    out.push_back(layer->lora_A());
    out.push_back(layer->lora_B());
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> LoraAdapters::named_adapter_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(modules.size() * 2);
  for (const auto& [name, layer] : modules) {
    out.emplace_back(peft_key(name, 'A'), layer->lora_A());
    out.emplace_back(peft_key(name, 'B'), layer->lora_B());
  }
  return out;
}

int64_t LoraAdapters::num_parameters() const {
  int64_t n = 0;
  for (const auto& t : adapter_parameters()) n += t.numel();
  return n;
}

std::shared_ptr<LoraLinearImpl> LoraAdapters::find(const std::string& module) const {
  for (const auto& [name, layer] : modules) {
    if (name == module) return layer;
  }
  return nullptr;
}

std::vector<std::string> LoraAdapters::target_module_suffixes() const {
  std::set<std::string> s;
  for (const auto& [name, layer] : modules) {
    auto dot = name.rfind('.');
    s.insert(dot == std::string::npos ? name : name.substr(dot + 1));
  }
  return {s.begin(), s.end()};
}

LoraAdapters attach_lora_modules(model::LlamaModel& model, const LoraConfig& config,
                                 const std::vector<std::pair<std::string, LoraLinearOptions>>& modules, uint64_t seed) {
  validate_lora_config(config);
  std::map<std::string, model::LinearLayerPtr> linears;
  std::vector<std::string> order;
  for (const auto& [name, layer] : model->named_linears()) {
    linears[name] = layer;
    order.push_back(name);
  }
  std::map<std::string, LoraLinearOptions> wanted;
  for (const auto& [name, opts] : modules) {
    if (!linears.count(name)) {
      throw Error(fmt::format("LoRA module '{}' does not exist in the model\nHINT: the model's projections are: {}",
                              name, join(order)));
    }
    wanted[name] = opts;
  }
  LoraAdapters out;
  out.config = config;
  for (const auto& name : order) {  // layer order, independent of the order of `modules`
    auto it = wanted.find(name);
    if (it == wanted.end()) continue;
    const auto& base = linears[name];
    if (std::dynamic_pointer_cast<LoraLinearImpl>(base)) {
      throw Error(fmt::format("module '{}' already has a LoRA adapter\nHINT: attach adapters once per model", name));
    }
    auto layer = std::make_shared<LoraLinearImpl>(base, it->second, module_seed(seed, name), layer_device(base));
    if (!model->is_training()) layer->eval();
    model->replace_linear(name, layer);
    out.modules.emplace_back(name, layer);
  }
  freeze_all_but(model, out);
  spdlog::info("LoRA: {} adapters, {} trainable parameters (r={}, alpha={}, {})", out.modules.size(),
               out.num_parameters(), config.r, config.alpha, config.rslora ? "rsLoRA alpha/sqrt(r)" : "alpha/r");
  return out;
}

LoraAdapters attach_lora(model::LlamaModel& model, const LoraConfig& config, uint64_t seed) {
  validate_lora_config(config);
  std::vector<std::pair<std::string, LoraLinearOptions>> modules;
  std::vector<std::string> names;
  for (const auto& [name, layer] : model->named_linears()) {
    names.push_back(name);
    if (is_lora_target(name, config)) modules.emplace_back(name, lora_options_for(name, config));
  }
  if (config.target_regex.empty()) {
    for (const auto& t : config.targets) {
      bool hit = false;
      for (const auto& n : names) hit = hit || (t == kAllLinear ? is_decoder_projection(n) : ends_with_component(n, t));
      if (!hit) {
        throw Error(fmt::format(
            "LoRA target '{}' matches no module of the model\nHINT: the model's projections are: {}", t, join(names)));
      }
    }
  }
  if (modules.empty()) {
    throw Error(
        fmt::format("LoRA targets match no module of the model\nHINT: the model's projections are: {}", join(names)));
  }
  return attach_lora_modules(model, config, modules, seed);
}

int64_t detach_lora(model::LlamaModel& model, const LoraAdapters& adapters) {
  int64_t n = 0;
  for (const auto& [name, layer] : adapters.modules) {
    model->replace_linear(name, layer->base());
    ++n;
  }
  return n;
}

}  // namespace qlora::lora
