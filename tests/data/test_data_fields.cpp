// Datasets as people have them: other column names (data.fields), ShareGPT role names, tool turns and consecutive
// same-role turns with the per-turn templates. The reference is the same record written with the format's own
// names and roles: both must give exactly the same segments.
#include <gtest/gtest.h>

#include "data/chat_template.h"
#include "data/prompt_template.h"
#include "data_test_util.h"
#include "test_util.h"

namespace qlora::data {
namespace {

using nlohmann::json;
using test::make_config;

std::vector<Segment> render(const DataConfig& cfg, const json& j) {
  return render_record(parse_record(j, cfg), cfg);
}

std::string bad_record(const DataConfig& cfg, const json& j) {
  try {
    parse_record(j, cfg);
  } catch (const BadRecord& e) {
    return e.what();
  }
  ADD_FAILURE() << "no BadRecord for " << j.dump();
  return "";
}

TEST(DataFields, AlpacaColumnsMapped) {
  const DataConfig mapped = make_config("train: t\nfields: {instruction: question, input: context, output: answer}\n");
  const DataConfig plain = make_config("train: t\n");
  EXPECT_EQ(render(mapped, {{"question", "Add."}, {"context", "2 3"}, {"answer", "5"}}),
            render(plain, {{"instruction", "Add."}, {"input", "2 3"}, {"output", "5"}}));
  // A mapped field missing from a record names both the record's name and the key.
  EXPECT_CONTAINS(bad_record(mapped, {{"instruction", "Add."}, {"answer", "5"}}),
                  "missing field \"question\" (data.fields.instruction) (the record has: answer, instruction)");
  EXPECT_CONTAINS(bad_record(mapped, {{"question", "Add."}, {"answer", 5}}),
                  "field \"answer\" (data.fields.output) must be a string, got number");
}

TEST(DataFields, CompletionTextAndChatColumnsMapped) {
  const DataConfig completion = make_config("train: t\nformat: completion\nfields: {prompt: q, completion: a}\n");
  EXPECT_EQ(render(completion, {{"q", "Q"}, {"a", "A"}}),
            render(make_config("train: t\nformat: completion\n"), {{"prompt", "Q"}, {"completion", "A"}}));
  const DataConfig text = make_config("train: t\nformat: text\nfields: {text: body}\n");
  EXPECT_EQ(render(text, {{"body", "doc"}}), render(make_config("train: t\nformat: text\n"), {{"text", "doc"}}));
  const DataConfig chat =
      make_config("train: t\nformat: chat\ntemplate: chatml\nfields: {messages: dialog, role: speaker, content: t}\n");
  const json mapped = {{"dialog", {{{"speaker", "user"}, {"t", "Hi"}}, {{"speaker", "assistant"}, {"t", "Yo"}}}}};
  const json plain = {
      {"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Yo"}}}}};
  EXPECT_EQ(render(chat, mapped), render(make_config("train: t\nformat: chat\ntemplate: chatml\n"), plain));
  EXPECT_CONTAINS(bad_record(chat, plain), "missing field \"dialog\" (data.fields.messages)");
  // The template: auto path reads the same names and hands the template role/content messages.
  const ChatRecord rec = parse_chat_record(nlohmann::ordered_json(mapped), chat.fields);
  EXPECT_EQ(json::parse(rec.messages.dump()), plain["messages"]);
}

TEST(DataFields, ConfigErrorsNameTheKey) {
  const std::string unknown = test::error_of([] { make_config("train: t\nformat: alpaca\nfields: {prompt: q}\n"); });
  EXPECT_CONTAINS(unknown, "cfg.yaml:3");
  EXPECT_CONTAINS(unknown, "data.fields");
  EXPECT_CONTAINS(unknown, "prompt");
  const std::string both = test::error_of(
      [] { make_config("train: t\nformat: completion\nprompt_field: q\nfields: {prompt: question}\n"); });
  EXPECT_CONTAINS(both, "give either data.prompt_field or data.fields.prompt, not both");
  const std::string scalar = test::error_of([] { make_config("train: t\nfields: question\n"); });
  EXPECT_CONTAINS(scalar, "expected a mapping {field: name in the records}");
  const std::string empty = test::error_of([] { make_config("train: t\nfields: {output: ''}\n"); });
  EXPECT_CONTAINS(empty, "data.fields.output");
  // The legacy keys still work and are described as such.
  const DataConfig legacy = make_config("train: t\nformat: completion\nprompt_field: q\n");
  EXPECT_EQ(record_field_name(legacy, "prompt"), "q");
  EXPECT_EQ(describe_record_field(legacy, "prompt"), "\"q\" (data.prompt_field)");
  EXPECT_EQ(describe_record_field(legacy, "completion"), "\"completion\"");
}

TEST(DataFields, ShareGptRoleNamesAndToolTurns) {
  const DataConfig chatml = make_config("train: t\nformat: chat\ntemplate: chatml\nadd_eos: false\n");
  const json sharegpt = {{"conversations",
                          {{{"from", "human"}, {"value", "Weather?"}},
                           {{"from", "function_call"}, {"value", "{\"name\": \"w\"}"}},
                           {{"from", "observation"}, {"value", "21"}},
                           {{"from", "gpt"}, {"value", "21 degrees."}}}}};
  const json openai = {{"messages",
                        {{{"role", "user"}, {"content", "Weather?"}},
                         {{"role", "assistant"}, {"content", "{\"name\": \"w\"}"}},
                         {{"role", "tool"}, {"content", "21"}},
                         {{"role", "assistant"}, {"content", "21 degrees."}}}}};
  EXPECT_EQ(render(chatml, sharegpt), render(chatml, openai));
  // chatml, written out: each turn on its own, the tool turn under its role, the assistant turns trained.
  const std::vector<Segment> want = {
      {Segment::Kind::kBos, "", false},
      {Segment::Kind::kText, "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n", false},
      {Segment::Kind::kText, "{\"name\": \"w\"}<|im_end|>", true},
      {Segment::Kind::kText, "\n<|im_start|>tool\n21<|im_end|>\n<|im_start|>assistant\n", false},
      {Segment::Kind::kText, "21 degrees.<|im_end|>", true},
      {Segment::Kind::kText, "\n", false}};
  EXPECT_EQ(render(chatml, openai), want);
  // Consecutive same-role turns render one after the other.
  const json twice = {{"messages",
                       {{{"role", "user"}, {"content", "a"}},
                        {{"role", "user"}, {"content", "b"}},
                        {{"role", "assistant"}, {"content", "c"}}}}};
  EXPECT_EQ(render(chatml, twice)[1].text,
            "<|im_start|>user\na<|im_end|>\n<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n");
  // llama2-chat pairs turns, so it refuses both, saying which templates take them.
  const DataConfig llama2 = make_config("train: t\nformat: chat\ntemplate: llama2-chat\n");
  EXPECT_CONTAINS(bad_record(llama2, twice), "messages[1]: expected role assistant, got user");
  EXPECT_CONTAINS(bad_record(llama2, openai), "templates chatml, llama3, auto and per-role custom ones also take");
  // A per-role template renders tool turns with its tool affixes, and refuses them without.
  const DataConfig roles = make_config(
      "train: t\nformat: chat\nadd_bos: false\nadd_eos: false\ntemplate: {user: {prefix: 'U:'}, assistant: {prefix: "
      "'A:'}, tool: {prefix: 'T:', suffix: ';'}}\n");
  const auto segs = render(roles, openai);
  EXPECT_EQ(segs[2].text, "T:21;A:");
  const DataConfig no_tool =
      make_config("train: t\nformat: chat\ntemplate: {user: {prefix: 'U:'}, assistant: {prefix: 'A:'}}\n");
  EXPECT_THROW(render(no_tool, openai), BadRecord);
  EXPECT_CONTAINS(bad_record(chatml, {{"messages", {{{"role", "user"}, {"content", "a"}}}}}),
                  "has no assistant message");
  EXPECT_CONTAINS(bad_record(chatml, {{"messages", {{{"role", "bot"}, {"content", "a"}}}}}), "unknown role \"bot\"");
}

}  // namespace
}  // namespace qlora::data
