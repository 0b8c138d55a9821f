// data.template: auto. References independent of our code: Meta's real Llama 3 tokenizer and chat template with the
// ids transformers' apply_chat_template gives (tests/fixtures/llama3_chat_golden.json, made by
// tests/interop_bpe/make_chat_golden.py), and the real Qwen3 template (tests/fixtures/chat_templates) whose rendering
// is written out here by hand from the template and checked against transformers in tests/interop_chat.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/labels.h"
#include "data/chat_template.h"
#include "data/data_loader.h"
#include "data_test_util.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"

namespace qlora::data {
namespace {

using ojson = nlohmann::ordered_json;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ModelChatTemplate qwen3_template() {
  ModelChatTemplate t;
  t.source = read_file(test::fixtures_dir() / "chat_templates" / "qwen3.jinja");
  t.origin = "qwen3.jinja";
  t.special_tokens = {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}};
  t.special_token_texts = {"<|endoftext|>", "<|im_end|>", "<|im_start|>"};
  return t;
}

std::vector<std::string> trained_texts(const RenderedChat& chat) {
  std::vector<std::string> out;
  for (const auto& [s, e] : chat.trained) out.push_back(chat.text.substr(s, e - s));
  return out;
}

// Qwen3 renders an assistant turn after the last user message with a <think> block (empty when the message has no
// reasoning) and earlier turns without one: the spans follow what the template wrote for each turn, and each ends
// with its <|im_end|> but not the newline after it.
TEST(ChatTemplate, Qwen3SpansCoverEachAssistantTurnAsRendered) {
  const ChatTemplateRenderer r(qwen3_template());
  const ojson messages = ojson::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "<think>old reasoning</think>a1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "<think>\nwhy\n</think>\n\na2"}])");
  const RenderedChat chat = r.render_for_training(messages, ojson());
  EXPECT_EQ(chat.text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1"
            "<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\na2"
            "<|im_end|>\n");
  EXPECT_EQ(trained_texts(chat), (std::vector<std::string>{"a1<|im_end|>", "<think>\nwhy\n</think>\n\na2<|im_end|>"}));
  // What generation sees: the same prefix up to the assistant header.
  EXPECT_EQ(r.render(ojson::parse(R"([{"role": "user", "content": "q"}])"), ojson(), true),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, ToolTurnsAndConsecutiveRolesAreMaskedButRendered) {
  const ChatTemplateRenderer r(qwen3_template());
  const ojson messages = ojson::parse(R"([
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "21"},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "21 and sunny."}])");
  const RenderedChat chat = r.render_for_training(messages, ojson());
  EXPECT_NE(chat.text.find("<|im_start|>user\n<tool_response>\n21\n</tool_response>\n<tool_response>\nsunny\n"
                           "</tool_response><|im_end|>"),
            std::string::npos)
      << chat.text;
  const std::vector<std::string> trained = trained_texts(chat);
  ASSERT_EQ(trained.size(), 2u);
  EXPECT_EQ(trained[0],
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
            "<|im_end|>");
  EXPECT_EQ(trained[1], "<think>\n\n</think>\n\n21 and sunny.<|im_end|>");
}

TEST(ChatTemplate, RefusedConversationIsBadRecord) {
  ModelChatTemplate t;
  t.source = read_file(test::fixtures_dir() / "chat_templates" / "gemma2.jinja");
  t.special_tokens = {{"bos_token", "<bos>"}};
  const ChatTemplateRenderer r(t);
  EXPECT_THROW(r.render_for_training(ojson::parse(R"([{"role": "system", "content": "s"},
      {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])"),
                                     ojson()),
               BadRecord);
}

// Meta's Llama 3 tokenizer folder carries Meta's (original) chat_template: `auto` must give transformers' ids
// exactly, and train exactly the assistant turns with their <|eot_id|>.
TEST(ChatTemplate, Llama3AutoIdsEqualTransformers) {
  const fs::path dir = test::source_dir() / "assets" / "llama3-tokenizer";
  const auto tok = tokenizer::BpeTokenizer::load(dir);
  const ModelChatTemplate t = load_model_chat_template(dir);
  ASSERT_FALSE(t.empty());
  const ChatTemplateRenderer r(t);
  const auto golden = nlohmann::json::parse(read_file(test::fixtures_dir() / "llama3_chat_golden.json"));
  const int32_t eot = tok->piece_to_id("<|eot_id|>");
  const int32_t header_end = tok->piece_to_id("<|end_header_id|>");
  for (const auto& g : golden) {
    const std::string line = nlohmann::json{{"messages", g["messages"]}}.dump();
    const TokenizedExample ex = tokenize_chat_record(r, line, *tok, /*train_on_prompt=*/false);
    // Meta's original template always ends with the assistant header (4 tokens), which the golden file drops.
    const auto golden_ids = g["ids"].get<std::vector<int32_t>>();
    ASSERT_EQ(ex.ids.size(), golden_ids.size() + 4) << line;
    EXPECT_EQ(std::vector<int32_t>(ex.ids.begin(), ex.ids.end() - 4), golden_ids) << line;
    for (size_t i = golden_ids.size(); i < ex.ids.size(); ++i) EXPECT_EQ(ex.labels[i], kIgnoreIndex);
    // Labels: from just after an assistant header's "\n\n" through its <|eot_id|>; nothing else.
    int assistant_turns = 0;
    for (const auto& m : g["messages"]) assistant_turns += m["role"] == "assistant";
    int trained_eots = 0;
    for (size_t i = 0; i < ex.ids.size(); ++i) {
      if (ex.ids[i] == eot && ex.labels[i] == eot) ++trained_eots;
      if (ex.ids[i] == header_end) {
        EXPECT_EQ(ex.labels[i], kIgnoreIndex);
      }
    }
    EXPECT_EQ(trained_eots, assistant_turns) << line;
  }
}

// The generation prompt of `qlora-generate --chat`: transformers' ids of the conversation up to and including the
// first assistant header (Meta's template writes it after the user turn).
TEST(ChatTemplate, Llama3ChatPromptEqualsTransformersPrefix) {
  const fs::path dir = test::source_dir() / "assets" / "llama3-tokenizer";
  const auto tok = tokenizer::BpeTokenizer::load(dir);
  const auto golden = nlohmann::json::parse(read_file(test::fixtures_dir() / "llama3_chat_golden.json"));
  const auto& g = golden[0];
  ASSERT_EQ(g["messages"][0]["role"], "user");
  const auto ids = g["ids"].get<std::vector<int32_t>>();
  const auto header = std::find(ids.begin(), ids.end(), tok->piece_to_id("assistant"));
  ASSERT_NE(header, ids.end());
  const std::vector<int32_t> want(ids.begin(), header + 3);  // "assistant" <|end_header_id|> "\n\n"
  EXPECT_EQ(encode_chat_prompt(load_model_chat_template(dir), *tok, "", g["messages"][0]["content"]), want);
}

// A later turn of `qlora-generate --chat` (turns from stdin): the conversation so far, ending with the user's
// second message, renders to transformers' ids up to and including the second assistant header.
TEST(ChatTemplate, Llama3MultiTurnChatPromptEqualsTransformersPrefix) {
  const fs::path dir = test::source_dir() / "assets" / "llama3-tokenizer";
  const auto tok = tokenizer::BpeTokenizer::load(dir);
  const auto golden = nlohmann::json::parse(read_file(test::fixtures_dir() / "llama3_chat_golden.json"));
  const auto& g = golden[1];  // system, user, assistant, user, assistant
  ASSERT_EQ(g["messages"].size(), 5u);
  std::vector<Message> so_far;
  for (size_t i = 0; i < 4; ++i) {
    const std::string role = g["messages"][i]["role"];
    so_far.push_back({role == "system" ? Role::kSystem
                      : role == "user" ? Role::kUser
                                       : Role::kAssistant,
                      g["messages"][i]["content"]});
  }
  ASSERT_EQ(so_far.back().role, Role::kUser);
  const auto ids = g["ids"].get<std::vector<int32_t>>();
  const auto header = std::find(ids.rbegin(), ids.rend(), tok->piece_to_id("assistant"));
  ASSERT_NE(header, ids.rend());
  const std::vector<int32_t> want(ids.begin(), header.base() + 2);  // "assistant" <|end_header_id|> "\n\n"
  EXPECT_EQ(encode_chat_prompt(load_model_chat_template(dir), *tok, so_far), want);
}

TEST(ChatTemplate, LoaderDefaultsToModelTemplateAndFallsBackToChatml) {
  const fs::path dir = test::temp_dir();
  test::write_jsonl(dir / "chat.jsonl", {nlohmann::json::parse(R"({"messages": [{"role": "user", "content": "hi"},
      {"role": "assistant", "content": "yo"}]})")});
  DataConfig cfg = test::make_config("train: " + (dir / "chat.jsonl").string() + "\nformat: chat\npacking: false\n");
  const test::ByteTokenizer tok;
  // No model template: chatml, as before.
  const auto chatml = DataLoader(cfg, tok, Split::kTrain, 1, 0, 1).preview(1);
  ASSERT_EQ(chatml.size(), 1u);
  EXPECT_EQ(tok.decode(chatml[0].ids).find("<|im_start|>user\nhi<|im_end|>"), 0u);
  // A model template: used, and only the assistant turn and its closing tag are trained.
  ModelChatTemplate t;
  t.source =
      "{% for m in messages %}[{{ m.role }}]{{ m.content }}[/{{ m.role }}]{% endfor %}"
      "{% if add_generation_prompt %}[assistant]{% endif %}";
  t.special_token_texts = {"[/assistant]"};
  cfg.chat_template = std::make_shared<const ModelChatTemplate>(t);
  const auto own = DataLoader(cfg, tok, Split::kTrain, 1, 0, 1).preview(1);
  ASSERT_EQ(own.size(), 1u);
  EXPECT_EQ(format_prompt_trained(own[0], tok), "PROMPT: [user]hi[/user][assistant]\nTRAINED: yo[/assistant]");
  // Alpaca records become a user turn (instruction, then the input) and an assistant turn.
  test::write_jsonl(dir / "alpaca.jsonl", {nlohmann::json{{"instruction", "add"}, {"input", "1 2"}, {"output", "3"}}});
  DataConfig alpaca =
      test::make_config("train: " + (dir / "alpaca.jsonl").string() + "\nformat: alpaca\ntemplate: auto\n");
  alpaca.chat_template = cfg.chat_template;
  const auto al = DataLoader(alpaca, tok, Split::kTrain, 1, 0, 1).preview(1);
  ASSERT_EQ(al.size(), 1u);
  EXPECT_EQ(format_prompt_trained(al[0], tok), "PROMPT: [user]add\n\n1 2[/user][assistant]\nTRAINED: 3[/assistant]");
  // `template: auto` written out needs a model template.
  DataConfig explicit_auto = test::make_config("train: " + (dir / "chat.jsonl").string() +
                                               "\nformat: chat\n"
                                               "template: auto\n");
  EXPECT_THROW(DataLoader(explicit_auto, tok, Split::kTrain, 1, 0, 1), Error);
}

}  // namespace
}  // namespace qlora::data
