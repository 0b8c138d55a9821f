#include "data/chat_template.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/json_read.h"
#include "common/labels.h"
#include "data/prompt_template.h"
#include "tokenizer/bpe_tokenizer.h"

namespace qlora::data {

using ojson = nlohmann::ordered_json;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw_file_error(p.string(), "cannot read the file", "check its permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Token strings in tokenizer_config.json are "text" or {"content": "text", ...} (a serialized AddedToken).
template <typename Json>
std::string token_text(const Json& v) {
  if (v.is_string()) return v.template get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].template get<std::string>();
  return "";
}

}  // namespace

ModelChatTemplate load_model_chat_template(const fs::path& model_dir) {
  ModelChatTemplate t;
  const fs::path cfg_file = model_dir / "tokenizer_config.json";
  ojson cfg = ojson::object();
  if (fs::exists(cfg_file)) {
    cfg = parse_ordered_json(read_text(cfg_file), cfg_file.string());
    if (!cfg.is_object()) throw_file_error(cfg_file.string(), "expected a JSON object");
  }
  static const char* const kNamed[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
  for (const char* key : kNamed) {
    const std::string text = cfg.contains(key) ? token_text(cfg[key]) : "";
    if (text.empty()) continue;
    t.special_tokens[key] = text;
    t.special_token_texts.push_back(text);
  }
  if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
    for (const auto& [id, tok] : cfg["added_tokens_decoder"].items()) {
      if (tok.is_object() && tok.value("special", false)) t.special_token_texts.push_back(token_text(tok));
    }
  }
  const fs::path tok_file = model_dir / "tokenizer.json";
  if (fs::exists(tok_file)) {
    const nlohmann::json tj = read_json_file(tok_file);
    if (tj.is_object() && tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
      for (const auto& a : tj["added_tokens"]) {
        if (a.is_object() && a.value("special", false)) t.special_token_texts.push_back(token_text(a));
      }
    }
  }
  std::sort(t.special_token_texts.begin(), t.special_token_texts.end());
  t.special_token_texts.erase(std::unique(t.special_token_texts.begin(), t.special_token_texts.end()),
                              t.special_token_texts.end());
  std::erase(t.special_token_texts, std::string());

  const fs::path jinja_file = model_dir / "chat_template.jinja";
  if (fs::exists(jinja_file)) {
    t.source = read_text(jinja_file);
    t.origin = jinja_file.string();
    return t;
  }
  if (cfg.contains("chat_template")) {
    const ojson& ct = cfg["chat_template"];
    t.origin = cfg_file.string();
    if (ct.is_string()) {
      t.source = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& e : ct) {
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
          t.source = e["template"].get<std::string>();
      }
    } else if (!ct.is_null()) {
      throw_file_error(cfg_file.string(), "chat_template: expected a string or a list of {name, template}");
    }
  }
  return t;
}

ChatTemplateRenderer::ChatTemplateRenderer(ModelChatTemplate t, JinjaLimits limits)
    : t_(std::move(t)), jinja_(t_.source, t_.origin.empty() ? "chat_template" : t_.origin, limits) {}

namespace {

// transformers' _alias_reasoning_fields: a message's reasoning under any of its names is also passed as
// "thinking" (first) and "reasoning_content" (last), which is the name templates read.
ojson alias_reasoning(const ojson& messages) {
  ojson out = ojson::array();
  for (const auto& m : messages) {
    if (!m.is_object()) {
      out.push_back(m);
      continue;
    }
    const ojson* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      if (!reasoning && m.contains(key) && !m[key].is_null()) reasoning = &m[key];
    }
    if (!reasoning) {
      out.push_back(m);
      continue;
    }
    ojson a = ojson::object();
    a["thinking"] = *reasoning;
    for (const auto& [k, v] : m.items()) a[k] = v;
    a["reasoning_content"] = *reasoning;
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

std::string ChatTemplateRenderer::render(const ojson& messages, const ojson& tools, bool add_generation_prompt) const {
  ojson ctx = ojson::object();
  ctx["messages"] = alias_reasoning(messages);
  ctx["tools"] = tools;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  for (const auto& [k, v] : t_.special_tokens.items()) ctx[k] = v;
  return jinja_.render(ctx);
}

namespace {

// Private-use code points the data is checked not to contain, placed around an assistant turn's content to see
// where the template puts it.
const char* const kOpen = "\xEE\x80\x80";   // U+E000
const char* const kClose = "\xEE\x80\x81";  // U+E001

size_t common_prefix(const std::string& a, const std::string& b) {
  const auto m =
      std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(std::min(a.size(), b.size())), b.begin());
  return static_cast<size_t>(m.first - a.begin());
}

size_t common_suffix(const std::string& a, const std::string& b, size_t limit) {
  size_t n = 0;
  while (n < limit && a[a.size() - 1 - n] == b[b.size() - 1 - n]) ++n;
  return n;
}

// The first special token in `text` at or after `from`: its position and length (npos, 0 when none).
std::pair<size_t, size_t> first_special(const std::string& text, const std::vector<std::string>& specials,
                                        size_t from = 0) {
  size_t best = std::string::npos, len = 0;
  for (const auto& s : specials) {
    const size_t p = text.find(s, from);
    if (p != std::string::npos && (p < best || (p == best && s.size() > len))) {
      best = p;
      len = s.size();
    }
  }
  return {best, len};
}

// Where turn i ends in f, given that its content ends at b; tail_h is what a render ending with turn i (or with
// turn i and then a user turn) writes after the content. When that tail holds a special token, the turn's
// end-of-turn token is the first one ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>", "<|end|>"), and the
// turn ends after its first occurrence in f from b on (past tool calls the template writes after the content, not
// the newline after the token, not Phi-3's final <|endoftext|>). Without special tokens: the text both tails share.
size_t turn_end(const std::string& f, size_t b, const std::string& tail_h, const std::vector<std::string>& specials) {
  const auto [hp, hlen] = first_special(tail_h, specials);
  if (hp == std::string::npos) return b + common_prefix(f.substr(b), tail_h);
  const size_t fp = f.find(tail_h.substr(hp, hlen), b);
  return fp == std::string::npos ? b : fp + hlen;
}

}  // namespace

// Where the generation prompt for messages[i] ends in f, if it is a prefix of f ending in [prev_end, a]; else a.
// A template may refuse the shorter conversation (e.g. it reads messages[0] and i is 0): then the content start.
size_t ChatTemplateRenderer::generation_prompt_end(const ojson& messages, const ojson& tools, size_t i, size_t a,
                                                   size_t prev_end, const std::string& f) const {
  ojson head = ojson::array();
  for (size_t k = 0; k < i; ++k) head.push_back(messages[k]);
  std::string p;
  try {
    p = render(head, tools, true);
  } catch (const JinjaError&) {
    return a;  // deliberate: no usable generation prompt; the turn starts at its content
  }
  const bool fits = p.size() <= a && p.size() >= prev_end && f.compare(0, p.size(), p) == 0;
  return fits ? p.size() : a;
}

// How the trained spans are found. Templates treat turns differently depending on what follows them (Qwen3 gives
// only the turns after the last user message a <think> block; Llama 3 trims content; Phi-3 ends the conversation
// with EOS), so rendering a prefix of the conversation does not in general give a prefix of the full text. Each
// assistant turn i is located in the full text F by renders that differ from F only where that turn is:
//   content  G = F's conversation with turn i's content wrapped in two private-use sentinels. F and G agree before
//            and after the place where the content is rendered, so [common prefix, |F| - common suffix) of F is
//            the content as the template rendered it (trimmed, split at </think>, ...).
//   start    the generation prompt: P = render(messages[:i], add_generation_prompt=True). When P is a prefix of F
//            that ends at or before the content, the turn starts where P ends (so an empty <think></think> the
//            template writes after the header is trained, as the model must generate it); otherwise at the content.
//   end      the turn's end-of-turn token: the first special token a render that stops after turn i (messages[:i+1],
//            or messages[:i+1] + a user turn when i is last) writes after the sentinel, found in F after the
//            content (turn_end). That is "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>" or "<|end|>", so tool
//            calls written after the content are trained, the newline after the token and what only the end of a
//            conversation adds (Phi-3's <|endoftext|>) are not.
// An assistant message without string content (e.g. tool calls only) is not trained.
RenderedChat ChatTemplateRenderer::render_for_training(const ojson& messages, const ojson& tools) const {
  RenderedChat out;
  try {
    out.text = render(messages, tools, false);
    size_t prev_end = 0;
    for (size_t i = 0; i < messages.size(); ++i) {
      const ojson& m = messages[i];
      if (m.value("role", "") != "assistant" || !m.contains("content") || !m["content"].is_string()) continue;
      const std::string content = m["content"].get<std::string>();
      if (content.find(kOpen) != std::string::npos || content.find(kClose) != std::string::npos) {
        throw BadRecord("messages[" + std::to_string(i) + "] contains the private-use characters U+E000/U+E001");
      }
      ojson marked = messages;
      marked[i]["content"] = kOpen + content + kClose;
      const std::string g = render(marked, tools, false);
      if (g.find(kClose) == std::string::npos) {
        throw BadRecord("the chat template does not render the content of messages[" + std::to_string(i) + "]");
      }
      const std::string& f = out.text;
      const size_t a = common_prefix(f, g);
      const size_t b = f.size() - common_suffix(f, g, std::min(f.size(), g.size()) - a);

      const size_t start = generation_prompt_end(messages, tools, i, a, prev_end, f);

      ojson upto = ojson::array();
      for (size_t k = 0; k <= i; ++k) upto.push_back(marked[k]);
      if (i + 1 == messages.size()) upto.push_back({{"role", "user"}, {"content", "?"}});
      const std::string h = render(upto, tools, false);
      const size_t end = turn_end(f, b, h.substr(h.rfind(kClose) + std::string(kClose).size()), t_.special_token_texts);
      if (end > start) out.trained.emplace_back(start, end);
      prev_end = std::max(prev_end, end);
    }
  } catch (const JinjaRaised& e) {
    throw BadRecord(e.what());
  }
  return out;
}

}  // namespace qlora::data

namespace qlora::data {

ChatRecord parse_chat_record(const ojson& j, const std::map<std::string, std::string>& fields) {
  if (!j.is_object()) throw BadRecord(std::string("expected a JSON object, got ") + j.type_name());
  const ChatKeys keys = chat_keys(fields, j.contains("messages"), j.contains("conversations"));
  const std::string& list_key = keys.list;
  if (!j.contains(list_key)) {
    throw BadRecord(fields.count("messages")
                        ? "missing field \"" + list_key + "\" (data.fields.messages)"
                        : std::string("missing field \"messages\" (or ShareGPT \"conversations\")"));
  }
  const ojson& list = j[list_key];
  if (!list.is_array()) throw BadRecord("field \"" + list_key + "\" must be an array");
  ChatRecord r;
  r.messages = ojson::array();
  bool trainable = false;
  for (size_t i = 0; i < list.size(); ++i) {
    const ojson& m = list[i];
    const std::string where = list_key + "[" + std::to_string(i) + "]";
    if (!m.is_object()) throw BadRecord(where + " must be an object, got " + m.type_name());
    if (!m.contains(keys.role) || !m[keys.role].is_string()) {
      throw BadRecord(where + ": missing string field \"" + keys.role + "\"");
    }
    ojson msg = m;  // as it is (key order kept: templates may tojson it), the role named as templates know it
    if (keys.role != "role" || keys.content != "content") {  // renamed: role and content first, then the rest
      msg = ojson::object();
      msg["role"] = m[keys.role];
      msg["content"] = m.contains(keys.content) ? m[keys.content] : ojson();
      for (const auto& [k, v] : m.items()) {
        if (k != keys.role && k != keys.content) msg[k] = v;
      }
    }
    msg["role"] = canonical_role(m[keys.role].get<std::string>());
    trainable = trainable || (msg["role"] == "assistant" && msg["content"].is_string());
    r.messages.push_back(std::move(msg));
  }
  if (!trainable) throw BadRecord("\"" + list_key + "\" has no assistant message with text content");
  r.tools = j.contains("tools") ? j["tools"] : ojson();
  return r;
}

namespace {

bool overlaps_trained(const RenderedChat& chat, size_t begin, size_t end) {
  for (const auto& [s, e] : chat.trained) {
    if (begin < e && end > s) return true;
  }
  return false;
}

// The text split at the trained-span boundaries and at special-token strings (leftmost-longest), for tokenizers
// that cannot encode the text whole with its special tokens (sentencepiece).
std::vector<Segment> split_segments(const RenderedChat& chat, const std::vector<std::string>& specials) {
  std::vector<size_t> cuts = {0, chat.text.size()};
  for (const auto& [s, e] : chat.trained) {
    cuts.push_back(s);
    cuts.push_back(e);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Segment> out;
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const bool train = overlaps_trained(chat, cuts[c], cuts[c + 1]);
    const std::string piece = chat.text.substr(cuts[c], cuts[c + 1] - cuts[c]);
    size_t pos = 0;
    while (pos < piece.size()) {
      size_t best = std::string::npos, best_len = 0;
      for (const auto& s : specials) {
        const size_t p = piece.find(s, pos);
        if (p != std::string::npos && (p < best || (p == best && s.size() > best_len))) {
          best = p;
          best_len = s.size();
        }
      }
      const size_t text_end = best == std::string::npos ? piece.size() : best;
      if (text_end > pos) out.push_back({Segment::Kind::kText, piece.substr(pos, text_end - pos), train});
      if (best == std::string::npos) break;
      out.push_back({Segment::Kind::kSpecial, piece.substr(best, best_len), train});
      pos = best + best_len;
    }
  }
  return out;
}

}  // namespace

TokenizedExample tokenize_rendered(const RenderedChat& chat, const tokenizer::Tokenizer& tok,
                                   const ModelChatTemplate& t, bool train_on_prompt) {
  if (const auto* bpe = dynamic_cast<const tokenizer::BpeTokenizer*>(&tok)) {
    TokenizedExample ex;
    ex.ids = bpe->encode(chat.text);  // special-token strings become their ids, as in HF
    size_t offset = 0;
    bool exact = true;
    for (const int32_t id : ex.ids) {
      const std::string& bytes = bpe->token_bytes(id);
      exact = exact && chat.text.compare(offset, bytes.size(), bytes) == 0;
      const bool label = train_on_prompt || overlaps_trained(chat, offset, offset + bytes.size());
      ex.labels.push_back(label ? id : kIgnoreIndex);
      offset += bytes.size();
    }
    if (exact && offset == chat.text.size()) {
      if (!ex.labels.empty()) ex.labels[0] = kIgnoreIndex;
      return ex;
    }
    // a normalizer changed the text: token offsets are unknown; encode span by span instead
  }
  std::vector<std::string> specials;  // those this tokenizer has as one piece; others are encoded as text
  for (const auto& s : t.special_token_texts) {
    const int32_t id = tok.piece_to_id(s);
    if (id >= 0 && id < tok.vocab_size() && tok.id_to_piece(id) == s) specials.push_back(s);
  }
  return tokenize_segments(split_segments(chat, specials), tok, train_on_prompt);
}

}  // namespace qlora::data

namespace qlora::data {

TokenizedExample tokenize_chat_record(const ChatTemplateRenderer& r, const std::string& json_text,
                                      const tokenizer::Tokenizer& tok, bool train_on_prompt,
                                      const std::map<std::string, std::string>& fields) {
  std::string why;
  if (!try_parse_json(json_text, &why)) throw BadRecord("malformed JSON (" + why + ")");
  // ordered: tools and tool calls keep their key order (tojson writes them so), as Python's json.loads keeps it
  const ChatRecord rec = parse_chat_record(parse_ordered_json(json_text, "record"), fields);
  return tokenize_rendered(r.render_for_training(rec.messages, rec.tools), tok, r.model_template(), train_on_prompt);
}

TokenizedExample tokenize_chat_messages(const ChatTemplateRenderer& r, const std::vector<Message>& messages,
                                        const tokenizer::Tokenizer& tok, bool train_on_prompt) {
  ojson msgs = ojson::array();
  for (const auto& m : messages) msgs.push_back({{"role", role_name(m.role)}, {"content", m.content}});
  return tokenize_rendered(r.render_for_training(msgs, ojson()), tok, r.model_template(), train_on_prompt);
}

}  // namespace qlora::data

namespace qlora::data {

std::vector<int32_t> encode_chat_prompt(const ModelChatTemplate& t, const tokenizer::Tokenizer& tok,
                                        const std::string& system, const std::string& user) {
  std::vector<Message> messages;
  if (!system.empty()) messages.push_back({Role::kSystem, system});
  messages.push_back({Role::kUser, user});
  return encode_chat_prompt(t, tok, messages);
}

std::vector<int32_t> encode_chat_prompt(const ModelChatTemplate& t, const tokenizer::Tokenizer& tok,
                                        const std::vector<Message>& messages) {
  if (t.empty()) {
    throw Error(
        "the model has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)"
        "\nHINT: give the prompt as plain text (without --chat)");
  }
  ojson list = ojson::array();
  for (const Message& m : messages) list.push_back({{"role", role_name(m.role)}, {"content", m.content}});
  RenderedChat chat;
  chat.text = ChatTemplateRenderer(t).render(list, ojson(), /*add_generation_prompt=*/true);
  return tokenize_rendered(chat, tok, t, /*train_on_prompt=*/false).ids;
}

}  // namespace qlora::data
