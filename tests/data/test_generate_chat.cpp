// `qlora-generate --chat` without a prompt: a conversation read from stdin, one user turn per line. The second reply
// must be what the model gives for the whole conversation so far (first turn, the model's first reply, second turn)
// rendered with the model's template: checked against a one-shot run on those ids, built here with the template.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "data/chat_template.h"
#include "test_util.h"

namespace qlora::data {
namespace {

// The lines of `out` made of token ids only (what --print-ids prints per reply).
std::vector<std::string> id_lines(const std::string& out) {
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.find_first_not_of("0123456789 ") == std::string::npos) lines.push_back(line);
  }
  return lines;
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

TEST(GenerateChat, LaterTurnsSeeTheWholeConversation) {
  ASSERT_TRUE(fs::exists(test::tiny_model_dir() / "config.json")) << "run through ctest (fixture make_tiny_model)";
  // The tiny model with a chat template of its own.
  const fs::path model = test::temp_dir() / "tiny-chat";
  fs::copy(test::tiny_model_dir(), model, fs::copy_options::recursive);
  write_file_atomic(model / "chat_template.jinja",
                    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
                    "{% if add_generation_prompt %}<assistant>{% endif %}");
  const std::string gen = (test::bin_dir() / "qlora-generate").string() + " --model " + model.string() +
                          " --dtype fp32 --max-new-tokens 6 --ignore-eos --print-ids --threads 1";
  const auto chat =
      test::run_command("printf 'hello there\\n\\nwhat next\\n' | " + gen + " --chat --system 'Be brief.'");
  ASSERT_EQ(chat.exit_code, 0) << chat.output;
  const auto replies = id_lines(chat.output);
  ASSERT_EQ(replies.size(), 2u) << chat.output;  // the empty line is not a turn

  const auto tok = tokenizer::load_tokenizer(model);
  const auto t = load_model_chat_template(model);
  const std::vector<Message> so_far = {{Role::kSystem, "Be brief."},
                                       {Role::kUser, "hello there"},
                                       {Role::kAssistant, tok->decode(parse_ids(replies[0]))},
                                       {Role::kUser, "what next"}};
  std::string ids;
  for (int32_t id : encode_chat_prompt(t, *tok, so_far)) {
    if (!ids.empty()) ids += ' ';
    ids += std::to_string(id);
  }
  const auto once = test::run_command(gen + " --prompt-ids '" + ids + "'");
  ASSERT_EQ(once.exit_code, 0) << once.output;
  const auto direct = id_lines(once.output);
  ASSERT_EQ(direct.size(), 1u) << once.output;
  EXPECT_EQ(direct[0], replies[1]);
  // The second prompt is longer than the first by the reply and the turn (history kept).
  EXPECT_NE(chat.output.find("prompt " + std::to_string(encode_chat_prompt(t, *tok, so_far).size()) + " tokens"),
            std::string::npos)
      << chat.output;
}

}  // namespace
}  // namespace qlora::data
