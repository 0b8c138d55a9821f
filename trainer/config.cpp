#include "trainer/config.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/hash.h"
#include "model/compute_dtype.h"
#include "quant/quantized_tensor.h"

namespace qlora::trainer {

namespace {

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// The keys of the whole document: the table here and data:'s (for unknown keys and "did you mean").
YamlContext make_context(const std::string& source_name, const std::vector<std::string>& overrides) {
  YamlContext ctx(source_name, overrides);
  register_keys(ctx, train_config_keys());
  register_keys(ctx, data::data_config_keys());
  return ctx;
}

// Rules across keys that no single row states.
void check_cross_keys(const YamlContext& ctx, const YAML::Node& root, TrainConfig& cfg) {
  const YamlMap top(ctx, root, "");
  if (cfg.train.max_steps == 0 && cfg.train.epochs == 0) {
    top.fail("train", "missing the training length", "set train.max_steps (optimizer steps) or train.epochs");
  }
  if (cfg.model.compute_dtype == "fp16") {
    // fp16's 5-bit exponent underflows small gradients to zero without loss scaling, which qlora-train does not do.
    const YamlMap model(ctx, top.get("model"), "model");
    model.fail("compute_dtype",
               "fp16 training is not supported (it needs dynamic loss scaling, which qlora-train "
               "does not do; gradients below 6e-8 would silently become zero)",
               "use bf16 (the same memory and speed where the GPU has bf16: Ampere and newer) or fp32; fp16 stays "
               "available for inference (qlora-generate --dtype fp16)");
  }
  // auto: the dtype this device multiplies at speed (model/compute_dtype.h), resolved here so the hash, the plan
  // and the effective config all name what runs. An explicit 16-bit dtype the CPU multiplies only in LibTorch's
  // reference loops is kept, with a warning naming the key.
  const bool cuda = cfg.device != "cpu";
  const std::string asked = cfg.model.compute_dtype;
  cfg.model.compute_dtype = model::resolve_compute_dtype(asked, cuda);
  if (!cuda) {
    if (const std::string slow = model::slow_cpu_dtype_warning(asked); !slow.empty()) {
      const std::string where = top.has("model") ? YamlMap(ctx, top.get("model"), "model").where("compute_dtype")
                                                 : ctx.where("model.compute_dtype", YAML::Node());
      spdlog::warn("{}: {}", where, slow);
    }
  }
  if (cfg.eval.early_stopping_patience > 0 && cfg.eval.every == 0) {
    const YamlMap eval(ctx, top.get("eval"), "eval");
    eval.fail("early_stopping_patience", "early stopping needs evaluations during the run, and eval.every is 0",
              "set eval.every (optimizer steps between evaluations), or early_stopping_patience: 0");
  }
  // The line of model.path for later errors about the folder (none when --set gave it).
  if (ctx.override_for("model.path").empty()) {
    const YamlMap model(ctx, top.get("model"), "model");
    cfg.model.path_line = model.line("path");
  }
}

}  // namespace

torch::ScalarType ModelSection::dtype() const {
  return model::compute_dtype_from_name(compute_dtype);
}

torch::ScalarType LoraSection::torch_dtype() const {
  return dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

model::LoadOptions load_options(const TrainConfig& cfg) {
  model::LoadOptions lo;
  lo.compute_dtype = cfg.model.dtype();
  lo.quant = quant::parse_quant_option(cfg.model.quant_type);
  lo.blocksize = cfg.model.quant_blocksize;
  lo.double_quant = cfg.model.double_quant;
  return lo;
}

lora::LoraConfig lora_config(const TrainConfig& cfg) {
  lora::LoraConfig lc;
  lc.r = cfg.lora.r;
  lc.alpha = cfg.lora.alpha;
  lc.dropout = cfg.lora.dropout;
  lc.targets = cfg.lora.targets;
  lc.rslora = cfg.lora.rslora;
  lc.dtype = cfg.lora.torch_dtype();
  return lc;
}

void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides) {
  for (const auto& spec : overrides) {
    const auto eq = spec.find('=');
    const std::string hint = "write --set key.path=value, e.g. --set train.lr=1e-4";
    if (eq == std::string::npos || eq == 0) throw Error("--set " + spec + ": expected key.path=value\nHINT: " + hint);
    const std::string key = spec.substr(0, eq);
    const std::string value = spec.substr(eq + 1);
    std::vector<std::string> parts;
    std::stringstream ss(key);
    for (std::string part; std::getline(ss, part, '.');) {
      if (part.empty()) throw Error("--set " + spec + ": empty segment in key path `" + key + "`\nHINT: " + hint);
      parts.push_back(part);
    }
    if (key.back() == '.') throw Error("--set " + spec + ": empty segment in key path `" + key + "`\nHINT: " + hint);
    YAML::Node parsed;
    try {
      parsed = YAML::Load(value);
    } catch (const YAML::Exception& e) {
      throw Error("--set " + spec + ": cannot parse the value as YAML: " + e.msg);
    }
    if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    YAML::Node cur;
    cur.reset(root);
    std::string walked;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      walked = join_path(walked, parts[i]);
      YAML::Node next = cur[parts[i]];
      if (!next.IsDefined() || next.IsNull()) {
        cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
        next.reset(cur[parts[i]]);
      } else if (!next.IsMap()) {
        throw Error("--set " + spec + ": `" + walked + "` is not a mapping, so it has no key `" + parts[i + 1] + "`");
      }
      cur.reset(next);
    }
    cur[parts.back()] = parsed;
  }
}

namespace {

// YAML is Unicode text. A config that is not UTF-8 would fail only much later, where its values are written out as
// JSON (the run hash, trainer_state.json), with a bare nlohmann::json error: it is refused here, naming the line.
void check_utf8(const std::string& text, const std::string& where) {
  size_t line = 1;
  for (size_t begin = 0; begin <= text.size(); ++line) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    try {
      (void)nlohmann::json(text.substr(begin, end - begin)).dump();  // nlohmann's own check, the one that matters
    } catch (const nlohmann::json::type_error&) {
      throw Error(where + ":" + std::to_string(line) + ": not UTF-8 text\nHINT: save the config as UTF-8");
    }
    begin = end + 1;
  }
}

}  // namespace

TrainConfig parse_config(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides) {
  check_utf8(yaml_text, source_name);
  for (const auto& o : overrides) check_utf8(o, "--set");
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw Error(source_name + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  if (root.IsDefined() && !root.IsNull() && !root.IsMap()) {
    throw Error(source_name + ": expected a mapping of sections (model, lora, data, train, ...), got " +
                describe_node(root));
  }
  apply_overrides(root, overrides);

  TrainConfig cfg;
  cfg.source_file = source_name;
  cfg.tree = root;
  cfg.overrides = overrides;
  const YamlContext ctx = make_context(source_name, overrides);
  parse_keys(ctx, root, /*root_path=*/"", train_config_keys(), cfg);
  check_cross_keys(ctx, root, cfg);
  return cfg;
}

TrainConfig load_config(const fs::path& file, const std::vector<std::string>& overrides) {
  if (!fs::is_regular_file(file)) {
    throw_file_error(file.string(), "config file not found", "pass the path of a YAML config, e.g. configs/tiny.yaml");
  }
  return parse_config(read_file(file), file.string(), overrides);
}

std::string effective_config_yaml(const TrainConfig& cfg) {
  YAML::Node n;
  emit_keys(train_config_keys(), cfg, n);
  YAML::Emitter out;
  out << n;
  std::string header = "# Effective configuration of this run (" + cfg.source_file;
  for (const auto& o : cfg.overrides) header += " --set " + o;
  header += "), defaults filled in.\n";
  return header + out.c_str() + "\n";
}

nlohmann::json trajectory_fields(const TrainConfig& c) {
  nlohmann::json j;
  hash_keys(train_config_keys(), c, j);
  return j;
}

std::string config_hash(const TrainConfig& c) {
  char buf[17];
  const uint64_t h = fnv1a64(trajectory_fields(c).dump(), kRunHashOffset);
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string describe_field_changes(const nlohmann::json& before, const nlohmann::json& after) {
  const nlohmann::json patch = nlohmann::json::diff(before, after);
  std::string out;
  for (const auto& op : patch) {
    std::string path = op.value("path", "");
    std::replace(path.begin(), path.end(), '/', '.');
    if (!path.empty() && path[0] == '.') path.erase(0, 1);
    const nlohmann::json ptr_val = before.contains(nlohmann::json::json_pointer(op.value("path", "")))
                                       ? before.at(nlohmann::json::json_pointer(op.value("path", "")))
                                       : nlohmann::json();
    std::string from = ptr_val.is_null() ? "(absent)" : ptr_val.dump();
    std::string to = op.contains("value") ? op["value"].dump() : "(absent)";
    out += (out.empty() ? "" : "; ") + path + ": " + from + " -> " + to;
  }
  return out;
}

}  // namespace qlora::trainer
