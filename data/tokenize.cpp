#include "data/tokenize.h"

#include <algorithm>

#include "common/error.h"

namespace qlora::data {

int64_t TokenizedExample::num_label_tokens() const {
  return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
}

namespace {

int32_t special_token_id(const tokenizer::Tokenizer& tok, const std::string& content) {
  const int32_t id = tok.piece_to_id(content);
  if (id < 0 || id >= tok.vocab_size() || tok.id_to_piece(id) != content) {
    throw Error("the prompt template needs the special token " + content +
                ", which this tokenizer does not have\nHINT: this template is for models whose tokenizer defines it "
                "(llama3: a Llama 3 tokenizer.json); pick a template that fits the model");
  }
  return id;
}

}  // namespace

TokenizedExample tokenize_segments(const std::vector<Segment>& segments, const tokenizer::Tokenizer& tok,
                                   bool train_on_prompt) {
  TokenizedExample ex;
  for (const auto& seg : segments) {
    std::vector<int32_t> ids;
    switch (seg.kind) {
      case Segment::Kind::kBos:
        // Tokenizers without a BOS token (Qwen2/2.5/3) start the text with nothing, as HF does.
        if (tok.bos_id() >= 0) ids = {tok.bos_id()};
        break;
      case Segment::Kind::kEos:
        if (tok.eos_id() < 0) {
          throw Error(
              "the tokenizer has no EOS token, which the template ends each example with\nHINT: set "
              "eos_token in the model's tokenizer_config.json (the model learns to stop on it)");
        }
        ids = {tok.eos_id()};
        break;
      case Segment::Kind::kText:
        ids = tok.encode(seg.text);
        break;
      case Segment::Kind::kSpecial:
        ids = {special_token_id(tok, seg.text)};
        break;
    }
    const bool label = seg.trainable || train_on_prompt;
    for (int32_t id : ids) {
      ex.ids.push_back(id);
      ex.labels.push_back(label ? id : kIgnoreIndex);
    }
  }
  if (!ex.labels.empty()) ex.labels[0] = kIgnoreIndex;
  return ex;
}

bool truncate_example(TokenizedExample& ex, int64_t max_len) {
  if (ex.size() <= max_len) return false;
  ex.ids.resize(max_len);
  ex.labels.resize(max_len);
  return true;
}

namespace {

// Splits the example into runs of (masked?, ids) with BOS/EOS as their own runs, and renders each.
std::string render_runs(const TokenizedExample& ex, const tokenizer::Tokenizer& tok, bool want_masked,
                        bool want_trained, bool brackets) {
  std::string out;
  size_t i = 0;
  const size_t n = ex.ids.size();
  while (i < n) {
    const int32_t id = ex.ids[i];
    const bool masked = ex.labels[i] == kIgnoreIndex;
    const bool special = id == tok.bos_id() || id == tok.eos_id();
    size_t j = i + 1;
    if (!special) {
      while (j < n && (ex.labels[j] == kIgnoreIndex) == masked && ex.ids[j] != tok.bos_id() &&
             ex.ids[j] != tok.eos_id())
        ++j;
    }
    std::string text;
    if (special) {
      text = id == tok.bos_id() ? "<s>" : "</s>";
    } else {
      text = tok.decode(std::vector<int32_t>(ex.ids.begin() + i, ex.ids.begin() + j));
    }
    if ((masked && want_masked) || (!masked && want_trained)) {
      out += (masked && brackets) ? "[[" + text + "]]" : text;
    }
    i = j;
  }
  return out;
}

}  // namespace

std::string format_masked(const TokenizedExample& ex, const tokenizer::Tokenizer& tok) {
  return render_runs(ex, tok, true, true, true);
}

std::string format_prompt_trained(const TokenizedExample& ex, const tokenizer::Tokenizer& tok) {
  return "PROMPT: " + render_runs(ex, tok, true, false, false) +
         "\nTRAINED: " + render_runs(ex, tok, false, true, false);
}

}  // namespace qlora::data
