#include "tokenizer/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tokenizer/bpe_pretokenizer.h"

namespace qlora::tokenizer {

namespace {

struct CombiningRange {
  uint32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  uint32_t cp;
  uint8_t n;
  uint32_t to[4];
};
struct Composition {
  uint32_t first, second, composite;
};

#include "tokenizer/unicode_nfc_tables.inc"

// Hangul syllables compose and decompose algorithmically (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = std::end(kCombiningClass);
  const auto* it = std::upper_bound(std::begin(kCombiningClass), end, cp,
                                    [](uint32_t c, const CombiningRange& r) { return c < r.first; });
  if (it == std::begin(kCombiningClass)) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = std::end(kDecomposition);
  const auto* it = std::lower_bound(std::begin(kDecomposition), end, cp,
                                    [](const Decomposition& d, uint32_t c) { return d.cp < c; });
  if (it == end || it->cp != cp) {
    out->push_back(cp);
    return;
  }
  out->insert(out->end(), it->to, it->to + it->n);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* end = std::end(kComposition);
  const auto* it = std::lower_bound(std::begin(kComposition), end, std::make_pair(a, b),
                                    [](const Composition& c, const std::pair<uint32_t, uint32_t>& k) {
                                      return c.first != k.first ? c.first < k.first : c.second < k.second;
                                    });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

uint32_t next_cp(std::string_view s, size_t* i) {
  const auto c = uint8_t(s[*i]);
  size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  n = std::min(n, s.size() - *i);
  uint32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(s[*i + k]) & 0x3F);
  *i += n;
  return cp;
}

}  // namespace

std::string nfc(std::string_view utf8) {
  if (std::all_of(utf8.begin(), utf8.end(), [](char c) { return uint8_t(c) < 0x80; })) return std::string(utf8);
  // 1. Full canonical decomposition.
  std::vector<uint32_t> cps;
  cps.reserve(utf8.size());
  for (size_t i = 0; i < utf8.size();) decompose(next_cp(utf8, &i), &cps);
  // 2. Canonical ordering: each run of non-starters sorted (stably) by combining class.
  std::vector<uint8_t> ccc(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) ccc[i] = combining_class(cps[i]);
  for (size_t i = 0; i < cps.size();) {
    if (ccc[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc[j] != 0) ++j;
    std::vector<std::pair<uint8_t, uint32_t>> run;
    for (size_t k = i; k < j; ++k) run.emplace_back(ccc[k], cps[k]);
    std::stable_sort(run.begin(), run.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    for (size_t k = i; k < j; ++k) ccc[k] = run[k - i].first, cps[k] = run[k - i].second;
    i = j;
  }
  // 3. Canonical composition: each character combines with the last starter unless blocked (an earlier character
  // since that starter has a combining class >= its own, or is a starter).
  std::vector<uint32_t> out;
  std::vector<uint8_t> out_ccc;
  out.reserve(cps.size());
  long starter = -1;
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint8_t c = ccc[i];
    if (starter >= 0) {
      const uint8_t last = out_ccc.size() > size_t(starter) + 1 ? out_ccc.back() : 0;
      const bool adjacent = out.size() == size_t(starter) + 1;
      const bool blocked = !adjacent && (last == 0 || last >= c);
      if (!blocked) {
        if (const uint32_t comp = compose(out[starter], cps[i])) {
          out[starter] = comp;
          continue;
        }
      }
    }
    out.push_back(cps[i]);
    out_ccc.push_back(c);
    if (c == 0) starter = long(out.size()) - 1;
  }
  std::string result;
  result.reserve(utf8.size());
  for (uint32_t cp : out) bpe::append_utf8(cp, &result);
  return result;
}

const char* nfc_unicode_version() {
  return kUnicodeVersion;
}

}  // namespace qlora::tokenizer
