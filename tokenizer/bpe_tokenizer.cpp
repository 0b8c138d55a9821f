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
#include "tokenizer/bpe_tokenizer_impl.h"
#include "tokenizer/unicode_nfc.h"

namespace qlora::tokenizer {

using json = nlohmann::json;
using namespace detail;

namespace {

constexpr size_t kCacheCapacity = 1 << 16;  // words; the cache is cleared when full
constexpr size_t kMaxCachedWordBytes = 64;

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

}  // namespace

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
  std::vector<int32_t> init;
  init.reserve(word.size());
  if (byte_level) {
    for (unsigned char c : word) {
      if (byte_ids[c] >= 0) init.push_back(byte_ids[c]);  // no unk and no byte fallback: HF drops the byte
    }
  } else {
    char_symbols(word, &init);
  }
  std::vector<Symbol> sym;
  sym.reserve(init.size());
  for (int32_t id : init) {
    const auto n = int32_t(sym.size());
    sym.push_back({id, n - 1, n + 1, 1});
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

void BpeTokenizer::Impl::char_symbols(std::string_view word, std::vector<int32_t>* ids) const {
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t len;
    decode_cp(word, i, &len);
    const std::string_view ch = word.substr(i, len);
    i += len;
    const int32_t id = find(ch);
    if (id >= 0) {
      ids->push_back(id);
      last_unk = false;
      continue;
    }
    if (byte_fallback && std::all_of(ch.begin(), ch.end(), [&](char b) { return fallback_ids[uint8_t(b)] >= 0; })) {
      for (char b : ch) ids->push_back(fallback_ids[uint8_t(b)]);
      last_unk = false;
      continue;
    }
    if (unk < 0) continue;  // HF drops a character it cannot represent
    if (!(fuse_unk && last_unk)) ids->push_back(unk);
    last_unk = true;
  }
}

void BpeTokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>* out) const {
  if (!byte_level) {
    if (ignore_merges) {
      if (const int32_t id = find(word); id >= 0) {
        out->push_back(id);
        return;
      }
    }
    merge_word(word, out);
    return;
  }
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
      } else if (step.kind == NormalizerStep::Kind::kNfc) {
        normalized = nfc(normalized);
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
  const CharDecoder& d = impl_->char_decoder;
  if (!d.strip_content.empty()) {
    // HF's Strip decoder after Fuse: up to `start` leading and `stop` trailing copies of the character.
    const std::string& c = d.strip_content;
    size_t begin = 0, end = out.size();
    for (size_t k = 0; k < d.strip_start && out.compare(begin, c.size(), c) == 0; ++k) begin += c.size();
    for (size_t k = 0; k < d.strip_stop && end >= begin + c.size() && out.compare(end - c.size(), c.size(), c) == 0;
         ++k)
      end -= c.size();
    out = out.substr(begin, end - begin);
  }
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
