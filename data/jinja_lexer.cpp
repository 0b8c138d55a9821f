// The Jinja lexer, following jinja2's (jinja2/lexer.py) in transformers' environment: trim_blocks=True (the first
// newline after a block or comment tag is removed), lstrip_blocks=True (spaces and tabs from the start of a line
// to a block or comment tag are removed), keep_trailing_newline=False (one trailing newline of the template is
// dropped), newlines normalized to "\n"; "-" on a tag strips all whitespace on that side, "+" turns lstrip_blocks /
// trim_blocks off for that tag. Inside tags, end delimiters count only when brackets are balanced.
#include <cctype>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

namespace {

[[noreturn]] void lex_error(const std::string& name, int line, const std::string& what) {
  throw JinjaError(name + ":" + std::to_string(line) + ": template syntax error: " + what +
                   "\nHINT: the chat template is not valid Jinja (or uses syntax this interpreter does not have)");
}

std::string normalize_newlines(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Length of the Python-whitespace run at s[pos].
size_t space_run(const std::string& s, size_t pos) {
  const size_t start = pos;
  while (pos < s.size()) {
    const auto b = static_cast<unsigned char>(s[pos]);
    if (b < 0x80) {
      if (!is_python_space(b)) break;
      ++pos;
      continue;
    }
    size_t n = (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : 4;
    const std::u32string cp = utf8_decode(s.substr(pos, n));
    if (cp.size() != 1 || !is_python_space(cp[0])) break;
    pos += n;
  }
  return pos - start;
}

std::string rstrip_python(const std::string& s) {
  std::u32string u = utf8_decode(s);
  while (!u.empty() && is_python_space(u.back())) u.pop_back();
  return is_ascii(s) ? s.substr(0, u.size()) : utf8_encode(u);
}

void append_code_point(std::string& out, uint32_t cp) {
  out += utf8_encode(std::u32string(1, static_cast<char32_t>(cp)));
}

// Python's unicode-escape decoding as jinja2 applies it to string literals.
std::string unescape(const std::string& raw, const std::string& name, int line) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 == raw.size()) {
      out += raw[i];
      continue;
    }
    const char c = raw[++i];
    const auto hex = [&](size_t n) {
      uint32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= raw.size() || !std::isxdigit(static_cast<unsigned char>(raw[i + k])))
          lex_error(name, line, "truncated \\x/\\u escape in a string literal");
        v = v * 16 + static_cast<uint32_t>(std::stoi(std::string(1, raw[i + k]), nullptr, 16));
      }
      i += n;
      return v;
    };
    switch (c) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'v':
        out += '\v';
        break;
      case '\n':
        break;
      case 'x':
        append_code_point(out, hex(2));
        break;
      case 'u':
        append_code_point(out, hex(4));
        break;
      case 'U':
        append_code_point(out, hex(8));
        break;
      default:
        if (c >= '0' && c <= '7') {
          uint32_t v = 0;
          size_t k = 0;
          for (; k < 3 && i + k < raw.size() && raw[i + k] >= '0' && raw[i + k] <= '7'; ++k) {
            v = v * 8 + static_cast<uint32_t>(raw[i + k] - '0');
          }
          i += k - 1;
          append_code_point(out, v);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

struct Lexer {
  const std::string& src;
  const std::string& name;
  std::vector<Token> out;
  size_t pos = 0;
  int line = 1;

  void advance_to(size_t p) {
    for (size_t k = pos; k < p && k < src.size(); ++k) line += src[k] == '\n';
    pos = p;
  }

  void emit(Token::Kind kind, std::string text, int at_line) { out.push_back({kind, std::move(text), at_line}); }

  // Text up to the next tag; applies "-" and lstrip_blocks to it.
  void lex_text(size_t tag, bool line_starting) {
    std::string text = src.substr(pos, tag - pos);
    const char kind = src[tag + 1];
    const char mod = tag + 2 < src.size() ? src[tag + 2] : '\0';
    if (mod == '-') {
      text = rstrip_python(text);
    } else if (mod != '+' && kind != '{') {
      const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      if ((l_pos > 0 || line_starting) && l_pos < text.size() && space_run(text, l_pos) == text.size() - l_pos) {
        text.resize(l_pos);
      }
    }
    const int at = line;
    advance_to(tag);
    if (!text.empty()) emit(Token::Kind::kText, std::move(text), at);
  }

  // After an end delimiter at pos: "-" strips following whitespace, trim_blocks drops one newline.
  bool finish_tag(size_t end_len, bool strip, bool trim_newline) {
    advance_to(pos + end_len);
    if (strip) {
      advance_to(pos + space_run(src, pos));
    } else if (trim_newline && pos < src.size() && src[pos] == '\n') {
      advance_to(pos + 1);
      return true;
    }
    return pos > 0 && src[pos - 1] == '\n';
  }

  bool lex_comment() {
    const int at = line;
    const size_t end = src.find("#}", pos + 2);
    if (end == std::string::npos) lex_error(name, at, "unclosed comment {# ... #}");
    const char mod = end > pos + 2 ? src[end - 1] : '\0';
    advance_to(end);
    return finish_tag(2, mod == '-', mod != '+');
  }

  void lex_number() {
    size_t p = pos;
    while (p < src.size() && (std::isdigit(static_cast<unsigned char>(src[p])) || src[p] == '_')) ++p;
    bool is_float = false;
    if (p + 1 < src.size() && src[p] == '.' && std::isdigit(static_cast<unsigned char>(src[p + 1]))) {
      is_float = true;
      ++p;
      while (p < src.size() && (std::isdigit(static_cast<unsigned char>(src[p])) || src[p] == '_')) ++p;
    }
    if (p < src.size() && (src[p] == 'e' || src[p] == 'E')) {
      size_t q = p + 1;
      if (q < src.size() && (src[q] == '+' || src[q] == '-')) ++q;
      if (q < src.size() && std::isdigit(static_cast<unsigned char>(src[q]))) {
        is_float = true;
        p = q;
        while (p < src.size() && std::isdigit(static_cast<unsigned char>(src[p]))) ++p;
      }
    }
    std::string digits;
    for (size_t k = pos; k < p; ++k) {
      if (src[k] != '_') digits += src[k];
    }
    emit(is_float ? Token::Kind::kFloat : Token::Kind::kInt, digits, line);
    advance_to(p);
  }

  void lex_string() {
    const char q = src[pos];
    const int at = line;
    size_t p = pos + 1;
    while (p < src.size() && src[p] != q) p += src[p] == '\\' ? 2 : 1;
    if (p >= src.size()) lex_error(name, at, "unclosed string literal");
    emit(Token::Kind::kString, unescape(src.substr(pos + 1, p - pos - 1), name, at), at);
    advance_to(p + 1);
  }

  // Tokens of one {{ ... }} or {% ... %}; returns whether the end consumed a newline (line_starting).
  bool lex_tag(bool block) {
    const int at = line;
    emit(block ? Token::Kind::kBlockBegin : Token::Kind::kVarBegin, "", at);
    advance_to(pos + ((src[pos + 2] == '-' || src[pos + 2] == '+') ? 3 : 2));
    int balance = 0;
    static const char* const kOps2[] = {"//", "**", "==", "!=", "<=", ">="};
    while (true) {
      advance_to(pos + space_run(src, pos));
      if (pos >= src.size()) lex_error(name, at, block ? "unclosed block tag {% ... %}" : "unclosed {{ ... }}");
      const std::string end = block ? "%}" : "}}";
      if (balance == 0) {
        const bool minus = src.compare(pos, 3, "-" + end) == 0;
        const bool plus = block && src.compare(pos, 3, "+" + end) == 0;
        if (minus || plus || src.compare(pos, 2, end) == 0) {
          emit(block ? Token::Kind::kBlockEnd : Token::Kind::kVarEnd, "", line);
          return finish_tag(minus || plus ? 3 : 2, minus, block && !plus);
        }
      }
      const char c = src[pos];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t p = pos;
        while (p < src.size() && (std::isalnum(static_cast<unsigned char>(src[p])) || src[p] == '_')) ++p;
        emit(Token::Kind::kName, src.substr(pos, p - pos), line);
        advance_to(p);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        lex_string();
      } else {
        std::string op(1, c);
        for (const char* two : kOps2) {
          if (src.compare(pos, 2, two) == 0) op = two;
        }
        if (op.size() == 1 && std::string("+-/*%~[](){}<>=.:|,;!").find(c) == std::string::npos) {
          lex_error(name, line, std::string("unexpected character '") + c + "'");
        }
        if (op == "(" || op == "[" || op == "{") ++balance;
        if ((op == ")" || op == "]" || op == "}") && balance > 0) --balance;
        emit(Token::Kind::kOp, op, line);
        advance_to(pos + op.size());
      }
    }
  }

  void run() {
    bool line_starting = true;
    while (pos < src.size()) {
      size_t tag = pos;
      while (true) {
        tag = src.find('{', tag);
        if (tag == std::string::npos || tag + 1 >= src.size()) break;
        const char k = src[tag + 1];
        if (k == '{' || k == '%' || k == '#') break;
        ++tag;
      }
      if (tag == std::string::npos || tag + 1 >= src.size()) {
        emit(Token::Kind::kText, src.substr(pos), line);
        advance_to(src.size());
        break;
      }
      lex_text(tag, line_starting);
      const char k = src[pos + 1];
      if (k == '#') {
        line_starting = lex_comment();
      } else {
        if (k == '%' && is_raw_tag()) lex_error(name, line, "{% raw %} is not supported");
        line_starting = lex_tag(/*block=*/k == '%');
      }
    }
    emit(Token::Kind::kEof, "", line);
  }

  bool is_raw_tag() const {
    size_t p = pos + 2;
    if (p < src.size() && (src[p] == '-' || src[p] == '+')) ++p;
    p += space_run(src, p);
    return src.compare(p, 3, "raw") == 0 && (p + 3 >= src.size() || !std::isalnum(uint8_t(src[p + 3])));
  }
};

}  // namespace

std::vector<Token> tokenize(const std::string& source, const std::string& name) {
  const std::string src = normalize_newlines(source);
  Lexer lx{src, name, {}};
  lx.run();
  return lx.out;
}

}  // namespace qlora::data::jinja
