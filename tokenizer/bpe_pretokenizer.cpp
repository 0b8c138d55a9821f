#include "tokenizer/bpe_pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <c10/util/Exception.h>
#include <pcre2.h>

#include <array>

#include "common/error.h"

namespace qlora::tokenizer::bpe {

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

struct ByteTable {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 0x144> to_byte;  // code points < 0x144 only
  ByteTable() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      append_utf8(cp, &to_unicode[b]);
      to_byte[cp] = int16_t(b);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when invalid; `need` gets the length the lead
// byte announces when the sequence is valid so far but truncated by the end of s (0 otherwise).
size_t utf8_sequence_length(std::string_view s, size_t i, size_t* need) {
  *need = 0;
  const auto c = uint8_t(s[i]);
  if (c < 0x80) return 1;
  size_t len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if (i + k >= s.size()) {
      *need = len;
      return 0;
    }
    const auto b = uint8_t(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
  }
  return len;
}

// The maximal subpart of an invalid sequence at s[i] (always >= 1 byte), per the Unicode replacement practice.
size_t invalid_subpart_length(std::string_view s, size_t i) {
  const auto c = uint8_t(s[i]);
  size_t len = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 1;
  if (len == 1) return 1;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c == 0xE0) lo = 0xA0;
  if (c == 0xED) hi = 0x9F;
  if (c == 0xF0) lo = 0x90;
  if (c == 0xF4) hi = 0x8F;
  size_t k = 1;
  for (; k < len && i + k < s.size(); ++k) {
    const auto b = uint8_t(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
  }
  return k;
}

// Unicode White_Space (what Oniguruma's \s matches in HF tokenizers). PCRE2's UCP \s also matches U+180E.
constexpr const char* kWhiteSpaceClassBody =
    R"(\t\n\x0B\f\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Rewrites \s and \S to exact White_Space classes so that PCRE2 agrees with Oniguruma.
std::string translate_pattern(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClassBody) : "[" + std::string(kWhiteSpaceClassBody) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceClassBody) + "]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is a literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:name:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) {
  return byte_table().to_unicode[b];
}

int unicode_to_byte(uint32_t cp) {
  return cp < byte_table().to_byte.size() ? byte_table().to_byte[cp] : -1;
}

bool byte_level_to_bytes(std::string_view s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size();) {
    size_t need;
    const size_t len = utf8_sequence_length(s, i, &need);
    if (len == 0) return false;
    uint32_t cp = uint8_t(s[i]);
    if (len > 1) {
      cp &= (0xFF >> (len + 1));
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
    }
    const int b = unicode_to_byte(cp);
    if (b < 0) return false;
    out->push_back(char(b));
    i += len;
  }
  return true;
}

bool repair_utf8(std::string_view in, std::string* out) {
  size_t i = 0;
  size_t need;
  // Fast path: ASCII / valid input needs no copy.
  while (i < in.size()) {
    if (uint8_t(in[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t len = utf8_sequence_length(in, i, &need);
    if (len == 0) break;
    i += len;
  }
  if (i == in.size()) return true;
  out->assign(in.data(), i);
  while (i < in.size()) {
    const size_t len = utf8_sequence_length(in, i, &need);
    if (len > 0) {
      out->append(in.data() + i, len);
      i += len;
    } else {
      out->append("\xEF\xBF\xBD");
      i += invalid_subpart_length(in, i);
    }
  }
  return false;
}

size_t complete_utf8_prefix(std::string_view s) {
  // Only the last 3 bytes can start an incomplete sequence.
  const size_t start = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = start; i < s.size(); ++i) {
    const auto c = uint8_t(s[i]);
    if (c < 0xC2 || c > 0xF4) continue;  // not a lead byte
    size_t need;
    if (utf8_sequence_length(s, i, &need) == 0 && need > 0) return i;
  }
  return s.size();
}

// ---- Regex ----

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

Regex::Regex(const std::string& pattern, const std::string& source) : impl_(std::make_unique<Impl>()) {
  const std::string translated = translate_pattern(pattern);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &err_offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    throw Error(source + ": cannot compile regex pattern " + pattern + ": " + reinterpret_cast<const char*>(msg) +
                " (at offset " + std::to_string(err_offset) + " of the translated pattern " + translated + ")");
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const {
  // A match data block per call keeps find_all thread-safe on a shared Regex.
  struct MatchData {
    pcre2_match_data* md;
    explicit MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {}
    ~MatchData() { pcre2_match_data_free(md); }
  } data(impl_->code);
  TORCH_CHECK(data.md != nullptr, "pcre2_match_data_create_from_pattern failed");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = impl_->jit
                       ? pcre2_jit_match(impl_->code, subject, text.size(), pos, 0, data.md, nullptr)
                       : pcre2_match(impl_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, data.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      throw Error(std::string("pre-tokenizer regex match failed: ") + reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      matches->emplace_back(b, e);
      pos = e;
    } else {  // empty match: step over one code point
      pos = b + 1;
      while (pos < text.size() && (uint8_t(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
}

// ---- PreTokenizer ----

namespace {

using Range = std::pair<size_t, size_t>;  // [begin, end) byte offsets into the text being split

// Splits text[r] with one Split step, appending the resulting ranges to `out`.
void split_range(const PreTokenizerStep& step, std::string_view text, Range r, std::vector<Range>* out,
                 std::vector<Range>* matches) {
  matches->clear();
  step.regex->find_all(text.substr(r.first, r.second - r.first), matches);
  struct Span {
    size_t b, e;
    bool delim;
  };
  std::vector<Span> spans;
  spans.reserve(matches->size() * 2 + 1);
  size_t prev = 0;
  const size_t n = r.second - r.first;
  for (const auto& [b, e] : *matches) {
    if (b > prev) spans.push_back({prev, b, step.invert});
    spans.push_back({b, e, !step.invert});
    prev = e;
  }
  if (prev < n) spans.push_back({prev, n, step.invert});

  auto emit = [&](size_t b, size_t e) {
    if (e > b) out->emplace_back(r.first + b, r.first + e);
  };
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& s : spans) emit(s.b, s.e);
      break;
    case SplitBehavior::kRemoved:
      for (const auto& s : spans)
        if (!s.delim) emit(s.b, s.e);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      size_t start = 0;
      for (const auto& s : spans) {
        if (s.delim) {
          emit(start, s.e);
          start = s.e;
        }
      }
      emit(start, n);
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      size_t start = 0;
      for (const auto& s : spans) {
        if (s.delim && s.b > start) {
          emit(start, s.b);
          start = s.b;
        }
      }
      emit(start, n);
      break;
    }
    case SplitBehavior::kContiguous: {
      size_t start = 0;
      bool prev_delim = false;
      for (size_t k = 0; k < spans.size(); ++k) {
        const auto& s = spans[k];
        if (k > 0 && !(s.delim && prev_delim)) {
          emit(start, s.b);
          start = s.b;
        }
        prev_delim = s.delim;
      }
      emit(start, n);
      break;
    }
  }
}

}  // namespace

void PreTokenizer::add_step(PreTokenizerStep step) {
  if (step.kind == PreTokenizerStep::Kind::kByteLevel && step.add_prefix_space) adds_prefix_space_ = true;
  steps_.push_back(std::move(step));
}

void PreTokenizer::split(std::string_view text, std::string* storage, std::vector<std::string_view>* pieces) const {
  pieces->clear();
  if (text.empty()) return;
  std::vector<Range> cur{{0, text.size()}}, next;
  std::vector<Range> matches;
  if (!adds_prefix_space_) {
    // Pure splitting: ranges into `text`.
    for (const auto& step : steps_) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel && !step.use_regex) continue;
      next.clear();
      next.reserve(cur.size() * 2 + text.size() / 4);
      for (const auto& r : cur) split_range(step, text, r, &next, &matches);
      cur.swap(next);
    }
    pieces->reserve(cur.size());
    for (const auto& r : cur) pieces->push_back(text.substr(r.first, r.second - r.first));
    return;
  }
  // A ByteLevel prefix space changes the bytes: work on owned strings, then lay them out in `storage`.
  std::vector<std::string> strs{std::string(text)}, next_strs;
  for (const auto& step : steps_) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
      if (step.add_prefix_space) {
        for (auto& p : strs)
          if (p.empty() || p[0] != ' ') p.insert(p.begin(), ' ');
      }
      if (!step.use_regex) continue;
    }
    next_strs.clear();
    for (const auto& p : strs) {
      next.clear();
      split_range(step, p, {0, p.size()}, &next, &matches);
      for (const auto& r : next) next_strs.emplace_back(p.substr(r.first, r.second - r.first));
    }
    strs.swap(next_strs);
  }
  storage->clear();
  for (const auto& p : strs) *storage += p;
  size_t off = 0;
  for (const auto& p : strs) {
    pieces->push_back(std::string_view(*storage).substr(off, p.size()));
    off += p.size();
  }
}

}  // namespace qlora::tokenizer::bpe
