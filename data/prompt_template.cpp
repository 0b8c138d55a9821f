#include "data/prompt_template.h"

#include <algorithm>

#include "common/error.h"

namespace qlora::data {

const char* const kAlpacaPromptWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const char* const kAlpacaPromptNoInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n";

const char* role_name(Role r) {
  switch (r) {
    case Role::kSystem:
      return "system";
    case Role::kUser:
      return "user";
    case Role::kAssistant:
      return "assistant";
    case Role::kTool:
      return "tool";
  }
  return "?";
}

std::string canonical_role(const std::string& role) {
  if (role == "human") return "user";
  if (role == "gpt" || role == "function_call") return "assistant";
  if (role == "observation") return "tool";
  return role;
}

ChatKeys chat_keys(const std::map<std::string, std::string>& fields, bool has_messages, bool has_conversations) {
  const auto mapped = [&](const char* field) {
    auto it = fields.find(field);
    return it == fields.end() ? std::string() : it->second;
  };
  const bool sharegpt = mapped("messages").empty() && !has_messages && has_conversations;
  ChatKeys k{mapped("messages"), mapped("role"), mapped("content")};
  if (k.list.empty()) k.list = sharegpt ? "conversations" : "messages";
  if (k.role.empty()) k.role = sharegpt ? "from" : "role";
  if (k.content.empty()) k.content = sharegpt ? "value" : "content";
  return k;
}

namespace {

const char* json_type_name(const nlohmann::json& v) {
  return v.type_name();
}

// A string field named `name` in the records (`described`: how errors name it, e.g. with its data.fields key);
// `optional` fields may be absent or null (-> "").
std::string get_field(const nlohmann::json& j, const std::string& name, bool optional = false,
                      const std::string& described = "") {
  const std::string what = described.empty() ? "\"" + name + "\"" : described;
  auto it = j.find(name);
  if (it == j.end() || (optional && it->is_null())) {
    if (optional) return "";
    std::string have;
    for (auto k = j.begin(); k != j.end(); ++k) have += (have.empty() ? "" : ", ") + k.key();
    throw BadRecord("missing field " + what + " (the record has: " + (have.empty() ? "nothing" : have) + ")");
  }
  if (!it->is_string()) {
    throw BadRecord("field " + what + " must be a string, got " + json_type_name(*it));
  }
  return it->get<std::string>();
}

// Field `field` of the format, under the records' name for it (data.fields).
std::string get_mapped(const nlohmann::json& j, const DataConfig& cfg, const std::string& field,
                       bool optional = false) {
  return get_field(j, record_field_name(cfg, field), optional, describe_record_field(cfg, field));
}

Role parse_role(const std::string& s, const std::string& where) {
  const std::string role = canonical_role(s);
  if (role == "system") return Role::kSystem;
  if (role == "user") return Role::kUser;
  if (role == "assistant") return Role::kAssistant;
  if (role == "tool") return Role::kTool;
  throw BadRecord(where + ": unknown role \"" + s +
                  "\" (valid: system, user, assistant, tool; ShareGPT: human, gpt, observation, function_call)");
}

// llama2-chat's order: [system] user assistant (user assistant)*.
void check_alternating(const std::vector<Message>& msgs, const std::string& list_key) {
  size_t i = 0;
  if (!msgs.empty() && msgs[0].role == Role::kSystem) i = 1;
  if (i == msgs.size()) throw BadRecord("\"" + list_key + "\" has no user/assistant turns");
  for (size_t k = i; k < msgs.size(); ++k) {
    const Role want = (k - i) % 2 == 0 ? Role::kUser : Role::kAssistant;
    if (msgs[k].role != want) {
      throw BadRecord(list_key + "[" + std::to_string(k) + "]: expected role " + role_name(want) + ", got " +
                      role_name(msgs[k].role) +
                      " (an optional system message, then user and assistant alternating; templates chatml, llama3, "
                      "auto and per-role custom ones also take tool turns and consecutive same-role turns)");
    }
  }
  if (msgs.back().role != Role::kAssistant) {
    throw BadRecord("\"" + list_key + "\" must end with an assistant message (nothing to train on)");
  }
}

std::vector<Message> parse_messages(const nlohmann::json& j, const DataConfig& cfg) {
  const ChatKeys keys = chat_keys(cfg.fields, j.contains("messages"), j.contains("conversations"));
  const std::string list_key = keys.list;
  auto it = j.find(list_key);
  if (it == j.end()) {
    throw BadRecord(cfg.fields.count("messages")
                        ? "missing field " + describe_record_field(cfg, "messages")
                        : std::string("missing field \"messages\" (or ShareGPT \"conversations\")"));
  }
  if (!it->is_array()) throw BadRecord("field \"" + list_key + "\" must be an array, got " + json_type_name(*it));
  const auto describe = [&](const std::string& field, const std::string& name) {
    return cfg.fields.count(field) ? describe_record_field(cfg, field) : "\"" + name + "\"";
  };
  std::vector<Message> msgs;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const std::string where = list_key + "[" + std::to_string(i) + "]";
    if (!m.is_object()) throw BadRecord(where + " must be an object, got " + json_type_name(m));
    try {
      const Role role = parse_role(get_field(m, keys.role, false, describe("role", keys.role)), where);
      msgs.push_back({role, get_field(m, keys.content, false, describe("content", keys.content))});
    } catch (const BadRecord& e) {
      const std::string what = e.what();
      throw BadRecord(what.rfind(where, 0) == 0 ? what : where + ": " + what);
    }
  }
  if (cfg.tmpl.kind == TemplateKind::kLlama2Chat) {
    check_alternating(msgs, list_key);
  } else if (std::none_of(msgs.begin(), msgs.end(), [](const Message& m) { return m.role == Role::kAssistant; })) {
    throw BadRecord("\"" + list_key + "\" has no assistant message (nothing to train on)");
  }
  return msgs;
}

// Appends a text piece, merging with the previous one when the flag matches; empty text is dropped.
void add_text(std::vector<Segment>& out, const std::string& text, bool trainable) {
  if (text.empty()) return;
  if (!out.empty() && out.back().kind == Segment::Kind::kText && out.back().trainable == trainable) {
    out.back().text += text;
    return;
  }
  out.push_back({Segment::Kind::kText, text, trainable});
}

void add_special(std::vector<Segment>& out, Segment::Kind kind, bool trainable) {
  out.push_back({kind, "", trainable});
}

void render_llama2(const Record& rec, const DataConfig& cfg, std::vector<Segment>& out) {
  const auto& m = rec.messages;
  size_t i = 0;
  std::string system;
  if (!m.empty() && m[0].role == Role::kSystem) system = m[i++].content;
  bool first = true;
  for (; i + 1 < m.size(); i += 2) {
    if (!first) add_special(out, Segment::Kind::kBos, false);  // the first BOS is add_bos's
    std::string prompt = "[INST] ";
    if (first && !system.empty()) prompt += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
    prompt += m[i].content + " [/INST]";
    add_text(out, prompt, false);
    add_text(out, m[i + 1].content, true);
    if (cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
    first = false;
  }
}

void render_chatml(const Record& rec, const DataConfig& cfg, std::vector<Segment>& out) {
  for (const auto& msg : rec.messages) {
    add_text(out, std::string("<|im_start|>") + role_name(msg.role) + "\n", false);
    const bool train = msg.role == Role::kAssistant;
    add_text(out, msg.content + "<|im_end|>", train);
    if (train && cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
    add_text(out, "\n", false);
  }
}

void add_special_token(std::vector<Segment>& out, const char* content, bool trainable) {
  out.push_back({Segment::Kind::kSpecial, content, trainable});
}

// Jinja's `trim` as Meta's Llama 3 chat template applies it to every message: Python's str.strip(), which removes
// the leading and trailing code points for which str.isspace() holds (not only ASCII whitespace).
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The code point of the UTF-8 sequence at s[i] and its length in bytes; a malformed sequence is one byte, U+FFFD.
char32_t next_code_point(const std::string& s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  char32_t cp = n <= 1 ? b : b & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto c = i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0;
    if ((c >> 6) != 0x2) {
      *len = 1;
      return 0xFFFD;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  *len = n == 0 ? 1 : n;
  return n == 0 ? 0xFFFD : cp;
}

std::string trim_whitespace(const std::string& s) {
  size_t begin = s.size(), end = 0;  // first byte of the first, one past the last byte of the last non-space
  for (size_t i = 0, len = 0; i < s.size(); i += len) {
    if (is_python_space(next_code_point(s, i, &len))) continue;
    begin = std::min(begin, i);
    end = i + len;
  }
  return begin < end ? s.substr(begin, end - begin) : "";
}

void render_llama3(const Record& rec, const DataConfig& cfg, std::vector<Segment>& out) {
  for (size_t i = 0; i < rec.messages.size(); ++i) {
    const Message& msg = rec.messages[i];
    add_special_token(out, "<|start_header_id|>", false);
    add_text(out, role_name(msg.role), false);
    add_special_token(out, "<|end_header_id|>", false);
    add_text(out, "\n\n", false);
    const bool train = msg.role == Role::kAssistant;
    add_text(out, trim_whitespace(msg.content), train);
    add_special_token(out, "<|eot_id|>", train);
    if (train && cfg.add_eos && i + 1 == rec.messages.size()) add_special(out, Segment::Kind::kEos, true);
  }
}

const RoleAffixes& role_affixes(const TemplateSpec& t, Role role) {
  switch (role) {
    case Role::kSystem:
      return t.system;
    case Role::kUser:
      return t.user;
    case Role::kAssistant:
      return t.assistant;
    case Role::kTool:
      if (!t.tool) throw BadRecord("a tool turn, but data.template has no tool: {prefix, suffix}");
      return *t.tool;
  }
  return t.user;
}

void render_roles(const Record& rec, const DataConfig& cfg, std::vector<Segment>& out) {
  for (const auto& msg : rec.messages) {
    const RoleAffixes& a = role_affixes(cfg.tmpl, msg.role);
    const bool train = msg.role == Role::kAssistant;
    add_text(out, a.prefix, false);
    add_text(out, msg.content + a.suffix, train);
    if (train && cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
  }
}

}  // namespace

std::string fill_placeholders(const std::string& pattern, const std::map<std::string, std::string>& fields) {
  std::string out;
  out.reserve(pattern.size() + 64);
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if ((c == '{' || c == '}') && i + 1 < pattern.size() && pattern[i + 1] == c) {
      out += c;
      ++i;
    } else if (c == '{') {
      const size_t close = pattern.find('}', i);
      if (close == std::string::npos) throw BadRecord("template: unclosed '{'");
      const std::string name = pattern.substr(i + 1, close - i - 1);
      auto it = fields.find(name);
      if (it == fields.end()) throw BadRecord("template: no field {" + name + "} in this record");
      out += it->second;
      i = close;
    } else {
      out += c;
    }
  }
  return out;
}

Record parse_text_document(std::string text) {
  Record r;
  r.fields["text"] = std::move(text);
  return r;
}

Record parse_record(const nlohmann::json& j, const DataConfig& cfg) {
  if (!j.is_object()) throw BadRecord(std::string("expected a JSON object, got ") + json_type_name(j));
  Record r;
  switch (cfg.format) {
    case DataFormat::kAlpaca: {
      const std::string instruction = get_mapped(j, cfg, "instruction");
      const std::string input = get_mapped(j, cfg, "input", /*optional=*/true);
      const std::string output = get_mapped(j, cfg, "output");
      r.fields = {{"instruction", instruction}, {"input", input}, {"output", output}};
      r.messages = {{Role::kUser, input.empty() ? instruction : instruction + "\n\n" + input},
                    {Role::kAssistant, output}};
      break;
    }
    case DataFormat::kCompletion: {
      const std::string prompt = get_mapped(j, cfg, "prompt");
      const std::string completion = get_mapped(j, cfg, "completion");
      r.fields = {{"prompt", prompt}, {"completion", completion}};
      r.messages = {{Role::kUser, prompt}, {Role::kAssistant, completion}};
      break;
    }
    case DataFormat::kChat:
      r.messages = parse_messages(j, cfg);
      break;
    case DataFormat::kText:
      r.fields["text"] = get_mapped(j, cfg, "text");
      break;
  }
  return r;
}

std::vector<Segment> render_record(const Record& rec, const DataConfig& cfg) {
  std::vector<Segment> out;
  if (cfg.add_bos) add_special(out, Segment::Kind::kBos, false);
  const auto field = [&](const char* name) {
    auto it = rec.fields.find(name);
    return it == rec.fields.end() ? std::string() : it->second;
  };
  switch (cfg.tmpl.kind) {
    case TemplateKind::kAlpaca: {
      const char* prompt = field("input").empty() ? kAlpacaPromptNoInput : kAlpacaPromptWithInput;
      add_text(out, fill_placeholders(prompt, rec.fields), false);
      add_text(out, field("output"), true);
      if (cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
      break;
    }
    case TemplateKind::kRaw:
      if (cfg.format == DataFormat::kText) {
        add_text(out, field("text"), true);
      } else {
        add_text(out, field("prompt"), false);
        add_text(out, field("completion"), true);
      }
      if (cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
      break;
    case TemplateKind::kCustomString:
      add_text(out, fill_placeholders(cfg.tmpl.prompt, rec.fields), false);
      add_text(out, fill_placeholders(cfg.tmpl.response, rec.fields), true);
      if (cfg.add_eos) add_special(out, Segment::Kind::kEos, true);
      break;
    case TemplateKind::kLlama2Chat:
      render_llama2(rec, cfg, out);
      break;
    case TemplateKind::kChatml:
      render_chatml(rec, cfg, out);
      break;
    case TemplateKind::kLlama3:
      render_llama3(rec, cfg, out);
      break;
    case TemplateKind::kCustomRoles:
      render_roles(rec, cfg, out);
      break;
    case TemplateKind::kAuto:  // the model's Jinja template renders whole conversations (data/chat_template.h)
      throw Error("data.template: auto is rendered by the model's chat template, not render_record");
  }
  return out;
}

}  // namespace qlora::data
