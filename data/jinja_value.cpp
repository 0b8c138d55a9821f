// Jinja values with Python's semantics: truthiness, str() and repr(), ==, <, json.dumps.
#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  items.emplace_back(key, std::move(v));
}

namespace {

// Containers whose last reference went while another container was being freed: freed by the outermost call.
thread_local bool freeing = false;
thread_local std::vector<const List*> pending_lists;
thread_local std::vector<Dict*> pending_dicts;

template <typename T>
void free_container(T* p, std::vector<T*>& pending) {
  if (freeing) {
    pending.push_back(p);
    return;
  }
  freeing = true;
  delete p;
  while (!pending_lists.empty() || !pending_dicts.empty()) {
    if (!pending_lists.empty()) {
      const List* l = pending_lists.back();
      pending_lists.pop_back();
      delete l;
    } else {
      Dict* d = pending_dicts.back();
      pending_dicts.pop_back();
      delete d;
    }
  }
  freeing = false;
}

}  // namespace

void free_list(const List* l) {
  free_container(l, pending_lists);
}
void free_dict(Dict* d) {
  free_container(d, pending_dicts);
}

Value make_dict(std::vector<std::pair<std::string, Value>> items) {
  auto d = std::shared_ptr<Dict>(new Dict(), free_dict);
  d->items = std::move(items);
  return Value(std::move(d));
}

Value from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value(None{});
    case nlohmann::ordered_json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value(static_cast<int64_t>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      std::vector<std::pair<std::string, Value>> items;
      items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(it.key(), from_json(it.value()));
      return make_dict(std::move(items));
    }
    default:
      return Value(None{});
  }
}

const char* type_name(const Value& v) {
  if (v.is_undefined()) return "Undefined";
  if (v.is_none()) return "NoneType";
  if (v.is_bool()) return "bool";
  if (v.is_int()) return "int";
  if (v.is_float()) return "float";
  if (v.is_string()) return "str";
  if (v.is_list()) return "list";
  if (v.is_dict()) return v.dict().is_namespace ? "Namespace" : "dict";
  return "function";
}

bool truthy(const Value& v) {
  if (v.is_undefined() || v.is_none()) return false;
  if (v.is_bool()) return v.boolean();
  if (v.is_int()) return v.integer() != 0;
  if (v.is_float()) return std::get<double>(v.v) != 0.0;
  if (v.is_string()) return !v.str().empty();
  if (v.is_list()) return !v.list().empty();
  if (v.is_dict()) return v.dict().is_namespace || !v.dict().items.empty();
  return true;
}

double as_double(const Value& v) {
  if (v.is_float()) return std::get<double>(v.v);
  if (v.is_int()) return static_cast<double>(v.integer());
  if (v.is_bool()) return v.boolean() ? 1.0 : 0.0;
  return 0.0;
}

std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, then Python's layout: positional for exponents in [-4, 16), else d.ddde+XX.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<size_t>(exp) + 1 >= digits.size()) {
      out = digits + std::string(static_cast<size_t>(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(exp) + 1) + "." + digits.substr(static_cast<size_t>(exp) + 1);
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += ebuf;
  }
  return neg ? "-" + out : out;
}

namespace {

// Python's repr of a str: single quotes unless the text has ' and no ", escapes for \\ \n \r \t and
// non-printable ASCII.
std::string repr_string(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

}  // namespace

namespace {

thread_local int value_nesting = 0;

// One level of a recursive walk over a value (kMaxValueNesting).
struct NestingGuard {
  NestingGuard() {
    if (++value_nesting > kMaxValueNesting) {
      --value_nesting;
      throw ValueTooDeep{};
    }
  }
  ~NestingGuard() { --value_nesting; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;
};

}  // namespace

std::string to_repr(const Value& v) {
  if (v.is_string()) return repr_string(v.str());
  const NestingGuard guard;
  if (v.is_list()) {
    std::string out = v.tuple ? "(" : "[";
    for (size_t i = 0; i < v.list().size(); ++i) out += (i ? ", " : "") + to_repr(v.list()[i]);
    if (v.tuple && v.list().size() == 1) out += ",";
    return out + (v.tuple ? ")" : "]");
  }
  if (v.is_dict()) {
    const Dict& d = v.dict();
    std::string out = d.is_namespace ? "<Namespace {" : "{";
    for (size_t i = 0; i < d.items.size(); ++i) {
      out += (i ? ", " : "") + repr_string(d.items[i].first) + ": " + to_repr(d.items[i].second);
    }
    return out + (d.is_namespace ? "}>" : "}");
  }
  return to_str(v);
}

std::string to_str(const Value& v) {
  if (v.is_undefined()) return "";
  if (v.is_none()) return "None";
  if (v.is_bool()) return v.boolean() ? "True" : "False";
  if (v.is_int()) return std::to_string(v.integer());
  if (v.is_float()) return format_float(std::get<double>(v.v));
  if (v.is_string()) return v.str();
  if (v.is_function()) return "<function " + v.function().name + ">";
  return to_repr(v);
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (!a.is_float() && !b.is_float()) {
      const int64_t x = a.is_bool() ? a.boolean() : a.integer();
      const int64_t y = b.is_bool() ? b.boolean() : b.integer();
      return x == y;
    }
    return as_double(a) == as_double(b);
  }
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  const NestingGuard guard;
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    if (a.tuple != b.tuple || a.list().size() != b.list().size()) return false;
    for (size_t i = 0; i < a.list().size(); ++i) {
      if (!equal(a.list()[i], b.list()[i])) return false;
    }
    return true;
  }
  if (a.is_dict()) {
    const Dict& x = a.dict();
    const Dict& y = b.dict();
    if (x.is_namespace || y.is_namespace) return &x == &y;
    if (x.items.size() != y.items.size()) return false;
    for (const auto& [k, val] : x.items) {
      const Value* other = y.find(k);
      if (!other || !equal(val, *other)) return false;
    }
    return true;
  }
  return &a.function() == &b.function();
}

bool less(const Value& a, const Value& b, bool* ok) {
  *ok = true;
  if (a.is_number() && b.is_number()) {
    if (!a.is_float() && !b.is_float()) {
      const int64_t x = a.is_bool() ? a.boolean() : a.integer();
      const int64_t y = b.is_bool() ? b.boolean() : b.integer();
      return x < y;
    }
    return as_double(a) < as_double(b);
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 byte order is code point order
  if (a.is_list() && b.is_list()) {
    const NestingGuard guard;
    const List& x = a.list();
    const List& y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (equal(x[i], y[i])) continue;
      return less(x[i], y[i], ok);
    }
    return x.size() < y.size();
  }
  *ok = false;
  return false;
}

namespace {

void json_string(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

bool json_value(const Value& v, int indent, int level, std::string& out, std::string* err) {
  const auto newline = [&](int lvl) {
    if (indent < 0) return;
    out.push_back('\n');
    out.append(static_cast<size_t>(indent * lvl), ' ');
  };
  const char* item_sep = indent >= 0 ? "," : ", ";
  const NestingGuard guard;
  if (v.is_none()) {
    out += "null";
  } else if (v.is_bool()) {
    out += v.boolean() ? "true" : "false";
  } else if (v.is_int()) {
    out += std::to_string(v.integer());
  } else if (v.is_float()) {
    const double d = std::get<double>(v.v);
    out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : format_float(d);
  } else if (v.is_string()) {
    json_string(v.str(), out);
  } else if (v.is_list()) {
    const List& l = v.list();
    if (l.empty()) {
      out += "[]";
      return true;
    }
    out += '[';
    for (size_t i = 0; i < l.size(); ++i) {
      if (i) out += item_sep;
      newline(level + 1);
      if (!json_value(l[i], indent, level + 1, out, err)) return false;
    }
    newline(level);
    out += ']';
  } else if (v.is_dict() && !v.dict().is_namespace) {
    const Dict& d = v.dict();
    if (d.items.empty()) {
      out += "{}";
      return true;
    }
    out += '{';
    for (size_t i = 0; i < d.items.size(); ++i) {
      if (i) out += item_sep;
      newline(level + 1);
      json_string(d.items[i].first, out);
      out += ": ";
      if (!json_value(d.items[i].second, indent, level + 1, out, err)) return false;
    }
    newline(level);
    out += '}';
  } else {
    *err = type_name(v);
    return false;
  }
  return true;
}

}  // namespace

bool to_json_text(const Value& v, int indent, std::string& out, std::string* err) {
  return json_value(v, indent, 0, out, err);
}

std::u32string utf8_decode(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
      out += U'\uFFFD';
      ++i;
      continue;
    }
    char32_t cp = n == 1 ? b : b & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out += cp;
    i += n;
  }
  return out;
}

std::string utf8_encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

// Python's str.isspace() for one code point (what strip(), split() and jinja2's trim remove).
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

}  // namespace qlora::data::jinja
