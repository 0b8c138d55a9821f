// Loading a byte-level BPE tokenizer: tokenizer.json (model, added tokens, normalizer, pre-tokenizer, decoder,
// post-processor) and tokenizer_config.json (special tokens, add_bos/add_eos, chat template).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "common/json_read.h"
#include "tokenizer/bpe_tokenizer_impl.h"

namespace qlora::tokenizer {

using json = nlohmann::json;
using namespace detail;

namespace {

// Sequence normalizers / pre-tokenizers / decoders / post-processors inside each other: real files use one level.
constexpr int kMaxSequenceDepth = 8;

void check_sequence_depth(const fs::path& file, const char* component, int depth) {
  if (depth >= kMaxSequenceDepth) {
    throw_file_error(file.string(),
                     std::string(component) + ": Sequence nested deeper than " + std::to_string(kMaxSequenceDepth),
                     "real tokenizer.json files nest Sequence steps one level deep; this file is corrupt or hostile");
  }
}

// A token id from the file: an integer in [0, limit), where limit is the count of tokens that can have ids.
int32_t token_id_in_range(const fs::path& file, const std::string& where, const json& v, size_t limit) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || uint64_t(v.get<int64_t>()) >= limit) {
    throw_file_error(file.string(),
                     where + ": id " + json_excerpt(v) + " is not an integer in [0, " + std::to_string(limit) + ")",
                     "token ids run from 0 to the number of tokens minus one; the file is corrupt");
  }
  return int32_t(v.get<int64_t>());
}

[[noreturn]] void unsupported(const fs::path& file, const std::string& component, const std::string& what) {
  throw_file_error(file.string(), "unsupported " + component + ": " + what,
                   "qlora.cpp reads BPE tokenizer.json files: byte-level (Llama 3, Qwen, GPT-2) and char-level with "
                   "byte fallback (Gemma, Llama 2); a model that also ships tokenizer.model is read through "
                   "sentencepiece instead");
}

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// Token strings in tokenizer_config.json are either "text" or {"content": "text", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

void BpeTokenizer::Impl::load_model(const json& model) {
  const std::string type = type_of(model);
  if (!model.is_object() || (!type.empty() && type != "BPE"))
    unsupported(file, "model", "type " + (type.empty() ? json_excerpt(model, 40) : type) + " (only BPE)");
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges") ||
      !model["merges"].is_array()) {
    throw_file_error(file.string(), "model: missing vocab (object) or merges (array)");
  }
  byte_fallback = model.value("byte_fallback", false);
  fuse_unk = model.value("fuse_unk", false);
  if (byte_fallback && byte_level) {
    unsupported(file, "model.byte_fallback", "true together with a ByteLevel pre-tokenizer");
  }
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
    unsupported(file, "model.dropout", json_excerpt(model["dropout"]));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      unsupported(file, std::string("model.") + key, json_excerpt(model[key]));
    }
  }
  ignore_merges = model.value("ignore_merges", false);

  int32_t max_id = -1;
  for (const auto& [piece, id_json] : model["vocab"].items())
    max_id = std::max(max_id, token_id_in_range(file, "model.vocab[" + piece + "]", id_json, model["vocab"].size()));
  pieces.assign(size_t(max_id + 1), std::string());
  piece_to_id.reserve(model["vocab"].size() + 1024);
  bytes_to_id.reserve(model["vocab"].size());
  bytes.assign(size_t(max_id + 1), std::string());
  std::string raw;
  for (const auto& [piece, id_json] : model["vocab"].items()) {
    const auto id = id_json.get<int32_t>();  // checked above
    pieces[id] = piece;
    piece_to_id.insert(piece, id);
    if (byte_level) {
      if (!bpe::byte_level_to_bytes(piece, &raw)) raw = piece;  // HF's ByteLevel decoder keeps such tokens as-is
    } else {
      raw = char_token_bytes(piece);
    }
    bytes[id] = raw;
    bytes_to_id.insert(raw, id);
  }
  for (int b = 0; b < 256; ++b) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    byte_ids[b] = byte_level ? find(bpe::byte_to_unicode(uint8_t(b))) : -1;
    fallback_ids[b] = find(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">");
  }

  const json& list = model["merges"];
  merges.reserve(list.size() * 2);
  for (size_t rank = 0; rank < list.size(); ++rank) {
    const json& m = list[rank];
    std::string a, b;
    if (m.is_string()) {
      const auto s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        throw_file_error(file.string(),
                         "model.merges[" + std::to_string(rank) + "]: expected \"a b\", got \"" + s + "\"");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw_file_error(file.string(), "model.merges[" + std::to_string(rank) + "]: expected \"a b\" or [\"a\", \"b\"]");
    }
    const int32_t ia = find(a), ib = find(b), inew = find(a + b);
    if (ia < 0 || ib < 0 || inew < 0) {
      throw_file_error(file.string(), "model.merges[" + std::to_string(rank) + "]: \"" + a + "\" + \"" + b +
                                          "\" uses a token that is not in model.vocab");
    }
    merges.emplace((uint64_t(uint32_t(ia)) << 32) | uint32_t(ib), Merge{int32_t(rank), inew});
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) unk = find(model["unk_token"].get<std::string>());
}

void BpeTokenizer::Impl::load_added_tokens(const json& list) {
  if (list.is_null()) return;
  if (!list.is_array()) throw_file_error(file.string(), "added_tokens: expected an array");
  for (const auto& t : list) {
    AddedToken a;
    a.content = t.at("content").get<std::string>();
    a.id = token_id_in_range(file, "added_tokens[\"" + a.content + "\"]", t.at("id"), pieces.size() + list.size());
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    if (a.content.empty()) throw_file_error(file.string(), "added_tokens: empty content");
    if (size_t(a.id) >= pieces.size()) {
      pieces.resize(a.id + 1);
      bytes.resize(a.id + 1);
    }
    pieces[a.id] = a.content;
    std::string raw;
    bytes[a.id] = byte_level ? (bpe::byte_level_to_bytes(a.content, &raw) ? raw : a.content) : a.content;
    piece_to_id.insert(a.content, a.id);  // a content already in the vocab keeps its vocab id
    added.push_back(a);
  }
  special.assign(pieces.size(), 0);
  for (size_t i = 0; i < added.size(); ++i) {
    if (added[i].special) special[added[i].id] = 1;
    added_by_first_byte[uint8_t(added[i].content[0])].push_back(int32_t(i));
  }
  for (auto& v : added_by_first_byte) {
    std::stable_sort(v.begin(), v.end(),
                     [&](int32_t x, int32_t y) { return added[x].content.size() > added[y].content.size(); });
  }
}

void BpeTokenizer::Impl::load_normalizer(const json& n, int depth) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "Sequence") {
    check_sequence_depth(file, "normalizer", depth);
    for (const auto& s : n.at("normalizers")) load_normalizer(s, depth + 1);
  } else if (type == "Prepend") {
    normalizer.push_back({NormalizerStep::Kind::kPrepend, n.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace" && n.contains("pattern") && n["pattern"].contains("String")) {
    normalizer.push_back({NormalizerStep::Kind::kReplace, n["pattern"]["String"].get<std::string>(),
                          n.at("content").get<std::string>()});
  } else if (type == "NFC") {
    normalizer.push_back({NormalizerStep::Kind::kNfc, "", ""});
  } else {
    unsupported(file, "normalizer",
                type.empty() ? json_excerpt(n, 80)
                             : type + " (supported: Sequence, Prepend, Replace with a String pattern, NFC)");
  }
}

void BpeTokenizer::Impl::load_pre_tokenizer(const json& p, bool* has_byte_level, int depth) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (*has_byte_level) unsupported(file, "pre_tokenizer", type + " after ByteLevel (ByteLevel must come last)");
  if (type == "Sequence") {
    check_sequence_depth(file, "pre_tokenizer", depth);
    for (const auto& s : p.at("pretokenizers")) load_pre_tokenizer(s, has_byte_level, depth + 1);
  } else if (type == "Split") {
    bpe::PreTokenizerStep step;
    const json& pat = p.at("pattern");
    const std::string where = file.string() + ": pre_tokenizer Split";
    if (pat.contains("Regex")) {
      step.regex = std::make_shared<bpe::Regex>(pat["Regex"].get<std::string>(), where);
    } else if (pat.contains("String")) {
      std::string lit = pat["String"].get<std::string>();
      std::string quoted = "\\Q";
      for (size_t pos; (pos = lit.find("\\E")) != std::string::npos; lit = lit.substr(pos + 2)) {
        quoted += lit.substr(0, pos) + "\\E\\\\E\\Q";
      }
      step.regex = std::make_shared<bpe::Regex>(quoted + lit + "\\E", where);
    } else {
      unsupported(file, "pre_tokenizer Split pattern", json_excerpt(pat));
    }
    const std::string behavior = p.value("behavior", "Isolated");
    if (behavior == "Isolated")
      step.behavior = bpe::SplitBehavior::kIsolated;
    else if (behavior == "Removed")
      step.behavior = bpe::SplitBehavior::kRemoved;
    else if (behavior == "MergedWithPrevious")
      step.behavior = bpe::SplitBehavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext")
      step.behavior = bpe::SplitBehavior::kMergedWithNext;
    else if (behavior == "Contiguous")
      step.behavior = bpe::SplitBehavior::kContiguous;
    else
      unsupported(file, "pre_tokenizer Split behavior", behavior);
    step.invert = p.value("invert", false);
    pre.add_step(std::move(step));
  } else if (type == "ByteLevel") {
    bpe::PreTokenizerStep step;
    step.kind = bpe::PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = p.value("add_prefix_space", false);
    step.use_regex = p.value("use_regex", true);
    if (step.use_regex) {
      static const auto gpt2 = std::make_shared<bpe::Regex>(bpe::kGpt2Pattern, "ByteLevel GPT-2 pattern");
      step.regex = gpt2;
      step.behavior = bpe::SplitBehavior::kIsolated;
    }
    pre.add_step(std::move(step));
    *has_byte_level = true;
  } else {
    unsupported(file, "pre_tokenizer",
                (type.empty() ? json_excerpt(p, 80) : type) + " (supported: Sequence, Split, ByteLevel)");
  }
}

void BpeTokenizer::Impl::load_decoder(const json& d, int depth) {
  const std::string type = type_of(d);
  if (byte_level) {
    if (type == "ByteLevel") return;
    if (type == "Sequence") {
      check_sequence_depth(file, "decoder", depth);
      for (const auto& s : d.at("decoders")) load_decoder(s, depth + 1);
      return;
    }
    unsupported(file, "decoder",
                (d.is_null() ? std::string("null") : type) + " (a byte-level BPE decodes with ByteLevel only)");
  }
  // Char-level BPE: Replace* ByteFallback? Fuse? Strip? (the Llama 2 / Gemma decoders).
  CharDecoder& c = char_decoder;
  const bool after_strip = !c.strip_content.empty();
  if (type == "Sequence") {
    check_sequence_depth(file, "decoder", depth);
    for (const auto& s : d.at("decoders")) load_decoder(s, depth + 1);
  } else if (type == "Replace" && d.contains("pattern") && d["pattern"].contains("String") && !after_strip &&
             !c.byte_fallback) {
    c.replace.emplace_back(d["pattern"]["String"].get<std::string>(), d.at("content").get<std::string>());
  } else if (type == "ByteFallback" && !after_strip) {
    c.byte_fallback = true;
  } else if (type == "Fuse" && !after_strip) {
    // Joining the tokens is what decode() does.
  } else if (type == "Strip" && !after_strip && d.value("content", "").size() >= 1) {
    c.strip_content = d.at("content").get<std::string>();
    // start / stop are counts (usize in HF tokenizers): integers >= 0, never a float converted.
    auto count = [&](const char* key) -> size_t {
      if (!d.contains(key)) return 0;
      const json& v = d.at(key);
      if (!v.is_number_integer() || v.get<int64_t>() < 0) {
        throw_file_error(
            file.string(),
            std::string("decoder Strip: ") + key + " " + json_excerpt(v) + " is not a count (an integer >= 0)",
            "the file is corrupt");
      }
      return static_cast<size_t>(v.get<int64_t>());
    };
    c.strip_start = count("start");
    c.strip_stop = count("stop");
  } else {
    unsupported(file, "decoder",
                (d.is_null()    ? std::string("null")
                 : type.empty() ? json_excerpt(d, 80)
                                : type) +
                    " here (a char-level BPE supports Replace, ByteFallback, Fuse, Strip, in that order)");
  }
}

std::string BpeTokenizer::Impl::char_token_bytes(const std::string& piece) const {
  const CharDecoder& c = char_decoder;
  if (c.byte_fallback && piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>') {
    auto hex = [](char h) { return h >= '0' && h <= '9' ? h - '0' : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1; };
    const int hi = hex(piece[3]), lo = hex(piece[4]);
    if (hi >= 0 && lo >= 0) return std::string(1, char(hi * 16 + lo));
  }
  std::string s = piece;
  for (const auto& [from, to] : c.replace) {
    if (from.empty()) continue;
    std::string r;
    for (size_t pos = 0;;) {
      const size_t hit = s.find(from, pos);
      r.append(s, pos, hit == std::string::npos ? std::string::npos : hit - pos);
      if (hit == std::string::npos) break;
      r += to;
      pos = hit + from.size();
    }
    s.swap(r);
  }
  return s;
}

void BpeTokenizer::Impl::load_post_processor(const json& p, int depth) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    check_sequence_depth(file, "post_processor", depth);
    for (const auto& s : p.at("processors")) load_post_processor(s, depth + 1);
    return;
  }
  if (type != "TemplateProcessing")
    unsupported(file, "post_processor", type + " (supported: ByteLevel, TemplateProcessing, Sequence)");
  const json& specials = p.value("special_tokens", json::object());
  bool seen_a = false;
  for (const auto& item : p.at("single")) {
    if (item.contains("Sequence")) {
      if (item["Sequence"].value("id", "A") != "A" || seen_a)
        unsupported(file, "post_processor single template", json_excerpt(item));
      seen_a = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      std::vector<int32_t> ids;
      if (specials.contains(name)) {
        for (const json& id : specials[name].at("ids"))
          ids.push_back(token_id_in_range(file, "post_processor special_tokens[" + name + "]", id, pieces.size()));
      } else if (find(name) >= 0) {
        ids = {find(name)};
      } else {
        throw_file_error(file.string(),
                         "post_processor: special token " + name + " is not in special_tokens or the vocab");
      }
      auto& dst = seen_a ? template_suffix : template_prefix;
      dst.insert(dst.end(), ids.begin(), ids.end());
    } else {
      unsupported(file, "post_processor single template item", json_excerpt(item));
    }
  }
}

void BpeTokenizer::Impl::load_config(const fs::path& config_file) {
  if (fs::exists(config_file)) {
    const json cfg = read_json_file(config_file);
    auto token_id = [&](const char* key) -> int32_t {
      const auto t = config_token(cfg, key);
      if (!t) return -1;
      const int32_t id = find(*t);
      if (id < 0) spdlog::warn("{}: {} \"{}\" is not in the vocabulary; ignored", config_file.string(), key, *t);
      return id;
    };
    bos = token_id("bos_token");
    eos = token_id("eos_token");
    pad = token_id("pad_token");
    const int32_t u = token_id("unk_token");
    if (u >= 0) unk = u;
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
      add_bos_token = cfg["add_bos_token"].get<bool>();
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean())
      add_eos_token = cfg["add_eos_token"].get<bool>();
    if (cfg.contains("chat_template")) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) {
        chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (const auto& t : ct)
          if (t.value("name", "") == "default") chat_template = t.value("template", "");
      }
    }
  }
  if (bos < 0 && !template_prefix.empty()) bos = template_prefix.front();
  if (eos < 0 && !template_suffix.empty()) eos = template_suffix.back();
}

BpeTokenizer::BpeTokenizer() : impl_(std::make_unique<Impl>()) {}
BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::load(const fs::path& model_dir) {
  const fs::path file = model_dir / "tokenizer.json";
  if (!fs::exists(file)) {
    throw_file_error(file.string(), "tokenizer.json not found",
                     "an HF model folder of a Llama 3 model has tokenizer.json next to config.json");
  }
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  Impl& m = *tok->impl_;
  m.file = file;
  const json j = read_json_file(file);
  try {
    if (!j.contains("model")) throw_file_error(file.string(), "no \"model\" section (not an HF tokenizers file?)");
    // The pre-tokenizer says whether vocab strings are byte-level; the decoder says how char-level tokens read.
    bool has_byte_level = false;
    m.load_pre_tokenizer(j.value("pre_tokenizer", json()), &has_byte_level);
    m.byte_level = has_byte_level;
    m.load_decoder(j.value("decoder", json()));
    m.load_model(j["model"]);
    m.load_added_tokens(j.value("added_tokens", json()));
    m.load_normalizer(j.value("normalizer", json()));
    m.load_post_processor(j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw_file_error(file.string(), std::string("unexpected structure: ") + e.what());
  }
  m.load_config(model_dir / "tokenizer_config.json");
  if (m.special.size() < m.pieces.size()) m.special.resize(m.pieces.size(), 0);
  spdlog::debug("{}: {} BPE, {} tokens, {} merges, {} added tokens", file.string(),
                m.byte_level ? "byte-level" : "char-level", m.pieces.size(), m.merges.size(), m.added.size());
  return tok;
}

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const fs::path& model_dir) {
  return BpeTokenizer::load(model_dir);
}

}  // namespace qlora::tokenizer
