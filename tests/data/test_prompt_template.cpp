// Formats and templates: each renders exactly the hand-written segments of its definition
// (data/data_config.h), and bad records are rejected with a reason.
#include <gtest/gtest.h>

#include "data/prompt_template.h"
#include "data_test_util.h"

namespace qlora::data {
namespace {

using nlohmann::json;
using test::make_config;
using K = Segment::Kind;

Segment bos() {
  return {K::kBos, "", false};
}
Segment eos() {
  return {K::kEos, "", true};
}
Segment prompt(const std::string& s) {
  return {K::kText, s, false};
}
Segment trained(const std::string& s) {
  return {K::kText, s, true};
}

std::vector<Segment> render(const std::string& cfg_yaml, const json& j) {
  const DataConfig cfg = make_config(cfg_yaml);
  return render_record(parse_record(j, cfg), cfg);
}

void expect_segments(const std::vector<Segment>& got, const std::vector<Segment>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(static_cast<int>(got[i].kind), static_cast<int>(want[i].kind)) << "segment " << i;
    EXPECT_EQ(got[i].text, want[i].text) << "segment " << i;
    EXPECT_EQ(got[i].trainable, want[i].trainable) << "segment " << i;
  }
}

const json kAlpacaWithInput = {{"instruction", "Add the numbers."}, {"input", "2 and 3"}, {"output", "5"}};
const json kAlpacaNoInput = {{"instruction", "Name a color."}, {"input", ""}, {"output", "Blue."}};
const json kChat = {{"messages",
                     {{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Hi"}},
                      {{"role", "assistant"}, {"content", "Hello!"}},
                      {{"role", "user"}, {"content", "Bye"}},
                      {{"role", "assistant"}, {"content", "Goodbye."}}}}};
const json kShareGpt = {{"conversations",
                         {{{"from", "system"}, {"value", "Be brief."}},
                          {{"from", "human"}, {"value", "Hi"}},
                          {{"from", "gpt"}, {"value", "Hello!"}},
                          {{"from", "human"}, {"value", "Bye"}},
                          {{"from", "gpt"}, {"value", "Goodbye."}}}}};

TEST(PromptTemplate, AlpacaWithInput) {
  expect_segments(
      render("train: t\n", kAlpacaWithInput),
      {bos(),
       prompt("Below is an instruction that describes a task, paired with an input that provides further "
              "context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd "
              "the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"),
       trained("5"), eos()});
}

TEST(PromptTemplate, AlpacaNoInput) {
  const std::vector<Segment> want = {
      bos(),
      prompt("Below is an instruction that describes a task. Write a response that appropriately completes the "
             "request.\n\n### Instruction:\nName a color.\n\n### Response:\n"),
      trained("Blue."), eos()};
  expect_segments(render("train: t\n", kAlpacaNoInput), want);
  // A missing or null input is the same as an empty one.
  expect_segments(render("train: t\n", json{{"instruction", "Name a color."}, {"output", "Blue."}}), want);
  expect_segments(render("train: t\n", json{{"instruction", "Name a color."}, {"input", nullptr}, {"output", "Blue."}}),
                  want);
}

TEST(PromptTemplate, AlpacaNoBosNoEos) {
  const auto segs = render("train: t\nadd_bos: false\nadd_eos: false\n", kAlpacaNoInput);
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[1].text, "Blue.");
}

TEST(PromptTemplate, Llama2ChatMultiTurn) {
  const std::vector<Segment> want = {bos(),
                                     prompt("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"),
                                     trained("Hello!"),
                                     eos(),
                                     bos(),
                                     prompt("[INST] Bye [/INST]"),
                                     trained("Goodbye."),
                                     eos()};
  expect_segments(render("train: t\nformat: chat\ntemplate: llama2-chat\n", kChat), want);
  expect_segments(render("train: t\nformat: chat\ntemplate: llama2-chat\n", kShareGpt), want);
}

TEST(PromptTemplate, Llama2ChatNoSystem) {
  const json j = {{"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", "assistant"}, {"content", "Yo"}}}}};
  expect_segments(render("train: t\nformat: chat\ntemplate: llama2-chat\n", j),
                  {bos(), prompt("[INST] Hi [/INST]"), trained("Yo"), eos()});
}

TEST(PromptTemplate, ChatmlMultiTurn) {
  expect_segments(
      render("train: t\nformat: chat\ntemplate: chatml\n", kChat),
      {bos(),
       prompt("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
       trained("Hello!<|im_end|>"), eos(), prompt("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"),
       trained("Goodbye.<|im_end|>"), eos(), prompt("\n")});
}

TEST(PromptTemplate, Llama3MultiTurn) {
  const auto sp = [](const char* tok, bool train) { return Segment{K::kSpecial, tok, train}; };
  expect_segments(render("train: t\nformat: chat\ntemplate: llama3\n", kChat), {bos(),
                                                                                sp("<|start_header_id|>", false),
                                                                                prompt("system"),
                                                                                sp("<|end_header_id|>", false),
                                                                                prompt("\n\nBe brief."),
                                                                                sp("<|eot_id|>", false),
                                                                                sp("<|start_header_id|>", false),
                                                                                prompt("user"),
                                                                                sp("<|end_header_id|>", false),
                                                                                prompt("\n\nHi"),
                                                                                sp("<|eot_id|>", false),
                                                                                sp("<|start_header_id|>", false),
                                                                                prompt("assistant"),
                                                                                sp("<|end_header_id|>", false),
                                                                                prompt("\n\n"),
                                                                                trained("Hello!"),
                                                                                sp("<|eot_id|>", true),
                                                                                sp("<|start_header_id|>", false),
                                                                                prompt("user"),
                                                                                sp("<|end_header_id|>", false),
                                                                                prompt("\n\nBye"),
                                                                                sp("<|eot_id|>", false),
                                                                                sp("<|start_header_id|>", false),
                                                                                prompt("assistant"),
                                                                                sp("<|end_header_id|>", false),
                                                                                prompt("\n\n"),
                                                                                trained("Goodbye."),
                                                                                sp("<|eot_id|>", true),
                                                                                eos()});
}

TEST(PromptTemplate, CustomRoles) {
  const char* cfg = R"(
train: t
format: chat
template:
  system: {prefix: "<sys>", suffix: "</sys>\n"}
  user: {prefix: "User: ", suffix: "\n"}
  assistant: {prefix: "Bot: ", suffix: "\n"}
)";
  expect_segments(render(cfg, kChat), {bos(), prompt("<sys>Be brief.</sys>\nUser: Hi\nBot: "), trained("Hello!\n"),
                                       eos(), prompt("User: Bye\nBot: "), trained("Goodbye.\n"), eos()});
}

TEST(PromptTemplate, CustomStringAlpaca) {
  expect_segments(
      render("train: t\ntemplate: {prompt: \"Q: {instruction}\\n{input}\\nA:\", response: \" {output} {{ok}}\"}\n",
             kAlpacaWithInput),
      {bos(), prompt("Q: Add the numbers.\n2 and 3\nA:"), trained(" 5 {ok}"), eos()});
}

TEST(PromptTemplate, AlpacaWithChatmlTemplate) {
  expect_segments(render("train: t\ntemplate: chatml\n", kAlpacaWithInput),
                  {bos(), prompt("<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n"),
                   trained("5<|im_end|>"), eos(), prompt("\n")});
}

TEST(PromptTemplate, CompletionRawAndFieldNames) {
  expect_segments(render("train: t\nformat: completion\n", json{{"prompt", "2+2="}, {"completion", "4"}}),
                  {bos(), prompt("2+2="), trained("4"), eos()});
  expect_segments(
      render("train: t\nformat: completion\nprompt_field: q\ncompletion_field: a\n", json{{"q", "x"}, {"a", "y"}}),
      {bos(), prompt("x"), trained("y"), eos()});
}

TEST(PromptTemplate, Text) {
  expect_segments(render("train: t\nformat: text\n", json{{"text", "hello world"}}),
                  {bos(), trained("hello world"), eos()});
  expect_segments(render("train: t\nformat: text\ntext_field: body\n", json{{"body", "b"}}),
                  {bos(), trained("b"), eos()});
}

TEST(PromptTemplate, BadRecords) {
  const DataConfig alpaca = make_config("train: t\n");
  const DataConfig chat = make_config("train: t\nformat: chat\ntemplate: llama2-chat\n");
  const auto reason = [](const json& j, const DataConfig& cfg) -> std::string {
    try {
      parse_record(j, cfg);
    } catch (const BadRecord& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(reason(json{{"instruction", "x"}}, alpaca).find("missing field \"output\""), std::string::npos);
  EXPECT_NE(
      reason(json{{"instruction", 3}, {"output", "y"}}, alpaca).find("\"instruction\" must be a string, got number"),
      std::string::npos);
  EXPECT_NE(reason(json::array({1, 2}), alpaca).find("expected a JSON object"), std::string::npos);
  EXPECT_NE(reason(json{{"messages", "hi"}}, chat).find("must be an array"), std::string::npos);
  EXPECT_NE(reason(json{{"messages", {{{"role", "user"}, {"content", "a"}}}}}, chat).find("must end with an assistant"),
            std::string::npos);
  EXPECT_NE(reason(json{{"messages", {{{"role", "assistant"}, {"content", "a"}}}}}, chat).find("expected role user"),
            std::string::npos);
  EXPECT_NE(reason(json{{"messages", {{{"role", "bot"}, {"content", "a"}}}}}, chat).find("unknown role \"bot\""),
            std::string::npos);
  EXPECT_NE(reason(json{{"messages", {{{"role", "user"}}}}}, chat).find("missing field \"content\""),
            std::string::npos);
  EXPECT_NE(reason(json{{"nothing", 1}}, chat).find("missing field \"messages\""), std::string::npos);
}

}  // namespace
}  // namespace qlora::data
