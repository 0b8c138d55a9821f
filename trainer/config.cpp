#include "trainer/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qlora::trainer {

namespace {

// Every key the schema knows, by section ("" = top level). `data` is open here (data/ validates it).
const std::map<std::string, std::vector<std::string>>& schema_keys() {
  static const std::map<std::string, std::vector<std::string>> keys = {
      {"", {"model", "lora", "data", "train", "eval", "checkpoint", "output_dir", "log", "device", "dist"}},
      {"model", {"path", "compute_dtype", "quant", "gradient_checkpointing", "plan_config"}},
      {"model.quant", {"type", "blocksize", "double_quant"}},
      {"lora", {"r", "alpha", "dropout", "targets", "rslora", "dtype"}},
      {"train",
       {"seed", "max_steps", "epochs", "micro_batch_size", "grad_accum", "lr", "schedule", "warmup_steps",
        "warmup_ratio", "weight_decay", "max_grad_norm", "optimizer", "optimizer_offload", "adam_beta1", "adam_beta2",
        "adam_eps", "threads", "max_nonfinite_steps", "loss_chunk_tokens"}},
      {"eval", {"every", "max_batches", "at_end"}},
      {"checkpoint", {"dir", "every", "keep", "resume"}},
      {"log", {"every", "metrics"}},
      {"dist", {"backend", "timeout_s", "bucket_mb"}},
  };
  return keys;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// Where a key came from: the file (with its line) or a --set override.
struct Ctx {
  std::string file;
  std::map<std::string, std::string> overrides;  // key path -> the "k=v" string that set it

  std::string override_for(const std::string& key) const {
    for (const auto& [k, spec] : overrides) {
      if (key == k || key.rfind(k + ".", 0) == 0) return spec;
    }
    return "";
  }

  [[noreturn]] void fail(const std::string& key, const YAML::Node& node, const std::string& what,
                         const std::string& hint = "") const {
    std::string msg;
    const std::string spec = override_for(key);
    if (!spec.empty()) {
      msg = file + ": " + key + " (from --set " + spec + "): " + what;
    } else if (node.IsDefined() && node.Mark().line >= 0) {
      msg = file + ":" + std::to_string(node.Mark().line + 1) + ": " + key + ": " + what;
    } else {
      msg = file + ": " + key + ": " + what;
    }
    if (!hint.empty()) msg += "\nHINT: " + hint;
    throw Error(msg);
  }
};

std::string describe(const YAML::Node& n) {
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  if (n.IsNull()) return "nothing (null)";
  return "`" + n.Scalar() + "`";
}

std::string fmt_num(double v) {
  std::ostringstream ss;
  ss << v;
  return ss.str();
}

// One mapping of the config with typed, range-checked accessors.
class Section {
 public:
  Section(const Ctx& ctx, const YAML::Node& node, std::string path) : ctx_(ctx), path_(std::move(path)) {
    // A missing section arrives as an invalid ("zombie") node: reset() would throw InvalidNode; keep node_ empty.
    if (node.IsDefined()) node_.reset(node);
    if (node_.IsDefined() && !node_.IsNull() && !node_.IsMap()) {
      ctx_.fail(path_.empty() ? "<top level>" : path_, node_, "expected a mapping of keys, got " + describe(node_));
    }
    check_unknown_keys();
  }

  // A key written with no value (`lr:`) counts as present, so it is reported instead of silently defaulted.
  bool has(const std::string& key) const { return node_.IsMap() && node_[key].IsDefined(); }
  YAML::Node get(const std::string& key) const { return node_.IsMap() ? node_[key] : YAML::Node(); }
  std::string key_path(const std::string& key) const { return join_path(path_, key); }
  const YAML::Node& node() const { return node_; }
  const Ctx& ctx() const { return ctx_; }

  int line(const std::string& key) const {
    YAML::Node n = get(key);
    return n.IsDefined() ? n.Mark().line + 1 : 0;
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what, const std::string& hint = "") const {
    YAML::Node n = get(key);
    // An empty value (`lr:`) has its mark on the following line: report the line of the key instead.
    if (n.IsDefined() && n.IsNull() && node_.IsMap()) {
      for (const auto& kv : node_) {
        if (kv.first.IsScalar() && kv.first.Scalar() == key) ctx_.fail(key_path(key), kv.first, what, hint);
      }
    }
    ctx_.fail(key_path(key), n.IsDefined() ? n : node_, what, hint);
  }

  YAML::Node scalar(const std::string& key, const std::string& expected) const {
    YAML::Node n = get(key);
    if (!n.IsScalar()) fail(key, "expected " + expected + ", got " + describe(n));
    return n;
  }

  int64_t get_int(const std::string& key, int64_t def, int64_t min, int64_t max) const {
    if (!has(key)) return def;
    YAML::Node n = scalar(key, "an integer");
    int64_t v = 0;
    try {
      v = n.as<int64_t>();
    } catch (const YAML::Exception&) {
      fail(key, "expected an integer, got " + describe(n));
    }
    if (v < min) fail(key, "must be >= " + std::to_string(min) + " (got " + std::to_string(v) + ")");
    if (v > max) fail(key, "must be <= " + std::to_string(max) + " (got " + std::to_string(v) + ")");
    return v;
  }

  // Range [min, max]; `min_exclusive` makes it (min, max].
  double get_double(const std::string& key, double def, double min, double max, bool min_exclusive = false,
                    bool max_exclusive = false) const {
    if (!has(key)) return def;
    YAML::Node n = scalar(key, "a number");
    double v = 0;
    try {
      v = n.as<double>();
    } catch (const YAML::Exception&) {
      fail(key, "expected a number, got " + describe(n));
    }
    if (!std::isfinite(v)) fail(key, "must be a finite number (got " + n.Scalar() + ")");
    if (min_exclusive ? v <= min : v < min) {
      fail(key, std::string("must be ") + (min_exclusive ? "> " : ">= ") + fmt_num(min) + " (got " + fmt_num(v) + ")");
    }
    if (max_exclusive ? v >= max : v > max) {
      fail(key, std::string("must be ") + (max_exclusive ? "< " : "<= ") + fmt_num(max) + " (got " + fmt_num(v) + ")");
    }
    return v;
  }

  bool get_bool(const std::string& key, bool def) const {
    if (!has(key)) return def;
    YAML::Node n = scalar(key, "true or false");
    try {
      return n.as<bool>();
    } catch (const YAML::Exception&) {
      fail(key, "expected true or false, got " + describe(n));
    }
  }

  std::string get_string(const std::string& key, const std::string& def) const {
    if (!has(key)) return def;
    YAML::Node n = scalar(key, "a string");
    if (n.Scalar().empty()) fail(key, "must not be empty");
    return n.Scalar();
  }

  // A string from a fixed set; aliases map extra spellings to a canonical value.
  std::string get_enum(const std::string& key, const std::string& def, const std::vector<std::string>& options,
                       const std::map<std::string, std::string>& aliases = {}) const {
    if (!has(key)) return def;
    std::string v = get_string(key, def);
    if (auto it = aliases.find(v); it != aliases.end()) v = it->second;
    if (std::find(options.begin(), options.end(), v) != options.end()) return v;
    std::string list;
    for (const auto& o : options) list += (list.empty() ? "" : " | ") + o;
    fail(key, "unknown value `" + v + "`", "use one of: " + list);
  }

 private:
  void check_unknown_keys() const {
    if (!node_.IsMap()) return;
    const auto& known = schema_keys().at(path_);
    for (const auto& kv : node_) {
      const std::string key = kv.first.Scalar();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      ctx_.fail(key_path(key), kv.first, "unknown key", suggest(key));
    }
  }

  // "did you mean `train.lr`?": the same key in another section, else the nearest key of this section.
  std::string suggest(const std::string& key) const {
    for (const auto& [section, keys] : schema_keys()) {
      if (section != path_ && std::find(keys.begin(), keys.end(), key) != keys.end()) {
        return "did you mean `" + join_path(section, key) + "`? (it belongs in the `" +
               (section.empty() ? std::string("top") : section) + "` section)";
      }
    }
    const auto& known = schema_keys().at(path_);
    std::string best;
    size_t best_d = std::numeric_limits<size_t>::max();
    for (const auto& k : known) {
      size_t d = edit_distance(key, k);
      if (d < best_d) best_d = d, best = k;
    }
    if (!best.empty() && best_d <= std::max<size_t>(1, key.size() / 3)) {
      return "did you mean `" + key_path(best) + "`?";
    }
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
    return "known keys here: " + list;
  }

 private:
  const Ctx& ctx_;
  YAML::Node node_;
  std::string path_;
};

fs::path resolve(const fs::path& p) {
  return p.empty() ? p : fs::absolute(p).lexically_normal();
}

void parse_model(const Section& root, TrainConfig& cfg) {
  Section s(root.ctx(), root.get("model"), "model");
  if (!s.has("path")) {
    root.fail("model", "missing `model.path`", "set model.path to an HF model folder (config.json + safetensors)");
  }
  auto& m = cfg.model;
  m.path = s.get_string("path", "");
  m.path_line = s.line("path");
  m.compute_dtype = s.get_enum("compute_dtype", "bf16", {"bf16", "fp16", "fp32"},
                               {{"bfloat16", "bf16"}, {"float16", "fp16"}, {"float32", "fp32"}});
  m.gradient_checkpointing = s.get_bool("gradient_checkpointing", true);
  m.plan_config = s.get_string("plan_config", "");
  if (s.has("quant")) {
    YAML::Node q = s.get("quant");
    if (q.IsScalar()) {  // shorthand `quant: nf4`
      m.quant_type = s.get_enum("quant", "nf4", {"nf4", "fp4", "none"});
    } else {
      Section qs(root.ctx(), q, "model.quant");
      m.quant_type = qs.get_enum("type", "nf4", {"nf4", "fp4", "none"});
      m.quant_blocksize = qs.get_int("blocksize", 64, 32, 4096);
      if ((m.quant_blocksize & (m.quant_blocksize - 1)) != 0) {
        qs.fail("blocksize", "must be a power of two (got " + std::to_string(m.quant_blocksize) + ")",
                "bitsandbytes uses 64 (default), 128, 256, ... 4096");
      }
      m.double_quant = qs.get_bool("double_quant", true);
    }
  }
}

void parse_lora(const Section& root, TrainConfig& cfg) {
  Section s(root.ctx(), root.get("lora"), "lora");
  auto& l = cfg.lora;
  l.r = s.get_int("r", 16, 1, 65536);
  l.alpha = s.get_double("alpha", 32.0, 0.0, 1e6, /*min_exclusive=*/true);
  l.dropout = s.get_double("dropout", 0.05, 0.0, 1.0, false, /*max_exclusive=*/true);
  l.rslora = s.get_bool("rslora", false);
  l.dtype = s.get_enum("dtype", "fp32", {"fp32", "bf16"}, {{"float32", "fp32"}, {"bfloat16", "bf16"}});
  if (s.has("targets")) {
    YAML::Node t = s.get("targets");
    l.targets.clear();
    if (t.IsScalar()) {
      l.targets.push_back(s.get_string("targets", ""));
    } else if (t.IsSequence()) {
      for (const auto& item : t) {
        if (!item.IsScalar() || item.Scalar().empty()) {
          s.ctx().fail("lora.targets", item, "expected module names (strings), got " + describe(item));
        }
        l.targets.push_back(item.Scalar());
      }
      if (l.targets.empty()) s.fail("targets", "must not be empty", "use all-linear or e.g. [q_proj, v_proj]");
    } else {
      s.fail("targets", "expected `all-linear` or a list of module names, got " + describe(t));
    }
  }
}

void parse_train(const Section& root, TrainConfig& cfg) {
  Section s(root.ctx(), root.get("train"), "train");
  auto& t = cfg.train;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  t.seed = static_cast<uint64_t>(s.get_int("seed", 42, 0, kMax));
  t.max_steps = s.get_int("max_steps", 0, 1, kMax);
  t.epochs = s.get_int("epochs", 0, 1, 1000000);
  if (s.has("max_steps") && s.has("epochs")) {
    s.fail("epochs", "give either train.max_steps or train.epochs, not both");
  }
  if (!s.has("max_steps") && !s.has("epochs")) {
    root.fail("train", "missing the training length", "set train.max_steps (optimizer steps) or train.epochs");
  }
  t.micro_batch_size = s.get_int("micro_batch_size", 4, 1, 1 << 20);
  t.grad_accum = s.get_int("grad_accum", 1, 1, 1 << 20);
  t.lr = s.get_double("lr", 2e-4, 0.0, 10.0, /*min_exclusive=*/true);
  t.schedule = s.get_enum("schedule", "cosine", {"constant", "linear", "cosine"});
  t.warmup_steps = s.get_int("warmup_steps", 0, 0, kMax);
  t.warmup_ratio = s.get_double("warmup_ratio", 0.0, 0.0, 1.0, false, /*max_exclusive=*/true);
  if (s.has("warmup_steps") && s.has("warmup_ratio")) {
    s.fail("warmup_ratio", "give either train.warmup_steps or train.warmup_ratio, not both");
  }
  t.weight_decay = s.get_double("weight_decay", 0.0, 0.0, 10.0);
  t.max_grad_norm = s.get_double("max_grad_norm", 1.0, 0.0, 1e9);
  t.optimizer = s.get_enum("optimizer", "adamw", {"adamw"}, {{"adamw_torch", "adamw"}});
  t.optimizer_offload = s.get_bool("optimizer_offload", false);
  t.adam_beta1 = s.get_double("adam_beta1", 0.9, 0.0, 1.0, false, /*max_exclusive=*/true);
  t.adam_beta2 = s.get_double("adam_beta2", 0.999, 0.0, 1.0, false, /*max_exclusive=*/true);
  t.adam_eps = s.get_double("adam_eps", 1e-8, 0.0, 1.0, /*min_exclusive=*/true);
  t.threads = static_cast<int>(s.get_int("threads", 0, 0, 4096));
  t.max_nonfinite_steps = s.get_int("max_nonfinite_steps", 5, 1, kMax);
  t.loss_chunk_tokens = s.get_int("loss_chunk_tokens", 1024, 1, kMax);
}

}  // namespace

torch::ScalarType ModelSection::dtype() const {
  if (compute_dtype == "fp16") return torch::kFloat16;
  if (compute_dtype == "fp32") return torch::kFloat32;
  return torch::kBFloat16;
}

torch::ScalarType LoraSection::torch_dtype() const {
  return dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
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

TrainConfig parse_config(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw Error(source_name + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  if (root.IsDefined() && !root.IsNull() && !root.IsMap()) {
    throw Error(source_name + ": expected a mapping of sections (model, lora, data, train, ...), got " +
                describe(root));
  }
  apply_overrides(root, overrides);

  Ctx ctx;
  ctx.file = source_name;
  for (const auto& spec : overrides) ctx.overrides[spec.substr(0, spec.find('='))] = spec;

  TrainConfig cfg;
  cfg.source_file = source_name;
  cfg.tree = root;
  cfg.overrides = overrides;
  Section top(ctx, root, "");
  parse_model(top, cfg);
  parse_lora(top, cfg);
  if (!top.has("data")) top.fail("data", "missing the `data` section", "set at least data.train: <file.jsonl>");
  cfg.data = top.get("data");
  cfg.data_config = data::parse_data_config(cfg.data, source_name);
  parse_train(top, cfg);

  Section ev(ctx, top.get("eval"), "eval");
  cfg.eval.every = ev.get_int("every", 0, 0, std::numeric_limits<int64_t>::max());
  cfg.eval.max_batches = ev.get_int("max_batches", 0, 0, std::numeric_limits<int64_t>::max());
  cfg.eval.at_end = ev.get_bool("at_end", true);

  Section ck(ctx, top.get("checkpoint"), "checkpoint");
  const std::string stem = fs::path(source_name).stem().string();
  cfg.checkpoint.dir = ck.get_string("dir", "runs/" + (stem.empty() ? std::string("run") : stem));
  cfg.checkpoint.every = ck.get_int("every", 0, 0, std::numeric_limits<int64_t>::max());
  cfg.checkpoint.keep = ck.get_int("keep", 3, 0, std::numeric_limits<int64_t>::max());
  cfg.checkpoint.resume = ck.get_string("resume", "auto");

  cfg.output_dir = top.get_string("output_dir", (cfg.checkpoint.dir / "final").string());

  Section lg(ctx, top.get("log"), "log");
  cfg.log.every = lg.get_int("every", 10, 1, std::numeric_limits<int64_t>::max());
  cfg.log.metrics = lg.get_string("metrics", (cfg.checkpoint.dir / "metrics.jsonl").string());

  cfg.device = top.get_string("device", "cpu");
  if (cfg.device != "cpu" && cfg.device != "cuda" && cfg.device.rfind("cuda:", 0) != 0) {
    top.fail("device", "unknown device `" + cfg.device + "`", "use cpu, cuda or cuda:<index>");
  }

  // Most configs have no dist section: pass an empty node (a missing key of a const node is not a valid node).
  Section ds(ctx, top.has("dist") ? top.get("dist") : YAML::Node(), "dist");
  cfg.dist.backend = ds.get_enum("backend", cfg.device == "cpu" ? "gloo" : "nccl", {"gloo", "nccl"});
  cfg.dist.timeout_s = ds.get_double("timeout_s", 300.0, 0.0, 86400.0, /*min_exclusive=*/true);
  cfg.dist.bucket_mb = ds.get_double("bucket_mb", 25.0, 0.0, 4096.0, /*min_exclusive=*/true);

  // Relative paths resolve against the working directory (not the config file's folder).
  cfg.model.path = resolve(cfg.model.path);
  if (!cfg.model.plan_config.empty()) cfg.model.plan_config = resolve(cfg.model.plan_config);
  cfg.checkpoint.dir = resolve(cfg.checkpoint.dir);
  cfg.output_dir = resolve(cfg.output_dir);
  cfg.log.metrics = resolve(cfg.log.metrics);
  if (cfg.checkpoint.resume != "auto" && cfg.checkpoint.resume != "none") {
    cfg.checkpoint.resume = resolve(cfg.checkpoint.resume).string();
  }
  return cfg;
}

TrainConfig load_config(const fs::path& file, const std::vector<std::string>& overrides) {
  if (!fs::is_regular_file(file)) {
    throw_file_error(file.string(), "config file not found", "pass the path of a YAML config, e.g. configs/tiny.yaml");
  }
  return parse_config(read_file(file), file.string(), overrides);
}

namespace {

YAML::Node to_yaml(const TrainConfig& c) {
  YAML::Node n;
  n["model"]["path"] = c.model.path.string();
  n["model"]["compute_dtype"] = c.model.compute_dtype;
  n["model"]["quant"]["type"] = c.model.quant_type;
  n["model"]["quant"]["blocksize"] = c.model.quant_blocksize;
  n["model"]["quant"]["double_quant"] = c.model.double_quant;
  n["model"]["gradient_checkpointing"] = c.model.gradient_checkpointing;
  if (!c.model.plan_config.empty()) n["model"]["plan_config"] = c.model.plan_config.string();
  n["lora"]["r"] = c.lora.r;
  n["lora"]["alpha"] = c.lora.alpha;
  n["lora"]["dropout"] = c.lora.dropout;
  n["lora"]["targets"] = c.lora.targets;
  n["lora"]["rslora"] = c.lora.rslora;
  n["lora"]["dtype"] = c.lora.dtype;
  n["data"] = c.data;
  const auto& t = c.train;
  n["train"]["seed"] = t.seed;
  if (t.max_steps > 0) n["train"]["max_steps"] = t.max_steps;
  if (t.epochs > 0) n["train"]["epochs"] = t.epochs;
  n["train"]["micro_batch_size"] = t.micro_batch_size;
  n["train"]["grad_accum"] = t.grad_accum;
  n["train"]["lr"] = t.lr;
  n["train"]["schedule"] = t.schedule;
  if (t.warmup_ratio > 0) {
    n["train"]["warmup_ratio"] = t.warmup_ratio;
  } else {
    n["train"]["warmup_steps"] = t.warmup_steps;
  }
  n["train"]["weight_decay"] = t.weight_decay;
  n["train"]["max_grad_norm"] = t.max_grad_norm;
  n["train"]["optimizer"] = t.optimizer;
  n["train"]["optimizer_offload"] = t.optimizer_offload;
  n["train"]["adam_beta1"] = t.adam_beta1;
  n["train"]["adam_beta2"] = t.adam_beta2;
  n["train"]["adam_eps"] = t.adam_eps;
  n["train"]["threads"] = t.threads;
  n["train"]["max_nonfinite_steps"] = t.max_nonfinite_steps;
  n["train"]["loss_chunk_tokens"] = t.loss_chunk_tokens;
  n["eval"]["every"] = c.eval.every;
  n["eval"]["max_batches"] = c.eval.max_batches;
  n["eval"]["at_end"] = c.eval.at_end;
  n["checkpoint"]["dir"] = c.checkpoint.dir.string();
  n["checkpoint"]["every"] = c.checkpoint.every;
  n["checkpoint"]["keep"] = c.checkpoint.keep;
  n["checkpoint"]["resume"] = c.checkpoint.resume;
  n["output_dir"] = c.output_dir.string();
  n["log"]["every"] = c.log.every;
  n["log"]["metrics"] = c.log.metrics.string();
  n["device"] = c.device;
  n["dist"]["backend"] = c.dist.backend;
  n["dist"]["timeout_s"] = c.dist.timeout_s;
  n["dist"]["bucket_mb"] = c.dist.bucket_mb;
  return n;
}

nlohmann::json yaml_to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : n) j[kv.first.Scalar()] = yaml_to_json(kv.second);
    return j;
  }
  if (n.IsSequence()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& item : n) j.push_back(yaml_to_json(item));
    return j;
  }
  if (n.IsScalar()) return n.Scalar();
  return nullptr;
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

std::string effective_config_yaml(const TrainConfig& cfg) {
  YAML::Emitter out;
  out << to_yaml(cfg);
  std::string header = "# Effective configuration of this run (" + cfg.source_file;
  for (const auto& o : cfg.overrides) header += " --set " + o;
  header += "), defaults filled in.\n";
  return header + out.c_str() + "\n";
}

nlohmann::json trajectory_fields(const TrainConfig& c) {
  // Numbers go through fmt_num so 2e-4 and 2.0e-4 hash the same.
  nlohmann::json j;
  j["model"] = {{"compute_dtype", c.model.compute_dtype},
                {"quant_type", c.model.quant_type},
                {"blocksize", c.model.quant_blocksize},
                {"double_quant", c.model.double_quant}};
  j["lora"] = {{"r", c.lora.r},
               {"alpha", fmt_num(c.lora.alpha)},
               {"dropout", fmt_num(c.lora.dropout)},
               {"targets", c.lora.targets},
               {"rslora", c.lora.rslora}};
  // Only when not the default, so configs written before the key existed keep their hash.
  if (c.lora.dtype != "fp32") j["lora"]["dtype"] = c.lora.dtype;
  j["data"] = yaml_to_json(c.data);
  const auto& t = c.train;
  j["train"] = {{"seed", t.seed},
                {"max_steps", t.max_steps},
                {"epochs", t.epochs},
                {"micro_batch_size", t.micro_batch_size},
                {"grad_accum", t.grad_accum},
                {"lr", fmt_num(t.lr)},
                {"schedule", t.schedule},
                {"warmup_steps", t.warmup_steps},
                {"warmup_ratio", fmt_num(t.warmup_ratio)},
                {"weight_decay", fmt_num(t.weight_decay)},
                {"max_grad_norm", fmt_num(t.max_grad_norm)},
                {"optimizer", t.optimizer},
                {"betas", {fmt_num(t.adam_beta1), fmt_num(t.adam_beta2)}},
                {"eps", fmt_num(t.adam_eps)},
                {"loss_chunk_tokens", t.loss_chunk_tokens}};
  return j;
}

std::string config_hash(const TrainConfig& c) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(fnv1a64(trajectory_fields(c).dump())));
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
