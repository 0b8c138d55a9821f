#include "data/data_config.h"

#include <set>

#include "common/error.h"

namespace qlora::data {

namespace {

const EnumNames<DataFormat> kFormats = {{"alpaca", DataFormat::kAlpaca},
                                        {"chat", DataFormat::kChat},
                                        {"completion", DataFormat::kCompletion},
                                        {"text", DataFormat::kText}};
const EnumNames<BadLinePolicy> kBadLinePolicies = {{"fail", BadLinePolicy::kFail}, {"skip", BadLinePolicy::kSkip}};
// The named templates (a mapping makes a custom one).
const EnumNames<TemplateKind> kNamedTemplates = {
    {"alpaca", TemplateKind::kAlpaca}, {"llama2-chat", TemplateKind::kLlama2Chat},
    {"chatml", TemplateKind::kChatml}, {"llama3", TemplateKind::kLlama3},
    {"raw", TemplateKind::kRaw},       {"auto", TemplateKind::kAuto}};

const char* const kTemplateHint =
    "a name (alpaca | llama2-chat | chatml | llama3 | raw | auto), {prompt: \"...{instruction}...\", response: "
    "\"{output}\"} or {system: {prefix, suffix}, user: {prefix, suffix}, assistant: {prefix, suffix}}";

// Placeholders the custom string template may use, per format.
std::set<std::string> template_fields(DataFormat f) {
  if (f == DataFormat::kAlpaca) return {"instruction", "input", "output"};
  if (f == DataFormat::kCompletion) return {"prompt", "completion"};
  return {};
}

void check_placeholders(const YamlContext& ctx, const YAML::Node& at, const std::string& text, DataFormat f) {
  const auto allowed = template_fields(f);
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '{' && i + 1 < text.size() && text[i + 1] == '{') {
      ++i;
      continue;
    }
    if (text[i] != '{') continue;
    const size_t close = text.find('}', i);
    if (close == std::string::npos) {
      ctx.fail("data.template", at, "unclosed '{' in '" + text + "'", "write {{ for a literal brace");
    }
    const std::string name = text.substr(i + 1, close - i - 1);
    if (!allowed.count(name)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "{" : ", {") + a + "}";
      ctx.fail("data.template", at, "unknown placeholder {" + name + "} for format " + format_name(f),
               "valid placeholders: " + list);
    }
    i = close;
  }
}

RoleAffixes read_affixes(const YamlMap& tmpl, const std::string& role) {
  static const std::vector<std::string> kKeys = {"prefix", "suffix"};
  const YAML::Node n = tmpl.get(role);
  if (!n.IsMap()) tmpl.fail(role, "expected a mapping {prefix: ..., suffix: ...}, got " + describe_node(n));
  const YamlMap m(tmpl.ctx(), n, tmpl.key_path(role), &kKeys);
  RoleAffixes a;
  if (m.has("prefix")) a.prefix = std::get<std::string>(m.read("prefix", TextKey{.allow_empty = true}));
  if (m.has("suffix")) a.suffix = std::get<std::string>(m.read("suffix", TextKey{.allow_empty = true}));
  return a;
}

// A custom template: {prompt, response} or per-role {system, user, assistant} affixes.
TemplateSpec read_custom_template(const YamlContext& ctx, const YAML::Node& n) {
  static const std::vector<std::string> kKeys = {"prompt", "response", "system", "user", "assistant", "tool"};
  const YamlMap m(ctx, n, "data.template", &kKeys);
  const bool string_form = m.has("prompt") || m.has("response");
  const bool role_form = m.has("system") || m.has("user") || m.has("assistant") || m.has("tool");
  if (string_form == role_form) {
    ctx.fail("data.template", n, "a custom template uses either prompt/response or role keys", kTemplateHint);
  }
  TemplateSpec t;
  if (string_form) {
    if (!m.has("prompt") || !m.has("response"))
      ctx.fail("data.template", n, "needs both prompt and response", kTemplateHint);
    t.kind = TemplateKind::kCustomString;
    t.prompt = std::get<std::string>(m.read("prompt", TextKey{.allow_empty = true}));
    t.response = std::get<std::string>(m.read("response", TextKey{.allow_empty = true}));
    return t;
  }
  t.kind = TemplateKind::kCustomRoles;
  if (m.has("system")) t.system = read_affixes(m, "system");
  if (m.has("user")) t.user = read_affixes(m, "user");
  if (m.has("assistant")) t.assistant = read_affixes(m, "assistant");
  if (m.has("tool")) t.tool = read_affixes(m, "tool");
  return t;
}

// The template of a format when data.template is absent.
TemplateKind default_template(DataFormat f) {
  switch (f) {
    case DataFormat::kAlpaca:
      return TemplateKind::kAlpaca;
    case DataFormat::kChat:
      return TemplateKind::kAuto;  // chatml when the model has no chat template
    case DataFormat::kCompletion:
    case DataFormat::kText:
      return TemplateKind::kRaw;
  }
  return TemplateKind::kRaw;
}

// data.template: a name or a custom mapping, checked against data.format (read before it, in row order).
void read_template(const YamlMap& m, const std::string& key, DataConfig& cfg) {
  const YAML::Node n = m.get(key);
  cfg.tmpl = TemplateSpec{};
  if (n.IsScalar()) {
    const std::string name = std::get<std::string>(m.read(key, ChoiceKey{enum_options(kNamedTemplates)}));
    for (const auto& [option, kind] : kNamedTemplates) {
      if (name == option) cfg.tmpl.kind = kind;
    }
  } else if (n.IsMap()) {
    cfg.tmpl = read_custom_template(m.ctx(), n);
  } else {
    m.fail(key, "expected a template name or mapping, got " + describe_node(n), kTemplateHint);
  }
  const TemplateKind k = cfg.tmpl.kind;
  const DataFormat f = cfg.format;
  const std::string fname = format_name(f);
  if (f == DataFormat::kText && k != TemplateKind::kRaw) {
    m.fail(key, "format text takes no template", "remove data.template or use raw");
  }
  if (k == TemplateKind::kAlpaca && f != DataFormat::kAlpaca) {
    m.fail(key, "the alpaca template needs format alpaca, not " + fname,
           "for format " + fname + " use llama2-chat, chatml, llama3 or a custom template");
  }
  if (k == TemplateKind::kRaw && f == DataFormat::kChat) {
    m.fail(key, "format chat needs a chat template",
           "use auto, llama2-chat, chatml, llama3 or a per-role custom template");
  }
  if (k == TemplateKind::kCustomString) {
    if (f == DataFormat::kChat) {
      m.fail(key, "format chat needs a per-role custom template",
             "template: {system: {prefix, suffix}, user: {prefix, suffix}, assistant: {prefix, suffix}}");
    }
    check_placeholders(m.ctx(), n, cfg.tmpl.prompt, f);
    check_placeholders(m.ctx(), n, cfg.tmpl.response, f);
  }
}

// The legacy single-field keys that name the same thing as a data.fields entry.
const std::map<std::string, std::string> kFieldKeys = {
    {"prompt", "prompt_field"}, {"completion", "completion_field"}, {"text", "text_field"}};

// data.fields: {field of the format: the records' name for it}, checked against data.format (read before it).
void read_fields(const YamlMap& m, const std::string& key, DataConfig& cfg) {
  const YAML::Node n = m.get(key);
  const std::vector<std::string>& known = mappable_fields(cfg.format);
  if (!n.IsMap()) {
    std::string list;
    for (const auto& f : known) list += (list.empty() ? "" : ", ") + f + ": NAME";
    m.fail(key, "expected a mapping {field: name in the records}, got " + describe_node(n),
           "for format " + std::string(format_name(cfg.format)) + ": {" + list + "}");
  }
  const YamlMap fields(m.ctx(), n, m.key_path(key), &known);  // a field the format does not have: did you mean
  cfg.fields.clear();
  for (const auto& field : known) {
    if (!fields.has(field)) continue;
    const auto legacy = kFieldKeys.find(field);
    if (legacy != kFieldKeys.end() && m.has(legacy->second)) {
      fields.fail(field, "give either data." + legacy->second + " or data.fields." + field + ", not both",
                  "they name the same field; keep data.fields");
    }
    cfg.fields[field] = std::get<std::string>(fields.read(field, TextKey{}));
  }
}

YamlValue fields_value(const DataConfig& c) {
  YAML::Node n(YAML::NodeType::Map);
  for (const auto& [field, name] : c.fields) n[field] = name;
  return YamlValue(std::in_place_type<YAML::Node>, n);
}

const ListKey kPathList{.expected = "a path, a glob or a list of them",
                        .empty_hint = "name at least one file, glob or directory"};

}  // namespace

// Size: one row per key of the data: section; the table is the section's definition.
const std::vector<ConfigKey<DataConfig>>& data_config_keys() {
  using K = ConfigKey<DataConfig>;
  using D = DataConfig;
  static const std::vector<K> keys = [] {
    std::vector<K> keys;
    const auto add = [&keys](K key) { keys.push_back(std::move(key)); };
    add({.path = "data.train",
         .type = kPathList,
         .help = "training examples: a JSONL file, a JSON array file (.json), a .txt file, a list of them, a glob "
                 "(data/*.jsonl) "
                 "or a directory",
         .hash = "data",
         .field = member(&D::train),
         .required_hint = "add train: data/train.jsonl (a file, list, glob or directory)"});
    add({.path = "data.eval",
         .type = kPathList,
         .help = "eval examples, like data.train; not with data.eval_fraction",
         .hash = "data",
         .field = member(&D::eval),
         .nullable = true});
    add({.path = "data.eval_fraction",
         .type = RealKey{.min = 0.0, .max = 1.0, .min_open = true, .max_open = true},
         .help = "hold out this fraction of data.train for eval instead of an eval file",
         .hash = "data",
         .field = member(&D::eval_fraction),
         .default_doc = "(none)",
         .exclusive_with = "eval",
         .exclusive_hint = "use either a separate eval file or a held-out fraction of train",
         .nullable = true});
    add({.path = "data.format",
         .type = ChoiceKey{.options = enum_options(kFormats)},
         .help = "record layout of the JSONL lines / JSON array elements",
         .hash = "data",
         .field = enum_member(&D::format, kFormats)});
    add({.path = "data.template",
         .type = MappingKey{.expected = "a template name or a custom mapping ({prompt, response} or per-role affixes)"},
         .help = "prompt template (see data/data_config.h): alpaca, llama2-chat, chatml, llama3, raw, auto (the "
                 "model's own chat template) or custom",
         .hash = "data",
         .field = {.get = [](const D& c) { return YamlValue(std::string(template_name(c.tmpl.kind))); }, .set = {}},
         .default_doc = "by format: alpaca -> alpaca, chat -> auto (chatml when the model has no chat template), "
                        "completion and text -> raw",
         .default_from =
             [](D& c) {
               c.tmpl.kind = default_template(c.format);
               c.tmpl.auto_falls_back = c.tmpl.kind == TemplateKind::kAuto;
             },
         .parse = read_template});
    add({.path = "data.max_seq_len",
         .type = IntKey{.min = 8, .max = int64_t{1} << 20},
         .help = "tokens per row; longer examples are truncated or dropped (data.drop_long)",
         .hash = "data",
         .field = member(&D::max_seq_len)});
    add({.path = "data.packing",
         .type = BoolKey{},
         .help = "greedily pack whole examples into rows of max_seq_len",
         .hash = "data",
         .field = member(&D::packing)});
    add({.path = "data.train_on_prompt",
         .type = BoolKey{},
         .help = "false: labels are -100 on every prompt token",
         .hash = "data",
         .field = member(&D::train_on_prompt)});
    add({.path = "data.shuffle_buffer",
         .type = IntKey{.min = 0, .max = int64_t{1} << 24},
         .help = "bounded shuffle buffer (0 or 1: stream order)",
         .hash = "data",
         .field = member(&D::shuffle_buffer)});
    add({.path = "data.prompt_field",
         .type = TextKey{},
         .help = "completion format: the field holding the prompt",
         .hash = "data",
         .field = member(&D::prompt_field)});
    add({.path = "data.completion_field",
         .type = TextKey{},
         .help = "completion format: the field holding the completion",
         .hash = "data",
         .field = member(&D::completion_field)});
    add({.path = "data.text_field",
         .type = TextKey{},
         .help = "text format: the field holding the document",
         .hash = "data",
         .field = member(&D::text_field)});
    add({.path = "data.fields",
         .type = MappingKey{.expected = "a mapping {field of the format: the records' name for it}"},
         .help = "the records' own names for the format's fields, e.g. {instruction: question, output: answer} "
                 "(alpaca: instruction, input, output; completion: prompt, completion; text: text; chat: messages, "
                 "role, content)",
         .hash = "data",
         .field = {.get = fields_value, .set = {}},
         .default_doc = "{} (the format's own names)",
         .parse = read_fields,
         .emit_if = [](const D& c) { return !c.fields.empty(); },
         .hash_unless_default = true});
    add({.path = "data.drop_long",
         .type = BoolKey{},
         .help = "false: truncate an example longer than max_seq_len keeping its start; true: drop it",
         .hash = "data",
         .field = member(&D::drop_long)});
    add({.path = "data.on_bad_line",
         .type = ChoiceKey{.options = enum_options(kBadLinePolicies)},
         .help = "a malformed JSONL line: fail, or skip it (counted and warned)",
         .hash = "data",
         .field = enum_member(&D::on_bad_line, kBadLinePolicies)});
    add({.path = "data.max_bad_lines",
         .type = IntKey{.min = 0, .max = int64_t{1} << 40},
         .help = "with on_bad_line: skip, more bad lines than this is an error",
         .hash = "data",
         .field = member(&D::max_bad_lines)});
    add({.path = "data.max_record_bytes",
         .type = IntKey{.min = 1024, .max = int64_t{1} << 30},
         .help = "a longer JSONL line (JSON array element, .txt paragraph) is a bad record, handled per on_bad_line; "
                 "it is read past, "
                 "never held whole in memory",
         .hash = "data",
         .field = member(&D::max_record_bytes)});
    add({.path = "data.add_bos",
         .type = BoolKey{},
         .help = "BOS token id at the start of each example",
         .hash = "data",
         .field = member(&D::add_bos)});
    add({.path = "data.add_eos",
         .type = BoolKey{},
         .help = "EOS token id after each trained response",
         .hash = "data",
         .field = member(&D::add_eos)});
    add({.path = "data.pad_to_max_seq_len",
         .type = BoolKey{},
         .help = "padding collator: pad to max_seq_len instead of the batch's longest row",
         .hash = "data",
         .field = member(&D::pad_to_max_seq_len)});
    return keys;
  }();
  return keys;
}

DataConfig parse_data_config(const YAML::Node& node, const YamlContext& ctx) {
  DataConfig cfg;
  cfg.base_dir = fs::path(ctx.file()).parent_path();
  parse_keys(ctx, node, "data", data_config_keys(), cfg);
  return cfg;
}

DataConfig parse_data_config(const YAML::Node& node, const std::string& file) {
  YamlContext ctx(file);
  register_keys(ctx, data_config_keys());
  return parse_data_config(node, ctx);
}

const std::vector<std::string>& mappable_fields(DataFormat format) {
  static const std::vector<std::string> kAlpaca = {"instruction", "input", "output"};
  static const std::vector<std::string> kCompletion = {"prompt", "completion"};
  static const std::vector<std::string> kText = {"text"};
  static const std::vector<std::string> kChat = {"messages", "role", "content"};
  switch (format) {
    case DataFormat::kAlpaca:
      return kAlpaca;
    case DataFormat::kCompletion:
      return kCompletion;
    case DataFormat::kText:
      return kText;
    case DataFormat::kChat:
      return kChat;
  }
  return kText;
}

std::string record_field_name(const DataConfig& cfg, const std::string& field) {
  if (auto it = cfg.fields.find(field); it != cfg.fields.end()) return it->second;
  if (field == "prompt" && cfg.format == DataFormat::kCompletion) return cfg.prompt_field;
  if (field == "completion" && cfg.format == DataFormat::kCompletion) return cfg.completion_field;
  if (field == "text" && cfg.format == DataFormat::kText) return cfg.text_field;
  return field;
}

std::string describe_record_field(const DataConfig& cfg, const std::string& field) {
  const std::string name = record_field_name(cfg, field);
  std::string key;
  if (cfg.fields.count(field)) {
    key = "data.fields." + field;
  } else if (auto legacy = kFieldKeys.find(field); legacy != kFieldKeys.end() && name != field) {
    key = "data." + legacy->second;
  }
  return "\"" + name + "\"" + (key.empty() ? "" : " (" + key + ")");
}

const char* format_name(DataFormat format) {
  return enum_name(kFormats, format);
}

const char* template_name(TemplateKind kind) {
  if (kind == TemplateKind::kCustomString) return "custom (prompt/response)";
  if (kind == TemplateKind::kCustomRoles) return "custom (per role)";
  return enum_name(kNamedTemplates, kind);
}

bool has_eval_split(const DataConfig& cfg) {
  return !cfg.eval.empty() || cfg.eval_fraction > 0.0;
}

}  // namespace qlora::data
