#include "tokenizer/sentencepiece_model.h"

#include <cstring>
#include <queue>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qlora::tokenizer {

namespace {

const std::string kSpace = "\xE2\x96\x81";        // U+2581 "▁"
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Minimal protobuf wire-format reader (proto2: absent fields keep their defaults).
class WireReader {
 public:
  WireReader(const std::string& data, size_t begin, size_t end, const std::string& source)
      : d_(data), pos_(begin), end_(end), source_(source) {}
  bool done() const { return pos_ >= end_; }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= end_) fail("truncated varint");
      const uint8_t b = static_cast<uint8_t>(d_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  // Reads a key; returns {field number, wire type}.
  std::pair<uint32_t, uint32_t> key() {
    const uint64_t k = varint();
    return {static_cast<uint32_t>(k >> 3), static_cast<uint32_t>(k & 7)};
  }
  // Length-delimited payload: returns [begin, end) within the buffer.
  std::pair<size_t, size_t> bytes() {
    const uint64_t n = varint();
    if (n > end_ - pos_) fail("length-delimited field runs past the end");
    const size_t b = pos_;
    pos_ += n;
    return {b, pos_};
  }
  float fixed32_float() {
    if (end_ - pos_ < 4) fail("truncated fixed32");
    float f;
    std::memcpy(&f, d_.data() + pos_, 4);
    pos_ += 4;
    return f;
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0:
        varint();
        break;
      case 1:
        advance(8);
        break;
      case 2:
        bytes();
        break;
      case 5:
        advance(4);
        break;
      default:
        fail("unsupported wire type " + std::to_string(wire_type));
    }
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw_file_error(source_, "not a valid sentencepiece model (" + what + " at byte " + std::to_string(pos_) + ")",
                     "tokenizer.model must be the sentencepiece model file of the base model");
  }

 private:
  void advance(size_t n) {
    if (end_ - pos_ < n) fail("truncated field");
    pos_ += n;
  }
  const std::string& d_;
  size_t pos_, end_;
  const std::string& source_;
};

// Length of the UTF-8 character starting at s[i], or 0 if it is malformed.
size_t utf8_char_len(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a byte piece, which reads exactly "<0xHH>" (two hex digits), or -1 when it does not.
int byte_piece_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  const int hi = hex_digit(piece[3]), lo = hex_digit(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// Bytes as text: valid UTF-8 kept, each malformed byte replaced by U+FFFD (as sentencepiece's decoder does).
std::string bytes_to_text(const std::string& bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const size_t n = utf8_char_len(bytes, i);
    if (n == 0) {
      out += kReplacement;
      ++i;
    } else {
      out.append(bytes, i, n);
      i += n;
    }
  }
  return out;
}

// One SentencePiece message: piece (1), score (2), type (3).
SentencePieceModel::Piece parse_piece(const std::string& data, size_t b, size_t e, const std::string& source) {
  WireReader pr(data, b, e, source);
  SentencePieceModel::Piece p;
  while (!pr.done()) {
    const auto [f, w] = pr.key();
    if (f == 1 && w == 2) {
      const auto [sb, se] = pr.bytes();
      p.piece = data.substr(sb, se - sb);
    } else if (f == 2 && w == 5) {
      p.score = pr.fixed32_float();
    } else if (f == 3 && w == 0) {
      const auto t = static_cast<int>(pr.varint());
      if (t < 1 || t > 6) pr.fail("unknown piece type " + std::to_string(t));
      p.type = static_cast<SentencePieceModel::PieceType>(t);
    } else {
      pr.skip(w);
    }
  }
  return p;
}

// TrainerSpec: model type, whitespace and byte fallback flags, special token ids, the unknown surface.
void parse_trainer_spec(const std::string& data, size_t b, size_t e, const std::string& source, SentencePieceModel& m) {
  WireReader tr(data, b, e, source);
  while (!tr.done()) {
    const auto [f, w] = tr.key();
    if (w == 0 && (f == 3 || f == 24 || f == 35 || (f >= 40 && f <= 43))) {
      const auto v = static_cast<int32_t>(static_cast<int64_t>(tr.varint()));
      switch (f) {
        case 3:
          m.model_type = v;
          break;
        case 24:
          m.treat_whitespace_as_suffix = v != 0;
          break;
        case 35:
          m.byte_fallback = v != 0;
          break;
        case 40:
          m.unk_id = v;
          break;
        case 41:
          m.bos_id = v;
          break;
        case 42:
          m.eos_id = v;
          break;
        case 43:
          m.pad_id = v;
          break;
      }
    } else if (f == 44 && w == 2) {
      const auto [sb, se] = tr.bytes();
      m.unk_surface = data.substr(sb, se - sb);
    } else {
      tr.skip(w);
    }
  }
}

// NormalizerSpec: name, whether a charsmap is present, the whitespace flags.
void parse_normalizer_spec(const std::string& data, size_t b, size_t e, const std::string& source,
                           SentencePieceModel& m) {
  WireReader nr(data, b, e, source);
  while (!nr.done()) {
    const auto [f, w] = nr.key();
    if (f == 1 && w == 2) {
      const auto [sb, se] = nr.bytes();
      m.normalizer_name = data.substr(sb, se - sb);
    } else if (f == 2 && w == 2) {
      const auto [sb, se] = nr.bytes();
      m.has_charsmap = se > sb;
    } else if (w == 0 && f >= 3 && f <= 5) {
      const bool v = nr.varint() != 0;
      (f == 3 ? m.add_dummy_prefix : f == 4 ? m.remove_extra_whitespaces : m.escape_whitespaces) = v;
    } else {
      nr.skip(w);
    }
  }
}

}  // namespace

SentencePieceModel SentencePieceModel::parse(const std::string& data, const std::string& source) {
  SentencePieceModel m;
  bool has_trainer_spec = false;
  WireReader r(data, 0, data.size(), source);
  while (!r.done()) {
    const auto [field, wt] = r.key();
    if (field == 1 && wt == 2) {  // repeated SentencePiece pieces
      const auto [b, e] = r.bytes();
      m.pieces.push_back(parse_piece(data, b, e, source));
    } else if (field == 2 && wt == 2) {  // TrainerSpec
      has_trainer_spec = true;
      const auto [b, e] = r.bytes();
      parse_trainer_spec(data, b, e, source, m);
    } else if (field == 3 && wt == 2) {  // NormalizerSpec
      const auto [b, e] = r.bytes();
      parse_normalizer_spec(data, b, e, source, m);
    } else {
      r.skip(wt);
    }
  }
  if (m.pieces.empty() || !has_trainer_spec) r.fail("no vocabulary or trainer spec");
  const auto n = static_cast<int32_t>(m.pieces.size());
  for (int32_t id : {m.unk_id, m.bos_id, m.eos_id, m.pad_id}) {
    if (id < -1 || id >= n)  // -1: the model has no such token
      r.fail("special token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(n));
  }
  return m;
}

SentencePieceModel SentencePieceModel::load(const fs::path& file) {
  if (!fs::exists(file)) {
    throw_file_error(file.string(), "tokenizer model file not found",
                     "an HF Llama model folder has tokenizer.model next to config.json");
  }
  if (fs::is_directory(file)) throw_file_error(file.string(), "is a folder, expected a tokenizer.model file");
  return parse(read_file(file), file.string());
}

SentencePieceBpe::SentencePieceBpe(SentencePieceModel model, std::string source)
    : model_(std::move(model)), source_(std::move(source)) {
  if (model_.model_type != 2) {
    throw_file_error(source_, "sentencepiece model type " + std::to_string(model_.model_type) +
                                  " is not supported (only BPE, type 2, as used by Llama/Mistral)");
  }
  if (model_.has_charsmap && model_.normalizer_name != "identity") {
    throw_file_error(source_, "sentencepiece normalizer '" + model_.normalizer_name +
                                  "' with a precompiled charsmap is not supported (Llama models use 'identity')");
  }
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (int32_t id = 0; id < static_cast<int32_t>(model_.pieces.size()); ++id) {
    const auto& p = model_.pieces[id];
    all_.emplace(p.piece, id);
    using T = SentencePieceModel::PieceType;
    if (p.type == T::kNormal || p.type == T::kUserDefined || p.type == T::kUnused) mergeable_.emplace(p.piece, id);
    if (p.type == T::kUserDefined) user_defined_.push_back(p.piece);
    if (p.type == T::kByte) {
      const int b = byte_piece_value(p.piece);
      if (b < 0) {
        throw_file_error(source_,
                         "byte piece " + std::to_string(id) + " reads '" + p.piece.substr(0, 16) +
                             "', expected <0xHH> with two hex digits",
                         "the tokenizer.model is corrupt; copy it again from the base model's folder");
      }
      byte_ids_[b] = id;
    }
  }
  if (model_.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (byte_ids_[b] < 0)
        throw_file_error(source_, "byte_fallback is on but piece <0x.." + std::to_string(b) + "> is missing");
    }
  }
}

int32_t SentencePieceBpe::piece_to_id(const std::string& piece) const {
  const auto it = all_.find(piece);
  return it == all_.end() ? model_.unk_id : it->second;
}

// sentencepiece's Normalizer::Normalize for identity normalization: malformed UTF-8 -> U+FFFD, optional
// whitespace cleanup, spaces escaped as "▁", and the dummy "▁" prefix.
std::string SentencePieceBpe::normalize(const std::string& text) const {
  std::string chars;  // text with malformed bytes replaced
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_char_len(text, i);
    if (n == 0) {
      chars += kReplacement;
      ++i;
    } else {
      chars.append(text, i, n);
      i += n;
    }
  }
  size_t begin = 0;
  if (model_.remove_extra_whitespaces) {
    while (begin < chars.size() && chars[begin] == ' ') ++begin;
  }
  if (begin == chars.size()) return "";
  const std::string ws = model_.escape_whitespaces ? kSpace : " ";
  std::string out;
  out.reserve(chars.size() * 2);
  if (!model_.treat_whitespace_as_suffix && model_.add_dummy_prefix) out += ws;
  bool prev_space = model_.remove_extra_whitespaces;
  for (size_t i = begin; i < chars.size(); ++i) {
    const char c = chars[i];
    if (c == ' ') {
      if (!(prev_space && model_.remove_extra_whitespaces)) out += ws;
      prev_space = true;
    } else {
      out += c;
      prev_space = false;
    }
  }
  if (model_.remove_extra_whitespaces) {
    while (out.size() >= ws.size() && out.compare(out.size() - ws.size(), ws.size(), ws) == 0) {
      out.resize(out.size() - ws.size());
    }
  }
  if (model_.treat_whitespace_as_suffix && model_.add_dummy_prefix) out += ws;
  return out;
}

// BPE as in sentencepiece's bpe_model.cc: split into characters (user-defined symbols whole), then
// repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece (leftmost on ties).
std::vector<int32_t> SentencePieceBpe::encode(const std::string& text) const {
  const std::string norm = normalize(text);
  struct Symbol {
    size_t begin, len;
    int prev, next;
    bool frozen;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < norm.size();) {
    size_t len = 0;
    bool frozen = false;
    for (const auto& u : user_defined_) {
      if (u.size() > len && norm.compare(i, u.size(), u) == 0) {
        len = u.size();
        frozen = true;
      }
    }
    if (len == 0) len = std::max<size_t>(1, utf8_char_len(norm, i));
    const int idx = static_cast<int>(sym.size());
    sym.push_back({i, len, idx - 1, i + len < norm.size() ? idx + 1 : -1, frozen});
    i += len;
  }
  struct Pair {
    int left, right;
    float score;
    size_t len;
  };
  auto worse = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  auto maybe_add = [&](int l, int r) {
    if (l < 0 || r < 0 || sym[l].frozen || sym[r].frozen) return;
    const size_t len = sym[l].len + sym[r].len;
    const auto it = mergeable_.find(norm.substr(sym[l].begin, len));
    if (it == mergeable_.end()) return;
    agenda.push({l, r, model_.pieces[it->second].score, len});
  };
  for (size_t i = 1; i < sym.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = sym[top.left];
    Symbol& r = sym[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.len || l.next != top.right) continue;  // stale
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = top.left;
    r.len = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  std::vector<int32_t> ids;
  bool prev_unk = false;
  for (int i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
    const std::string piece = norm.substr(sym[i].begin, sym[i].len);
    const int32_t id = piece_to_id(piece);
    const bool unk = id == model_.unk_id;
    if (unk && model_.byte_fallback) {
      for (unsigned char b : piece) ids.push_back(byte_ids_[b]);
    } else if (!(unk && prev_unk)) {  // a run of unknown pieces becomes one <unk>, as in sentencepiece
      ids.push_back(id);
    }
    prev_unk = unk;
  }
  return ids;
}

std::string SentencePieceBpe::decode(const std::vector<int32_t>& ids) const {
  using T = SentencePieceModel::PieceType;
  std::string text, pending_bytes;
  bool at_start = true;
  // The first non-control piece loses its leading "▁" (the dummy prefix). With remove_extra_whitespaces the
  // stripping goes on until some text has been produced; without it, only that first piece is stripped.
  auto emit = [&](const std::string& surface) {
    text += surface;
    at_start = model_.remove_extra_whitespaces && text.empty();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(model_.pieces.size())) {
      throw Error(source_ + ": cannot decode token id " + std::to_string(id) + " (vocabulary has " +
                  std::to_string(model_.pieces.size()) + " tokens)");
    }
    const auto& p = model_.pieces[id];
    if (p.type == T::kByte) {
      pending_bytes.push_back(static_cast<char>(byte_piece_value(p.piece)));  // checked by the constructor
      continue;
    }
    if (!pending_bytes.empty()) {
      emit(bytes_to_text(pending_bytes));
      pending_bytes.clear();
    }
    if (p.type == T::kControl) continue;
    if (p.type == T::kUnknown) {
      emit(model_.unk_surface);
      continue;
    }
    std::string piece = p.piece;
    if (at_start && (model_.add_dummy_prefix || model_.remove_extra_whitespaces) &&
        piece.compare(0, kSpace.size(), kSpace) == 0) {
      piece.erase(0, kSpace.size());
    }
    std::string surface;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpace.size(), kSpace) == 0) {
        surface += ' ';
        i += kSpace.size();
      } else {
        surface += piece[i++];
      }
    }
    emit(surface);
  }
  if (!pending_bytes.empty()) emit(bytes_to_text(pending_bytes));
  return text;
}

}  // namespace qlora::tokenizer
