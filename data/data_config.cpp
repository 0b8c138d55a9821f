#include "data/data_config.h"

#include <map>
#include <optional>
#include <set>

#include "common/error.h"

namespace qlora::data {

namespace {

// Errors carry "FILE:LINE: data.KEY: what" and a hint.
class ConfigReader {
 public:
  explicit ConfigReader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& key, const std::string& what,
                         const std::string& hint = "") const {
    std::string where = file_;
    if (at.IsDefined()) {  // an invalid (missing) node has no mark
      const YAML::Mark mark = at.Mark();
      if (mark.line >= 0) where += ":" + std::to_string(mark.line + 1);
    }
    std::string msg = where + ": " + key + ": " + what;
    if (!hint.empty()) msg += "\nHINT: " + hint;
    throw Error(msg);
  }

  std::string scalar_text(const YAML::Node& n) const {
    return n.IsScalar() ? n.Scalar() : std::string("<not a scalar>");
  }

  bool get_bool(const YAML::Node& n, const std::string& key) const {
    bool v = false;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) {
      fail(n, key, "expected true or false, got '" + scalar_text(n) + "'", "write " + key.substr(5) + ": true");
    }
    return v;
  }

  int64_t get_int(const YAML::Node& n, const std::string& key, int64_t lo, int64_t hi) const {
    int64_t v = 0;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v)) {
      fail(n, key, "expected an integer, got '" + scalar_text(n) + "'",
           "use an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    if (v < lo || v > hi) {
      fail(n, key, "value " + std::to_string(v) + " is out of range",
           "use an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return v;
  }

  double get_double(const YAML::Node& n, const std::string& key) const {
    double v = 0;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v)) {
      fail(n, key, "expected a number, got '" + scalar_text(n) + "'");
    }
    return v;
  }

  std::string get_string(const YAML::Node& n, const std::string& key, bool allow_empty = true) const {
    if (!n.IsScalar()) fail(n, key, "expected a string");
    if (!allow_empty && n.Scalar().empty()) fail(n, key, "must not be empty");
    return n.Scalar();
  }

  // One of `choices`; the hint lists them.
  std::string get_choice(const YAML::Node& n, const std::string& key, const std::vector<std::string>& choices) const {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : " | ") + c;
    if (!n.IsScalar()) fail(n, key, "expected one of " + list, "valid values: " + list);
    for (const auto& c : choices) {
      if (n.Scalar() == c) return c;
    }
    fail(n, key, "unknown value '" + n.Scalar() + "'", "valid values: " + list);
  }

  // A path spec or a list of them.
  std::vector<std::string> get_paths(const YAML::Node& n, const std::string& key) const {
    std::vector<std::string> out;
    if (n.IsScalar()) {
      out.push_back(get_string(n, key, false));
    } else if (n.IsSequence()) {
      for (size_t i = 0; i < n.size(); ++i) out.push_back(get_string(n[i], key + "[" + std::to_string(i) + "]", false));
      if (out.empty()) fail(n, key, "the list is empty", "name at least one file, glob or directory");
    } else {
      fail(n, key, "expected a path, a glob or a list of them", "e.g. " + key.substr(5) + ": data/train.jsonl");
    }
    return out;
  }

  RoleAffixes get_affixes(const YAML::Node& n, const std::string& key) const {
    if (!n.IsMap()) fail(n, key, "expected a mapping {prefix: ..., suffix: ...}");
    RoleAffixes a;
    for (const auto& kv : n) {
      const std::string k = kv.first.Scalar();
      if (k == "prefix") {
        a.prefix = get_string(kv.second, key + ".prefix");
      } else if (k == "suffix") {
        a.suffix = get_string(kv.second, key + ".suffix");
      } else {
        fail(kv.first, key + "." + k, "unknown key", "valid keys: prefix, suffix");
      }
    }
    return a;
  }

  TemplateSpec get_template(const YAML::Node& n, const std::string& key) const {
    TemplateSpec t;
    if (n.IsScalar()) {
      const std::string name = get_choice(n, key, {"alpaca", "llama2-chat", "chatml", "llama3", "raw"});
      t.kind = name == "alpaca"        ? TemplateKind::kAlpaca
               : name == "llama2-chat" ? TemplateKind::kLlama2Chat
               : name == "chatml"      ? TemplateKind::kChatml
               : name == "llama3"      ? TemplateKind::kLlama3
                                       : TemplateKind::kRaw;
      return t;
    }
    const char* hint =
        "a name (alpaca | llama2-chat | chatml | llama3 | raw), {prompt: \"...{instruction}...\", response: "
        "\"{output}\"} "
        "or {system: {prefix, suffix}, user: {prefix, suffix}, assistant: {prefix, suffix}}";
    if (!n.IsMap()) fail(n, key, "expected a template name or mapping", hint);
    bool string_form = false, role_form = false;
    for (const auto& kv : n) {
      const std::string k = kv.first.Scalar();
      if (k == "prompt" || k == "response") {
        string_form = true;
        (k == "prompt" ? t.prompt : t.response) = get_string(kv.second, key + "." + k);
      } else if (k == "system" || k == "user" || k == "assistant") {
        role_form = true;
        RoleAffixes a = get_affixes(kv.second, key + "." + k);
        (k == "system" ? t.system : k == "user" ? t.user : t.assistant) = a;
      } else {
        fail(kv.first, key + "." + k, "unknown key", hint);
      }
    }
    if (string_form == role_form) fail(n, key, "a custom template uses either prompt/response or role keys", hint);
    if (string_form && (!n["prompt"] || !n["response"])) fail(n, key, "needs both prompt and response", hint);
    t.kind = string_form ? TemplateKind::kCustomString : TemplateKind::kCustomRoles;
    return t;
  }

 private:
  std::string file_;
};

// Placeholders the custom string template may use, per format.
std::set<std::string> template_fields(DataFormat f) {
  if (f == DataFormat::kAlpaca) return {"instruction", "input", "output"};
  if (f == DataFormat::kCompletion) return {"prompt", "completion"};
  return {};
}

void check_placeholders(const ConfigReader& r, const YAML::Node& at, const std::string& text, DataFormat f) {
  const auto allowed = template_fields(f);
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '{' && i + 1 < text.size() && text[i + 1] == '{') {
      ++i;
      continue;
    }
    if (text[i] != '{') continue;
    const size_t close = text.find('}', i);
    if (close == std::string::npos)
      r.fail(at, "data.template", "unclosed '{' in '" + text + "'", "write {{ for a literal brace");
    const std::string name = text.substr(i + 1, close - i - 1);
    if (!allowed.count(name)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "{" : ", {") + a + "}";
      r.fail(at, "data.template", "unknown placeholder {" + name + "} for format " + format_name(f),
             "valid placeholders: " + list);
    }
    i = close;
  }
}

}  // namespace

const char* format_name(DataFormat format) {
  switch (format) {
    case DataFormat::kAlpaca:
      return "alpaca";
    case DataFormat::kChat:
      return "chat";
    case DataFormat::kCompletion:
      return "completion";
    case DataFormat::kText:
      return "text";
  }
  return "?";
}

const char* template_name(TemplateKind kind) {
  switch (kind) {
    case TemplateKind::kAlpaca:
      return "alpaca";
    case TemplateKind::kLlama2Chat:
      return "llama2-chat";
    case TemplateKind::kChatml:
      return "chatml";
    case TemplateKind::kLlama3:
      return "llama3";
    case TemplateKind::kRaw:
      return "raw";
    case TemplateKind::kCustomString:
      return "custom (prompt/response)";
    case TemplateKind::kCustomRoles:
      return "custom (per role)";
  }
  return "?";
}

bool has_eval_split(const DataConfig& cfg) {
  return !cfg.eval.empty() || cfg.eval_fraction > 0.0;
}

DataConfig parse_data_config(const YAML::Node& node, const std::string& file) {
  ConfigReader r(file);
  DataConfig cfg;
  cfg.base_dir = fs::path(file).parent_path();
  if (!node || node.IsNull()) r.fail(node, "data", "the data section is missing or empty", "add data: {train: FILE}");
  if (!node.IsMap()) r.fail(node, "data", "expected a mapping", "data:\n  train: data/train.jsonl");

  const std::string valid_keys =
      "train, eval, eval_fraction, format, template, max_seq_len, packing, train_on_prompt, shuffle_buffer, "
      "prompt_field, completion_field, text_field, drop_long, on_bad_line, max_bad_lines, add_bos, add_eos, "
      "pad_to_max_seq_len";
  std::optional<YAML::Node> template_node, fraction_node;  // copies, never YAML::Node::operator= (it aliases)
  bool have_train = false;
  for (const auto& kv : node) {
    const std::string k = kv.first.Scalar();
    const std::string key = "data." + k;
    const YAML::Node& v = kv.second;
    if (k == "train") {
      cfg.train = r.get_paths(v, key);
      have_train = true;
    } else if (k == "eval") {
      if (!v.IsNull()) cfg.eval = r.get_paths(v, key);
    } else if (k == "eval_fraction") {
      if (!v.IsNull()) {
        cfg.eval_fraction = r.get_double(v, key);
        if (!(cfg.eval_fraction > 0.0 && cfg.eval_fraction < 1.0)) {
          r.fail(v, key, "must be in (0, 1), got " + v.Scalar(), "e.g. eval_fraction: 0.05");
        }
        fraction_node.emplace(v);
      }
    } else if (k == "format") {
      const std::string f = r.get_choice(v, key, {"alpaca", "chat", "completion", "text"});
      cfg.format = f == "alpaca"       ? DataFormat::kAlpaca
                   : f == "chat"       ? DataFormat::kChat
                   : f == "completion" ? DataFormat::kCompletion
                                       : DataFormat::kText;
    } else if (k == "template") {
      template_node.emplace(v);  // validated after the format is known
    } else if (k == "max_seq_len") {
      cfg.max_seq_len = r.get_int(v, key, 8, int64_t{1} << 20);
    } else if (k == "packing") {
      cfg.packing = r.get_bool(v, key);
    } else if (k == "train_on_prompt") {
      cfg.train_on_prompt = r.get_bool(v, key);
    } else if (k == "shuffle_buffer") {
      cfg.shuffle_buffer = r.get_int(v, key, 0, int64_t{1} << 24);
    } else if (k == "prompt_field") {
      cfg.prompt_field = r.get_string(v, key, false);
    } else if (k == "completion_field") {
      cfg.completion_field = r.get_string(v, key, false);
    } else if (k == "text_field") {
      cfg.text_field = r.get_string(v, key, false);
    } else if (k == "drop_long") {
      cfg.drop_long = r.get_bool(v, key);
    } else if (k == "on_bad_line") {
      cfg.on_bad_line = r.get_choice(v, key, {"fail", "skip"}) == "fail" ? BadLinePolicy::kFail : BadLinePolicy::kSkip;
    } else if (k == "max_bad_lines") {
      cfg.max_bad_lines = r.get_int(v, key, 0, int64_t{1} << 40);
    } else if (k == "add_bos") {
      cfg.add_bos = r.get_bool(v, key);
    } else if (k == "add_eos") {
      cfg.add_eos = r.get_bool(v, key);
    } else if (k == "pad_to_max_seq_len") {
      cfg.pad_to_max_seq_len = r.get_bool(v, key);
    } else {
      r.fail(kv.first, key, "unknown key", "valid keys: " + valid_keys);
    }
  }
  if (!have_train)
    r.fail(node, "data.train", "missing", "add train: data/train.jsonl (a file, list, glob or directory)");
  if (!cfg.eval.empty() && cfg.eval_fraction > 0.0) {
    r.fail(*fraction_node, "data.eval_fraction", "cannot be combined with data.eval",
           "use either a separate eval file or a held-out fraction of train");
  }

  // Template: default by format, then check it fits the format.
  switch (cfg.format) {
    case DataFormat::kAlpaca:
      cfg.tmpl.kind = TemplateKind::kAlpaca;
      break;
    case DataFormat::kChat:
      cfg.tmpl.kind = TemplateKind::kChatml;
      break;
    case DataFormat::kCompletion:
    case DataFormat::kText:
      cfg.tmpl.kind = TemplateKind::kRaw;
      break;
  }
  if (template_node) {
    const YAML::Node& tn = *template_node;
    cfg.tmpl = r.get_template(tn, "data.template");
    const TemplateKind k = cfg.tmpl.kind;
    const DataFormat f = cfg.format;
    const std::string fname = format_name(f);
    if (f == DataFormat::kText && k != TemplateKind::kRaw) {
      r.fail(tn, "data.template", "format text takes no template", "remove data.template or use raw");
    }
    if (k == TemplateKind::kAlpaca && f != DataFormat::kAlpaca) {
      r.fail(tn, "data.template", "the alpaca template needs format alpaca, not " + fname,
             "for format " + fname + " use llama2-chat, chatml, llama3 or a custom template");
    }
    if (k == TemplateKind::kRaw && f == DataFormat::kChat) {
      r.fail(tn, "data.template", "format chat needs a chat template",
             "use llama2-chat, chatml, llama3 or a per-role custom template");
    }
    if (k == TemplateKind::kCustomString) {
      if (f == DataFormat::kChat) {
        r.fail(tn, "data.template", "format chat needs a per-role custom template",
               "template: {system: {prefix, suffix}, user: {prefix, suffix}, assistant: {prefix, suffix}}");
      }
      check_placeholders(r, tn, cfg.tmpl.prompt, f);
      check_placeholders(r, tn, cfg.tmpl.response, f);
    }
  }
  return cfg;
}

}  // namespace qlora::data
