#include "tokenizer/bpe_tokenizer.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <unordered_map>

#include "common/error.h"
#include "tokenizer/bpe_pretokenizer.h"

namespace qlora::tokenizer {

using json = nlohmann::json;

namespace {

constexpr size_t kCacheCapacity = 1 << 16;  // words; the cache is cleared when full
constexpr size_t kMaxCachedWordBytes = 64;

json read_json(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_file_error(file.string(), "cannot open file");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw_file_error(file.string(), std::string("not valid JSON: ") + e.what());
  }
}

[[noreturn]] void unsupported(const fs::path& file, const std::string& component, const std::string& what) {
  throw_file_error(file.string(), "unsupported " + component + ": " + what,
                   "qlora.cpp supports byte-level BPE tokenizers (Llama 3, GPT-2 family); a model that also ships "
                   "tokenizer.model is read through sentencepiece instead");
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

uint32_t decode_cp(std::string_view s, size_t i, size_t* len) {
  const auto c = uint8_t(s[i]);
  if (c < 0x80 || i + 1 >= s.size()) {
    *len = 1;
    return c;
  }
  size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  n = std::min(n, s.size() - i);
  uint32_t cp = c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  *len = n;
  return cp;
}

bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Start of the run of white space that ends s (s.size() when none).
size_t trailing_space_start(std::string_view s) {
  size_t pos = s.size();
  while (pos > 0) {
    size_t b = pos - 1;
    while (b > 0 && (uint8_t(s[b]) & 0xC0) == 0x80) --b;
    size_t len;
    if (!is_white_space(decode_cp(s, b, &len))) break;
    pos = b;
  }
  return pos;
}

size_t leading_space_length(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len;
    if (!is_white_space(decode_cp(s, pos, &len))) break;
    pos += len;
  }
  return pos;
}

// Approximates Rust's char::is_alphanumeric for single_word tokens: ASCII letters/digits and any non-ASCII char
// that is not white space.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  return !is_white_space(cp);
}

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace } kind;
  std::string a, b;  // Prepend: a = prefix. Replace: a -> b.
};

struct Merge {
  int32_t rank;
  int32_t new_id;
};

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t k;
    std::memcpy(&k, s.data() + i, 8);
    h = (h ^ k) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  if (i < s.size()) std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ tail) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

// Open-addressing map from byte strings to ids, looked up by string_view (no allocation on the hot path).
class StringIdMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    rehash(cap);
  }
  // Keeps the first value stored for a key.
  void insert(std::string_view key, int32_t value) {
    if ((keys_.size() + 1) * 2 > slots_.size()) rehash(std::max<size_t>(16, slots_.size() * 2));
    const uint64_t h = hash_bytes(key);
    size_t i = h & (slots_.size() - 1);
    for (; slots_[i] >= 0; i = (i + 1) & (slots_.size() - 1)) {
      if (hashes_[slots_[i]] == h && keys_[slots_[i]] == key) return;
    }
    slots_[i] = int32_t(keys_.size());
    keys_.emplace_back(key);
    hashes_.push_back(h);
    values_.push_back(value);
  }
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(key);
    for (size_t i = h & (slots_.size() - 1); slots_[i] >= 0; i = (i + 1) & (slots_.size() - 1)) {
      const int32_t e = slots_[i];
      if (hashes_[e] == h && keys_[e] == key) return values_[e];
    }
    return -1;
  }

 private:
  void rehash(size_t cap) {
    slots_.assign(cap, -1);
    for (size_t e = 0; e < keys_.size(); ++e) {
      size_t i = hashes_[e] & (cap - 1);
      while (slots_[i] >= 0) i = (i + 1) & (cap - 1);
      slots_[i] = int32_t(e);
    }
  }
  std::vector<int32_t> slots_;
  std::vector<std::string> keys_;
  std::vector<uint64_t> hashes_;
  std::vector<int32_t> values_;
};

}  // namespace

struct BpeTokenizer::Impl {
  fs::path file;
  // Model.
  StringIdMap bytes_to_id;          // raw bytes of each vocab entry -> id
  StringIdMap piece_to_id;          // vocab strings and added-token contents -> id
  std::vector<std::string> pieces;  // id -> vocab string / added content
  std::vector<std::string> bytes;   // id -> decoded bytes
  std::vector<uint8_t> special;     // id -> is a special added token
  std::array<int32_t, 256> byte_ids{};
  std::unordered_map<uint64_t, Merge> merges;
  bool ignore_merges = false;
  int32_t unk = -1;
  // Text pipeline.
  std::vector<AddedToken> added;
  std::array<std::vector<int32_t>, 256> added_by_first_byte;  // indices into `added`, longest first
  std::vector<NormalizerStep> normalizer;
  bpe::PreTokenizer pre;
  std::vector<int32_t> template_prefix, template_suffix;
  // tokenizer_config.json.
  int32_t bos = -1, eos = -1, pad = -1;
  std::optional<bool> add_bos_token, add_eos_token;
  std::string chat_template;
  // Word cache (piece bytes -> ids) for words that needed merges.
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void load_model(const json& model);
  void load_added_tokens(const json& list);
  void load_normalizer(const json& n);
  void load_pre_tokenizer(const json& p, bool* has_byte_level);
  void load_decoder(const json& d);
  void load_post_processor(const json& p);
  void load_config(const fs::path& config_file);

  int32_t find(std::string_view piece) const { return piece_to_id.find(piece); }
  void encode_text(std::string_view text, std::vector<int32_t>* out) const;
  void encode_word(std::string_view word, std::vector<int32_t>* out) const;
  void merge_word(std::string_view word, std::vector<int32_t>* out) const;
};

// ---- Loading ----

void BpeTokenizer::Impl::load_model(const json& model) {
  const std::string type = type_of(model);
  if (!model.is_object() || (!type.empty() && type != "BPE"))
    unsupported(file, "model", "type " + (type.empty() ? model.dump().substr(0, 40) : type) + " (only BPE)");
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges") ||
      !model["merges"].is_array()) {
    throw_file_error(file.string(), "model: missing vocab (object) or merges (array)");
  }
  if (model.value("byte_fallback", false)) unsupported(file, "model.byte_fallback", "true (a sentencepiece-style BPE)");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
    unsupported(file, "model.dropout", model["dropout"].dump());
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      unsupported(file, std::string("model.") + key, model[key].dump());
    }
  }
  ignore_merges = model.value("ignore_merges", false);

  int32_t max_id = -1;
  for (const auto& [piece, id_json] : model["vocab"].items()) max_id = std::max(max_id, id_json.get<int32_t>());
  pieces.assign(size_t(max_id + 1), std::string());
  piece_to_id.reserve(model["vocab"].size() + 1024);
  bytes_to_id.reserve(model["vocab"].size());
  bytes.assign(size_t(max_id + 1), std::string());
  std::string raw;
  for (const auto& [piece, id_json] : model["vocab"].items()) {
    const auto id = id_json.get<int32_t>();
    if (id < 0) throw_file_error(file.string(), "model.vocab: negative id for " + piece);
    pieces[id] = piece;
    piece_to_id.insert(piece, id);
    if (!bpe::byte_level_to_bytes(piece, &raw)) raw = piece;  // HF's ByteLevel decoder keeps such tokens as-is
    bytes[id] = raw;
    bytes_to_id.insert(raw, id);
  }
  for (int b = 0; b < 256; ++b) byte_ids[b] = find(bpe::byte_to_unicode(uint8_t(b)));

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
    a.id = t.at("id").get<int32_t>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    if (a.content.empty() || a.id < 0) throw_file_error(file.string(), "added_tokens: empty content or negative id");
    if (size_t(a.id) >= pieces.size()) {
      pieces.resize(a.id + 1);
      bytes.resize(a.id + 1);
    }
    pieces[a.id] = a.content;
    std::string raw;
    bytes[a.id] = bpe::byte_level_to_bytes(a.content, &raw) ? raw : a.content;
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

void BpeTokenizer::Impl::load_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "Sequence") {
    for (const auto& s : n.at("normalizers")) load_normalizer(s);
  } else if (type == "Prepend") {
    normalizer.push_back({NormalizerStep::Kind::kPrepend, n.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace" && n.contains("pattern") && n["pattern"].contains("String")) {
    normalizer.push_back({NormalizerStep::Kind::kReplace, n["pattern"]["String"].get<std::string>(),
                          n.at("content").get<std::string>()});
  } else {
    unsupported(file, "normalizer",
                type.empty() ? n.dump().substr(0, 80)
                             : type + " (supported: Sequence, Prepend, Replace with a String pattern)");
  }
}

void BpeTokenizer::Impl::load_pre_tokenizer(const json& p, bool* has_byte_level) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (*has_byte_level) unsupported(file, "pre_tokenizer", type + " after ByteLevel (ByteLevel must come last)");
  if (type == "Sequence") {
    for (const auto& s : p.at("pretokenizers")) load_pre_tokenizer(s, has_byte_level);
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
      unsupported(file, "pre_tokenizer Split pattern", pat.dump());
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
                (type.empty() ? p.dump().substr(0, 80) : type) + " (supported: Sequence, Split, ByteLevel)");
  }
}

void BpeTokenizer::Impl::load_decoder(const json& d) {
  const std::string type = type_of(d);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const auto& s : d.at("decoders")) load_decoder(s);
    return;
  }
  unsupported(file, "decoder", (d.is_null() ? std::string("null") : type) + " (only ByteLevel)");
}

void BpeTokenizer::Impl::load_post_processor(const json& p) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const auto& s : p.at("processors")) load_post_processor(s);
    return;
  }
  if (type != "TemplateProcessing")
    unsupported(file, "post_processor", type + " (supported: ByteLevel, TemplateProcessing, Sequence)");
  const json& specials = p.value("special_tokens", json::object());
  bool seen_a = false;
  for (const auto& item : p.at("single")) {
    if (item.contains("Sequence")) {
      if (item["Sequence"].value("id", "A") != "A" || seen_a)
        unsupported(file, "post_processor single template", item.dump());
      seen_a = true;
    } else if (item.contains("SpecialToken")) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      std::vector<int32_t> ids;
      if (specials.contains(name)) {
        ids = specials[name].at("ids").get<std::vector<int32_t>>();
      } else if (find(name) >= 0) {
        ids = {find(name)};
      } else {
        throw_file_error(file.string(),
                         "post_processor: special token " + name + " is not in special_tokens or the vocab");
      }
      auto& dst = seen_a ? template_suffix : template_prefix;
      dst.insert(dst.end(), ids.begin(), ids.end());
    } else {
      unsupported(file, "post_processor single template item", item.dump());
    }
  }
}

void BpeTokenizer::Impl::load_config(const fs::path& config_file) {
  if (fs::exists(config_file)) {
    const json cfg = read_json(config_file);
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
  const json j = read_json(file);
  try {
    if (!j.contains("model")) throw_file_error(file.string(), "no \"model\" section (not an HF tokenizers file?)");
    m.load_model(j["model"]);
    m.load_added_tokens(j.value("added_tokens", json()));
    m.load_normalizer(j.value("normalizer", json()));
    bool has_byte_level = false;
    m.load_pre_tokenizer(j.value("pre_tokenizer", json()), &has_byte_level);
    if (!has_byte_level) unsupported(file, "pre_tokenizer", "no ByteLevel step (only byte-level BPE is supported)");
    m.load_decoder(j.value("decoder", json()));
    m.load_post_processor(j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw_file_error(file.string(), std::string("unexpected structure: ") + e.what());
  }
  m.load_config(model_dir / "tokenizer_config.json");
  if (m.special.size() < m.pieces.size()) m.special.resize(m.pieces.size(), 0);
  spdlog::debug("{}: byte-level BPE, {} tokens, {} merges, {} added tokens", file.string(), m.pieces.size(),
                m.merges.size(), m.added.size());
  return tok;
}

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const fs::path& model_dir) {
  return BpeTokenizer::load(model_dir);
}

// ---- Encoding ----

void BpeTokenizer::Impl::merge_word(std::string_view word, std::vector<int32_t>* out) const {
  // HF's BPE::merge_word: symbols in a linked list, candidate merges in a min-heap by (rank, position).
  struct Symbol {
    int32_t id, prev, next, len;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (unsigned char c : word) {
    if (byte_ids[c] < 0) continue;  // no unk and no byte fallback: HF drops the byte
    const auto n = int32_t(sym.size());
    sym.push_back({byte_ids[c], n - 1, n + 1, 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  auto lookup = [&](int32_t a, int32_t b) -> const Merge* {
    auto it = merges.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate> heap;
  for (int32_t i = 0; i + 1 < int32_t(sym.size()); ++i) {
    if (const Merge* m = lookup(sym[i].id, sym[i + 1].id)) heap.push({m->rank, i, m->new_id});
  }
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = sym[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = sym[left.next];
    const Merge* m = lookup(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale candidate
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    right.len = 0;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const Merge* p = lookup(sym[left.prev].id, left.id)) heap.push({p->rank, left.prev, p->new_id});
    }
    if (left.next >= 0) {
      if (const Merge* n = lookup(left.id, sym[left.next].id)) heap.push({n->rank, top.pos, n->new_id});
    }
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

void BpeTokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>* out) const {
  if (ignore_merges) {
    const int32_t id = bytes_to_id.find(word);
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  if (word.size() == 1 && byte_ids[uint8_t(word[0])] >= 0) {
    out->push_back(byte_ids[uint8_t(word[0])]);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(std::string(word));
    if (it != cache.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kCacheCapacity) cache.clear();
    cache.emplace(word, std::vector<int32_t>(out->begin() + long(start), out->end()));
  }
}

void BpeTokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return;
  std::string normalized;
  if (!normalizer.empty()) {
    normalized.assign(text);
    for (const auto& step : normalizer) {
      if (step.kind == NormalizerStep::Kind::kPrepend) {
        normalized.insert(0, step.a);
      } else if (!step.a.empty()) {
        std::string r;
        for (size_t pos = 0;;) {
          const size_t hit = normalized.find(step.a, pos);
          r.append(normalized, pos, hit == std::string::npos ? std::string::npos : hit - pos);
          if (hit == std::string::npos) break;
          r += step.b;
          pos = hit + step.a.size();
        }
        normalized.swap(r);
      }
    }
    text = normalized;
  }
  std::string storage;
  std::vector<std::string_view> pieces;
  pre.split(text, &storage, &pieces);
  for (const auto& p : pieces) encode_word(p, out);
}

std::vector<int32_t> BpeTokenizer::encode_with_specials(std::string_view input, bool parse_special) const {
  const Impl& m = *impl_;
  std::string repaired;
  const std::string_view text = bpe::repair_utf8(input, &repaired) ? input : std::string_view(repaired);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (m.added.empty()) {
    m.encode_text(text, &out);
    return out;
  }
  // Added tokens split the text first (leftmost, then longest match), as HF's AddedVocabulary does.
  size_t seg_start = 0;  // start of the pending plain-text segment
  size_t i = 0;
  while (i < text.size()) {
    const auto& cands = m.added_by_first_byte[uint8_t(text[i])];
    const AddedToken* hit = nullptr;
    for (int32_t idx : cands) {
      const AddedToken& a = m.added[idx];
      if (a.special && !parse_special) continue;
      if (text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        size_t len;
        if (i > 0) {
          size_t b = i - 1;
          while (b > 0 && (uint8_t(text[b]) & 0xC0) == 0x80) --b;
          if (is_word_char(decode_cp(text, b, &len))) continue;
        }
        const size_t e = i + a.content.size();
        if (e < text.size() && is_word_char(decode_cp(text, e, &len))) continue;
      }
      hit = &a;
      break;
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (hit->lstrip)
      seg_end = std::max(seg_start, seg_start + trailing_space_start(text.substr(seg_start, i - seg_start)));
    m.encode_text(text.substr(seg_start, seg_end - seg_start), &out);
    out.push_back(hit->id);
    i += hit->content.size();
    if (hit->rstrip) i += leading_space_length(text.substr(i));
    seg_start = i;
  }
  m.encode_text(text.substr(seg_start), &out);
  return out;
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int32_t> ids = encode_with_specials(text, /*parse_special=*/true);
  if (add_bos && impl_->bos >= 0) ids.insert(ids.begin(), impl_->bos);
  if (add_eos && impl_->eos >= 0) ids.push_back(impl_->eos);
  return ids;
}

std::vector<int32_t> BpeTokenizer::encode_hf(std::string_view text) const {
  std::vector<int32_t> ids = impl_->template_prefix;
  const auto body = encode_with_specials(text, true);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), impl_->template_suffix.begin(), impl_->template_suffix.end());
  return ids;
}

// ---- Decoding and vocabulary ----

const std::string& BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error(impl_->file.string() + ": cannot decode token id " + std::to_string(id) + " (vocabulary has " +
                std::to_string(vocab_size()) + " tokens)");
  }
  return impl_->bytes[id];
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

std::string BpeTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    throw Error(impl_->file.string() + ": token id " + std::to_string(id) + " out of range [0, " +
                std::to_string(vocab_size()) + ")");
  }
  return impl_->pieces[id];
}

int32_t BpeTokenizer::piece_to_id(const std::string& piece) const {
  const int32_t id = impl_->find(piece);
  return id >= 0 ? id : impl_->unk;
}

int32_t BpeTokenizer::vocab_size() const {
  return int32_t(impl_->pieces.size());
}
int32_t BpeTokenizer::bos_id() const {
  return impl_->bos;
}
int32_t BpeTokenizer::eos_id() const {
  return impl_->eos;
}
int32_t BpeTokenizer::unk_id() const {
  return impl_->unk;
}
int32_t BpeTokenizer::pad_id() const {
  return impl_->pad;
}
bool BpeTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id] != 0;
}

bool BpeTokenizer::adds_bos_by_default() const {
  const auto& p = impl_->template_prefix;
  if (!p.empty()) return std::find(p.begin(), p.end(), impl_->bos) != p.end();
  return impl_->add_bos_token.value_or(false);
}

bool BpeTokenizer::adds_eos_by_default() const {
  const auto& s = impl_->template_suffix;
  if (!s.empty()) return std::find(s.begin(), s.end(), impl_->eos) != s.end();
  return impl_->add_eos_token.value_or(false);
}

const std::string& BpeTokenizer::chat_template() const {
  return impl_->chat_template;
}
const fs::path& BpeTokenizer::tokenizer_file() const {
  return impl_->file;
}

// ---- Streaming ----

std::string Utf8StreamBuffer::push(std::string_view bytes) {
  pending_.append(bytes.data(), bytes.size());
  const size_t n = bpe::complete_utf8_prefix(pending_);
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  return out;
}

std::string Utf8StreamBuffer::finish() {
  std::string out;
  if (!pending_.empty() && bpe::repair_utf8(pending_, &out)) out = pending_;
  pending_.clear();
  return out;
}

std::string BpeStreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  const size_t n = bpe::complete_utf8_prefix(pending_);
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  return out;
}

std::string BpeStreamDecoder::finish() {
  std::string out;
  if (!pending_.empty() && bpe::repair_utf8(pending_, &out)) out = pending_;
  pending_.clear();
  return out;
}

}  // namespace qlora::tokenizer
