// The model's own chat template (data.template: auto): loading it from the model folder, rendering a conversation
// exactly as transformers' apply_chat_template does, and finding the assistant turns in the rendered text so that
// they (with their end-of-turn token) are trained and the rest is masked.
//
//   ModelChatTemplate t = load_model_chat_template(model_dir);    // chat_template.jinja, else tokenizer_config.json
//   ChatTemplateRenderer r(t);
//   std::string prompt = r.render(messages, tools, /*add_generation_prompt=*/true);   // for generation
//   RenderedChat chat = r.render_for_training(messages, tools);                       // text + trained byte spans
//   TokenizedExample ex = tokenize_rendered(chat, tok, t, /*train_on_prompt=*/false);
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "data/jinja.h"
#include "data/prompt_template.h"
#include "data/tokenize.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {

namespace fs = std::filesystem;

struct ModelChatTemplate {
  std::string source;  // the Jinja text; empty: the model has none
  std::string origin;  // the file it came from (for messages)
  // The variables transformers adds to every render: its special_tokens_map (bos_token, eos_token, unk_token,
  // sep_token, pad_token, cls_token, mask_token; those the tokenizer has) as strings.
  nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object();
  // Contents of the tokenizer's special added tokens (tokenizer.json added_tokens and tokenizer_config.json
  // added_tokens_decoder marked special, plus the named special tokens): each is one token id wherever it appears
  // in the rendered text.
  std::vector<std::string> special_token_texts;

  bool empty() const { return source.empty(); }
};

// Reads MODEL_DIR/chat_template.jinja when present (transformers prefers it), else the chat_template of
// MODEL_DIR/tokenizer_config.json (a string, or the entry named "default" of a list). A model without one gives an
// empty template; an unreadable file or a malformed tokenizer_config.json is a qlora::Error naming it.
ModelChatTemplate load_model_chat_template(const fs::path& model_dir);

// A rendered conversation and the byte ranges [begin, end) of `text` that are trained: each assistant turn as the
// template renders it, from the end of its generation prompt through its end-of-turn token(s).
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained;
};

class ChatTemplateRenderer {
 public:
  explicit ChatTemplateRenderer(ModelChatTemplate t, JinjaLimits limits = {});

  // transformers' apply_chat_template(messages, tools=tools, add_generation_prompt=..., tokenize=False):
  // the context is messages, tools (null: none), documents (null), add_generation_prompt and the special tokens.
  // Reasoning fields are aliased as transformers does (reasoning_content / thinking / reasoning).
  std::string render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                     bool add_generation_prompt) const;

  // The text of the whole conversation and its trained spans (see chat_template.cpp for how they are found).
  // A template that refuses the conversation (raise_exception) or an assistant turn whose content the template
  // does not render is BadRecord.
  RenderedChat render_for_training(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools) const;

  const ModelChatTemplate& model_template() const { return t_; }

 private:
  size_t generation_prompt_end(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools, size_t i,
                               size_t a, size_t prev_end, const std::string& f) const;

  ModelChatTemplate t_;
  JinjaTemplate jinja_;
};

// Chat records (data.format: chat) as the template sees them: "messages" (or ShareGPT "conversations", or the names
// data.fields maps: chat_keys()) as role/content messages, every other key of each message kept, roles named as
// templates know them (canonical_role: human -> user, gpt -> assistant, observation -> tool, ...), and the record's
// "tools" when present. Any roles in any order go to the template, which decides (a template that refuses a
// conversation raises, and its message makes a bad record). At least one assistant message with string content is
// required (BadRecord otherwise).
struct ChatRecord {
  nlohmann::ordered_json messages;
  nlohmann::ordered_json tools;  // null when the record has none
};
ChatRecord parse_chat_record(const nlohmann::ordered_json& j, const std::map<std::string, std::string>& fields = {});

// Token ids as transformers gets them (the rendered text encoded whole with add_special_tokens=False, special
// tokens as single ids) and labels: a token is trained when any of its bytes lies in a trained span (as
// transformers' return_assistant_tokens_mask marks tokens), or everywhere with train_on_prompt. labels[0] is -100.
TokenizedExample tokenize_rendered(const RenderedChat& chat, const tokenizer::Tokenizer& tok,
                                   const ModelChatTemplate& t, bool train_on_prompt);

// One example for data.template: auto: a chat record from its JSON line (BadRecord when malformed), or the
// user/assistant turns an alpaca or completion record becomes.
TokenizedExample tokenize_chat_record(const ChatTemplateRenderer& r, const std::string& json_text,
                                      const tokenizer::Tokenizer& tok, bool train_on_prompt,
                                      const std::map<std::string, std::string>& fields = {});
TokenizedExample tokenize_chat_messages(const ChatTemplateRenderer& r, const std::vector<Message>& messages,
                                        const tokenizer::Tokenizer& tok, bool train_on_prompt);

// The prompt for generation with the model's chat template: [system,] user, then the generation prompt, as
// apply_chat_template(add_generation_prompt=True, tokenize=True) gives it. A model without a template is a
// qlora::Error.
std::vector<int32_t> encode_chat_prompt(const ModelChatTemplate& t, const tokenizer::Tokenizer& tok,
                                        const std::string& system, const std::string& user);
// The same for a conversation so far (`qlora-generate --chat` reading turns from stdin): the messages in order,
// ending with a user turn, then the generation prompt.
std::vector<int32_t> encode_chat_prompt(const ModelChatTemplate& t, const tokenizer::Tokenizer& tok,
                                        const std::vector<Message>& messages);

}  // namespace qlora::data
