// data: section parsing — defaults, every key, and errors that name the key path, the file and the line.
#include <gtest/gtest.h>

#include "common/error.h"
#include "data/data_config.h"
#include "data_test_util.h"

namespace qlora::data {
namespace {

using test::make_config;

TEST(DataConfig, Defaults) {
  const DataConfig c = make_config("train: t.jsonl\n");
  EXPECT_EQ(c.train, std::vector<std::string>{"t.jsonl"});
  EXPECT_TRUE(c.eval.empty());
  EXPECT_EQ(c.eval_fraction, 0.0);
  EXPECT_EQ(c.format, DataFormat::kAlpaca);
  EXPECT_EQ(c.tmpl.kind, TemplateKind::kAlpaca);
  EXPECT_EQ(c.max_seq_len, 256);
  EXPECT_TRUE(c.packing);
  EXPECT_FALSE(c.train_on_prompt);
  EXPECT_EQ(c.shuffle_buffer, 1000);
  EXPECT_EQ(c.prompt_field, "prompt");
  EXPECT_EQ(c.completion_field, "completion");
  EXPECT_EQ(c.text_field, "text");
  EXPECT_FALSE(c.drop_long);
  EXPECT_EQ(c.on_bad_line, BadLinePolicy::kFail);
  EXPECT_TRUE(c.add_bos);
  EXPECT_TRUE(c.add_eos);
  EXPECT_FALSE(c.pad_to_max_seq_len);
  EXPECT_FALSE(has_eval_split(c));
}

TEST(DataConfig, EveryKey) {
  const DataConfig c = make_config(R"(
train: [a.jsonl, "dir/*.jsonl"]
eval_fraction: 0.1
format: completion
template: {prompt: "Q: {prompt}\nA:", response: " {completion}"}
max_seq_len: 128
packing: false
train_on_prompt: yes
shuffle_buffer: 0
prompt_field: question
completion_field: answer
text_field: body
drop_long: true
on_bad_line: skip
max_bad_lines: 7
add_bos: false
add_eos: false
pad_to_max_seq_len: true
)");
  EXPECT_EQ(c.train, (std::vector<std::string>{"a.jsonl", "dir/*.jsonl"}));
  EXPECT_DOUBLE_EQ(c.eval_fraction, 0.1);
  EXPECT_TRUE(has_eval_split(c));
  EXPECT_EQ(c.format, DataFormat::kCompletion);
  EXPECT_EQ(c.tmpl.kind, TemplateKind::kCustomString);
  EXPECT_EQ(c.tmpl.prompt, "Q: {prompt}\nA:");
  EXPECT_EQ(c.tmpl.response, " {completion}");
  EXPECT_EQ(c.max_seq_len, 128);
  EXPECT_FALSE(c.packing);
  EXPECT_TRUE(c.train_on_prompt);
  EXPECT_EQ(c.shuffle_buffer, 0);
  EXPECT_EQ(c.prompt_field, "question");
  EXPECT_EQ(c.completion_field, "answer");
  EXPECT_EQ(c.text_field, "body");
  EXPECT_TRUE(c.drop_long);
  EXPECT_EQ(c.on_bad_line, BadLinePolicy::kSkip);
  EXPECT_EQ(c.max_bad_lines, 7);
  EXPECT_FALSE(c.add_bos);
  EXPECT_FALSE(c.add_eos);
  EXPECT_TRUE(c.pad_to_max_seq_len);
}

TEST(DataConfig, TemplateDefaultsFollowFormat) {
  // chat: the model's own chat template (data/chat_template.h), chatml when the model has none.
  EXPECT_EQ(make_config("train: t\nformat: chat\n").tmpl.kind, TemplateKind::kAuto);
  EXPECT_TRUE(make_config("train: t\nformat: chat\n").tmpl.auto_falls_back);
  EXPECT_FALSE(make_config("train: t\nformat: chat\ntemplate: auto\n").tmpl.auto_falls_back);
  EXPECT_EQ(make_config("train: t\nformat: completion\n").tmpl.kind, TemplateKind::kRaw);
  EXPECT_EQ(make_config("train: t\nformat: text\n").tmpl.kind, TemplateKind::kRaw);
  EXPECT_EQ(make_config("train: t\nformat: chat\ntemplate: llama2-chat\n").tmpl.kind, TemplateKind::kLlama2Chat);
  // Order of keys does not matter: template before format.
  EXPECT_EQ(make_config("template: chatml\ntrain: t\nformat: alpaca\n").tmpl.kind, TemplateKind::kChatml);
}

TEST(DataConfig, PerRoleTemplate) {
  const DataConfig c = make_config(R"(
train: t.jsonl
format: chat
template:
  system: {prefix: "<sys>", suffix: "</sys>\n"}
  user: {prefix: "User: ", suffix: "\n"}
  assistant: {prefix: "Bot: ", suffix: "\n"}
)");
  EXPECT_EQ(c.tmpl.kind, TemplateKind::kCustomRoles);
  EXPECT_EQ(c.tmpl.system.prefix, "<sys>");
  EXPECT_EQ(c.tmpl.system.suffix, "</sys>\n");
  EXPECT_EQ(c.tmpl.user.prefix, "User: ");
  EXPECT_EQ(c.tmpl.assistant.prefix, "Bot: ");
  EXPECT_EQ(c.tmpl.assistant.suffix, "\n");
}

struct BadConfig {
  const char* yaml;
  const char* expect_where;  // "cfg.yaml:LINE"
  const char* expect_key;    // key path in the message
  const char* expect_hint;   // a piece of the hint / explanation
};

class DataConfigErrors : public ::testing::TestWithParam<BadConfig> {};

TEST_P(DataConfigErrors, NameKeyFileAndLine) {
  const BadConfig& bc = GetParam();
  try {
    make_config(bc.yaml);
    FAIL() << "no error for:\n" << bc.yaml;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(bc.expect_where), std::string::npos) << msg;
    EXPECT_NE(msg.find(bc.expect_key), std::string::npos) << msg;
    EXPECT_NE(msg.find(bc.expect_hint), std::string::npos) << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DataConfigErrors,
    ::testing::Values(
        BadConfig{"train: t\nmax_seq_len: 64\nshuffle_bufer: 10\n", "cfg.yaml:3", "data.shuffle_bufer",
                  "valid keys: train, eval"},
        BadConfig{"train: t\nformat: alpacca\n", "cfg.yaml:2", "data.format", "alpaca | chat | completion | text"},
        BadConfig{"train: t\n\nmax_seq_len: abc\n", "cfg.yaml:3", "data.max_seq_len", "expected an integer"},
        BadConfig{"train: t\nmax_seq_len: 2\n", "cfg.yaml:2", "data.max_seq_len", "must be >= 8 (got 2)"},
        BadConfig{"train: t\npacking: maybe\n", "cfg.yaml:2", "data.packing", "expected true or false"},
        BadConfig{"train: t\neval_fraction: 1.5\n", "cfg.yaml:2", "data.eval_fraction", "must be < 1 (got 1.5)"},
        BadConfig{"train: t\neval: e\neval_fraction: 0.1\n", "cfg.yaml:3", "data.eval_fraction",
                  "either a separate eval"},
        BadConfig{"train: t\nformat: chat\ntemplate: alpaca\n", "cfg.yaml:3", "data.template", "needs format alpaca"},
        BadConfig{"train: t\non_bad_line: ignore\n", "cfg.yaml:2", "data.on_bad_line", "fail | skip"},
        BadConfig{"train: t\ntemplate: {prompt: \"{foo}\", response: \"{output}\"}\n", "cfg.yaml:2", "data.template",
                  "{instruction}"},
        BadConfig{"format: alpaca\neval: e\n", "cfg.yaml:1", "data.train", "add train:"},
        BadConfig{"train: t\nshuffle_buffer: -1\n", "cfg.yaml:2", "data.shuffle_buffer", "must be >= 0 (got -1)"},
        BadConfig{"train: t\ntemplate:\n  user: {prefix: a, sufix: b}\n", "cfg.yaml:3", "data.template.user.sufix",
                  "prefix, suffix"},
        BadConfig{"train: {a: 1}\n", "cfg.yaml:1", "data.train", "expected a path"},
        BadConfig{"train: t\nformat: text\ntemplate: chatml\n", "cfg.yaml:3", "data.template", "no template"},
        BadConfig{"train: t\nadd_eos: [1]\n", "cfg.yaml:2", "data.add_eos", "expected true or false"},
        BadConfig{"train: t\nformat: alpaca\nweights: 3\n", "cfg.yaml:3", "data.weights", "valid keys: train, eval"},
        BadConfig{"train: [a, \"\"]\n", "cfg.yaml:1", "data.train[1]", "expected a non-empty string"},
        BadConfig{"train: t\neval: []\n", "cfg.yaml:2", "data.eval", "name at least one file"}));

TEST(DataConfig, NotAMapping) {
  EXPECT_THROW(make_config("- a\n- b\n"), Error);
  EXPECT_THROW(data::parse_data_config(YAML::Node(), "cfg.yaml"), Error);
}

}  // namespace
}  // namespace qlora::data
