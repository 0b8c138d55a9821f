// Formats (what a record holds) and prompt templates (how it becomes text).
//
// parse_record() turns one JSON record (or one plain-text document) into a Record:
//   alpaca      {"instruction": str, "input": str (optional), "output": str}
//   chat        {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
//               or ShareGPT {"conversations": [{"from": "system"|"human"|"gpt"|"tool"|..., "value": str}, ...]}
//               (ShareGPT's role names are mapped: canonical_role()). llama2-chat takes an optional first system
//               message, then user/assistant alternating, ending with assistant; chatml, llama3 and per-role
//               custom templates render each turn on its own, so they take tool turns and consecutive same-role
//               turns, in any order with at least one assistant turn; data.template: auto takes whatever the
//               model's template takes, with tool calls (data/chat_template.h).
//   Any format: data.fields maps the format's field names to the records' own (data/data_config.h).
//   completion  {prompt_field: str, completion_field: str}
//   text        {text_field: str}, or a paragraph of a .txt file
// A record that does not fit is a BadRecord (the loader adds file:line and applies on_bad_line).
//
// render_record() turns a Record into Segments: text pieces flagged trained or not, and BOS/EOS markers
// (token ids, never text), and special tokens of a chat template (token ids looked up by content, never text). Adjacent
// text pieces with the same flag are merged into one segment. The tokenizer encodes each segment on its own (no
// BOS/EOS) and concatenates the ids: the prompt/response boundary is then a token boundary and masks are exact, at the
// price of a word-boundary marker at the start of each segment (sentencepiece's dummy prefix), which stands in for the
// separating space.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/data_config.h"

namespace qlora::data {

enum class Role { kSystem, kUser, kAssistant, kTool };
const char* role_name(Role r);

// Role names of common datasets as chat templates know them: ShareGPT's human -> user, gpt -> assistant,
// observation -> tool, function_call -> assistant (the call's text is what the model writes); others unchanged.
std::string canonical_role(const std::string& role);

// Where a chat record keeps its turns: `fields` (data.fields messages / role / content) when mapped; else
// "messages" of {role, content}, or ShareGPT "conversations" of {from, value} for a record without "messages".
struct ChatKeys {
  std::string list, role, content;
};
ChatKeys chat_keys(const std::map<std::string, std::string>& fields, bool has_messages, bool has_conversations);

struct Message {
  Role role;
  std::string content;
};

struct Record {
  std::map<std::string, std::string>
      fields;                     // alpaca: instruction/input/output; completion: prompt/completion; text: text
  std::vector<Message> messages;  // chat; alpaca and completion: one user + one assistant turn
};

// A record that does not match its format (missing field, wrong type, bad role order).
class BadRecord : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Record parse_record(const nlohmann::json& j, const DataConfig& cfg);
Record parse_text_document(std::string text);

struct Segment {
  enum class Kind { kText, kBos, kEos, kSpecial };
  Kind kind = Kind::kText;
  std::string text;  // kText: the text; kSpecial: the special token's content, e.g. "<|eot_id|>" (one id)
  bool trainable = false;

  bool operator==(const Segment& o) const { return kind == o.kind && text == o.text && trainable == o.trainable; }
};

std::vector<Segment> render_record(const Record& rec, const DataConfig& cfg);

// The Stanford Alpaca prompts.
extern const char* const kAlpacaPromptWithInput;  // placeholders {instruction} {input}
extern const char* const kAlpacaPromptNoInput;    // placeholder {instruction}

// Replaces {name} with fields[name]; "{{" / "}}" are literal braces. Unknown names throw BadRecord.
std::string fill_placeholders(const std::string& pattern, const std::map<std::string, std::string>& fields);

}  // namespace qlora::data
