// The `data:` section of a training config: where the examples come from, how they are parsed, rendered
// with a prompt template, masked, truncated, packed and shuffled.
//
//   data:
//     train: data/demo/train.jsonl     # a file, a list of files, a glob (data/*.jsonl) or a directory
//     eval: data/demo/eval.jsonl       # optional; or eval_fraction: 0.05 (not both)
//     format: alpaca                   # alpaca | chat | completion | text
//     template: alpaca                 # see below; default depends on the format (chat: auto)
//     max_seq_len: 256
//     packing: true                    # greedily pack whole examples into rows of max_seq_len
//     train_on_prompt: false           # false: labels are -100 on every prompt token
//     shuffle_buffer: 1000             # bounded shuffle buffer (0 or 1: stream order)
//     prompt_field: prompt             # completion format field names
//     completion_field: completion
//     text_field: text                 # text format: the JSONL field holding the document
//     fields: {instruction: question, output: answer}   # the records' own names for the format's fields (below)
//     drop_long: false                 # false: truncate keeping the start; true: drop the example
//     on_bad_line: fail                # fail | skip (skip counts and warns)
//     max_bad_lines: 1000              # with skip: more bad lines than this is an error
//     max_record_bytes: 4194304        # a longer line (paragraph in .txt) is a bad record: error or skipped
//     add_bos: true                    # BOS token id at the start of each example
//     add_eos: true                    # EOS token id after each trained response
//     pad_to_max_seq_len: false        # padding collator: pad to max_seq_len instead of the batch's longest
//
// Templates (the `template` key):
//   alpaca       Stanford Alpaca prompt (with/without the "### Input:" block), response "{output}" + EOS.
//                Format alpaca only.
//   llama2-chat  BOS "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]" "{assistant}" EOS, repeated per turn
//                (BOS/EOS are token ids, never text). Formats chat, alpaca, completion.
//   chatml       "<|im_start|>{role}\n{content}<|im_end|>\n" per message; the assistant content and its
//                <|im_end|> are trained (+ EOS id after it). Formats chat, alpaca, completion.
//   llama3       Meta Llama 3: "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>" per message,
//                content trimmed of surrounding whitespace as Meta's chat_template does
//                after BOS (<|begin_of_text|>); the assistant content and its <|eot_id|> are trained; with add_eos
//                an EOS id follows the last assistant turn only. The header and <|eot_id|> tokens are special
//                token ids, never text: the tokenizer must have them (a Llama 3 tokenizer.json), else an error.
//                Formats chat, alpaca, completion.
//   raw          prompt text then completion text, no decoration (default for completion and text).
//   auto         the model's own chat template (MODEL/chat_template.jinja, else tokenizer_config.json's
//                chat_template), rendered as transformers' apply_chat_template renders it (data/chat_template.h);
//                each assistant turn as the template renders it, with its end-of-turn token (<|im_end|>,
//                <|eot_id|>, <end_of_turn>, ...), is trained, the rest masked. BOS/EOS are whatever the template
//                writes (add_bos / add_eos are not applied). Chat records may have tool turns, tool calls, and
//                consecutive same-role turns, as far as the template takes them. Default for format chat when the
//                model has a chat template (chatml when it has none). Formats chat, alpaca, completion.
//   custom, as a mapping; either the string form (formats alpaca and completion):
//                  template: {prompt: "Q: {instruction}\n{input}\nA:", response: " {output}"}
//                placeholders are the record's fields ({instruction} {input} {output} for alpaca,
//                {prompt} {completion} for completion); "{{" and "}}" are literal braces;
//              or the per-role form (formats chat, alpaca, completion):
//                  template: {system: {prefix: "<sys>", suffix: "</sys>\n"},
//                             user: {prefix: "User: ", suffix: "\n"}, assistant: {prefix: "Bot: ", suffix: "\n"}}
//                each message renders prefix + content + suffix; the assistant's content + suffix are trained;
//                an optional tool: {prefix, suffix} renders tool turns (a tool turn without it is a bad record).
// Alpaca and completion records used with a chat template become one user turn (instruction, then
// "\n\n" + input when non-empty) and one assistant turn (output).
//
// Field mapping (the `fields` key): a mapping from a field of the format to the name the records use for it, so a
// dataset with other column names is read as it is. The fields a format has:
//   alpaca      instruction, input, output
//   completion  prompt, completion           (the same as prompt_field / completion_field; give one or the other)
//   text        text                         (the same as text_field)
//   chat        messages, role, content      (the list of turns and, in each turn, its role and its text; a mapped
//                                             chat record is read as {messages: [{role, content}]} with these names)
// A field not mapped keeps its own name. A record without a mapped field is a bad record naming both names.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/yaml_schema.h"

namespace qlora::data {

namespace fs = std::filesystem;

enum class DataFormat { kAlpaca, kChat, kCompletion, kText };
enum class BadLinePolicy { kFail, kSkip };
enum class TemplateKind { kAlpaca, kLlama2Chat, kChatml, kLlama3, kRaw, kCustomString, kCustomRoles, kAuto };

struct ModelChatTemplate;  // data/chat_template.h

struct RoleAffixes {
  std::string prefix;
  std::string suffix;
};

struct TemplateSpec {
  TemplateKind kind = TemplateKind::kAlpaca;
  // kAuto from the default (data.template absent): chatml when the model has no chat template.
  bool auto_falls_back = false;
  // kCustomString: rendered prompt (masked) and response (trained).
  std::string prompt;
  std::string response;
  // kCustomRoles
  RoleAffixes system;
  RoleAffixes user;
  RoleAffixes assistant;
  std::optional<RoleAffixes> tool;  // absent: tool turns are bad records
};

struct DataConfig {
  std::vector<std::string> train;  // file / glob / directory specs, as written
  std::vector<std::string> eval;   // empty: no eval file
  double eval_fraction = 0.0;      // 0: off; else in (0, 1), exclusive with eval
  DataFormat format = DataFormat::kAlpaca;
  TemplateSpec tmpl;  // the default follows the format when the key is absent
  int64_t max_seq_len = 256;
  bool packing = true;
  bool train_on_prompt = false;
  int64_t shuffle_buffer = 1000;
  std::string prompt_field = "prompt";
  std::string completion_field = "completion";
  std::string text_field = "text";
  std::map<std::string, std::string> fields;  // data.fields: format field -> the records' name for it
  bool drop_long = false;
  BadLinePolicy on_bad_line = BadLinePolicy::kFail;
  int64_t max_bad_lines = 1000;
  int64_t max_record_bytes = int64_t{4} << 20;  // a longer line / paragraph is a bad record (read past, never held)
  bool add_bos = true;
  bool add_eos = true;
  bool pad_to_max_seq_len = false;

  // Where relative paths are also looked up (the config file's folder); set by parse_data_config.
  fs::path base_dir;
  // The model's chat template for data.template: auto; set by the caller from the model folder
  // (load_model_chat_template), null or empty when the model has none.
  std::shared_ptr<const ModelChatTemplate> chat_template;
};

// The schema of the `data:` section: one row per key (path "data.<key>"), in the order above. The whole section
// enters the run hash as written (trainer/config.h), so every row is marked hashed.
const std::vector<ConfigKey<DataConfig>>& data_config_keys();

// Parses the `data:` node of `file`. Unknown keys, wrong types and out-of-range values are qlora::Error
// "FILE:LINE: data.KEY: problem" with a HINT (common/yaml_schema.h).
DataConfig parse_data_config(const YAML::Node& node, const std::string& file);
// Same inside a whole config: `ctx` carries its file, its --set overrides and every section's keys.
DataConfig parse_data_config(const YAML::Node& node, const YamlContext& ctx);

// The records' name for field `field` of the format (data.fields, prompt_field / completion_field / text_field, else
// `field` itself), and how to describe it in an error: "\"question\" (data.fields.instruction)" when mapped.
std::string record_field_name(const DataConfig& cfg, const std::string& field);
std::string describe_record_field(const DataConfig& cfg, const std::string& field);
// The fields data.fields may map for a format, in order.
const std::vector<std::string>& mappable_fields(DataFormat format);

const char* format_name(DataFormat format);
const char* template_name(TemplateKind kind);
bool has_eval_split(const DataConfig& cfg);

}  // namespace qlora::data
