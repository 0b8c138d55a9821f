// Attribute and item access, slicing, iteration, and the str / dict / list methods chat templates call, with
// jinja2's lookup rules: obj.name tries the attribute (a method) first, then the item; obj[key] the item first,
// then the attribute; a miss is Undefined, and only access on an Undefined itself is an error. Methods that
// would modify a list or dict are refused, as transformers' ImmutableSandboxedEnvironment refuses them.
#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

namespace {

Value bound(const std::string& name, std::function<Value(Interp&, Args&)> fn) {
  auto f = std::make_shared<Function>();
  f->name = name;
  f->call = std::move(fn);
  return Value(std::shared_ptr<const Function>(std::move(f)));
}

const Value* arg(Args& a, size_t pos, const char* kw) {
  for (const auto& [k, v] : a.kw) {
    if (k == kw) return &v;
  }
  return pos < a.pos.size() ? &a.pos[pos] : nullptr;
}

bool in_set(char32_t c, const std::u32string& chars) {
  return chars.find(c) != std::u32string::npos;
}

}  // namespace

// Python's str.strip / lstrip / rstrip; chars null: whitespace.
std::string strip_string(const std::string& s, const Value* chars, bool left, bool right) {
  const std::u32string u = utf8_decode(s);
  const bool ws = !chars || chars->is_none() || chars->is_undefined();
  const std::u32string set = ws ? U"" : utf8_decode(to_str(*chars));
  size_t b = 0, e = u.size();
  const auto strip = [&](char32_t c) { return ws ? is_python_space(c) : in_set(c, set); };
  while (left && b < e && strip(u[b])) ++b;
  while (right && e > b && strip(u[e - 1])) --e;
  if (is_ascii(s)) return s.substr(b, e - b);
  return utf8_encode(u.substr(b, e - b));
}

// Python's str.split(sep=None, maxsplit=-1).
List split_string(Interp& in, const std::string& s, const Value* sep, int64_t maxsplit) {
  List out;
  if (!sep || sep->is_none()) {
    const std::u32string u = utf8_decode(s);
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && is_python_space(u[i])) ++i;
      if (i == u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = u.size();
        while (e > i && is_python_space(u[e - 1])) --e;
        out.emplace_back(utf8_encode(u.substr(i, e - i)));
        break;
      }
      size_t j = i;
      while (j < u.size() && !is_python_space(u[j])) ++j;
      out.emplace_back(utf8_encode(u.substr(i, j - i)));
      i = j;
    }
    return out;
  }
  const std::string d = to_str(*sep);
  if (d.empty()) in.fail("split(): empty separator");
  size_t start = 0;
  while (true) {
    const size_t p = s.find(d, start);
    if (p == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) break;
    out.emplace_back(s.substr(start, p - start));
    start = p + d.size();
  }
  out.emplace_back(s.substr(start));
  return out;
}

std::string replace_string(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  if (old.empty()) {
    // Python inserts `rep` between characters (and at both ends); templates do not use it, keep it simple
    std::string out = rep;
    for (const char32_t c : utf8_decode(s)) out += utf8_encode(std::u32string(1, c)) + rep;
    return out;
  }
  std::string out;
  size_t start = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out += s.substr(start, p - start) + rep;
    start = p + old.size();
    ++n;
  }
  return out + s.substr(start);
}

std::string ascii_case(std::string s, bool upper) {
  for (char& c : s) {
    if (upper && c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    if (!upper && c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  }
  return s;
}

// Python's str.format with {} / {0} / {name} fields (no format specs).
std::string format_string(Interp& in, const std::string& fmt, Args& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if ((c == '{' || c == '}') && i + 1 < fmt.size() && fmt[i + 1] == c) {
      out += c;
      ++i;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t close = fmt.find('}', i);
    if (close == std::string::npos) in.fail("format(): unclosed '{'");
    const std::string field = fmt.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!.[") != std::string::npos) in.fail("format(): field {" + field + "} is not supported");
    const Value* v = nullptr;
    if (field.empty()) {
      v = auto_index < a.pos.size() ? &a.pos[auto_index++] : nullptr;
    } else if (std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      const size_t k = std::stoul(field);
      v = k < a.pos.size() ? &a.pos[k] : nullptr;
    } else {
      v = arg(a, a.pos.size(), field.c_str());
    }
    if (!v) in.fail("format(): no argument for {" + field + "}");
    out += to_str(*v);
    i = close;
  }
  return out;
}

namespace {

Value dict_method(const Value& obj, const std::string& name) {
  if (name == "items") {
    return bound(name, [obj](Interp&, Args&) {
      List l;
      for (const auto& [k, v] : obj.dict().items) {
        Value pair(List{Value(k), v});
        pair.tuple = true;
        l.push_back(std::move(pair));
      }
      return Value(std::move(l));
    });
  }
  if (name == "keys" || name == "values") {
    const bool keys = name == "keys";
    return bound(name, [obj, keys](Interp&, Args&) {
      List l;
      for (const auto& [k, v] : obj.dict().items) l.push_back(keys ? Value(k) : v);
      return Value(std::move(l));
    });
  }
  if (name == "get") {
    return bound(name, [obj](Interp& in, Args& a) {
      const Value* k = arg(a, 0, "key");
      if (!k) in.fail("get() needs a key");
      const Value* v = k->is_string() ? obj.dict().find(k->str()) : nullptr;
      if (v) return *v;
      const Value* def = arg(a, 1, "default");
      return def ? *def : Value(None{});
    });
  }
  static const std::set<std::string> kMutating = {"update", "pop", "popitem", "setdefault", "clear"};
  if (kMutating.count(name)) {
    return bound(name, [name](Interp& in, Args&) -> Value {
      in.fail("dict." + name + "() is not allowed: chat templates run in an immutable sandbox");
    });
  }
  return Value(Undefined{name});
}

Value list_method(const Value& obj, const std::string& name) {
  if (name == "index" || name == "count") {
    const bool index = name == "index";
    return bound(name, [obj, index](Interp& in, Args& a) {
      if (a.pos.empty()) in.fail("list method needs an argument");
      int64_t n = 0;
      for (size_t k = 0; k < obj.list().size(); ++k) {
        if (!equal(obj.list()[k], a.pos[0])) continue;
        if (index) return Value(static_cast<int64_t>(k));
        ++n;
      }
      if (index) in.fail(to_repr(a.pos[0]) + " is not in list");
      return Value(n);
    });
  }
  static const std::set<std::string> kMutating = {"append", "extend", "insert",  "pop",
                                                  "remove", "sort",   "reverse", "clear"};
  if (kMutating.count(name)) {
    return bound(name, [name](Interp& in, Args&) -> Value {
      in.fail("list." + name + "() is not allowed: chat templates run in an immutable sandbox");
    });
  }
  return Value(Undefined{name});
}

[[noreturn]] void undefined_access(Interp& in, const Value& obj, const std::string& what) {
  in.fail("'" + std::get<Undefined>(obj.v).name + "' is undefined (accessing " + what + ")");
}

}  // namespace

Value get_attr(Interp& in, const Value& obj, const std::string& name) {
  if (obj.is_undefined()) undefined_access(in, obj, "." + name);
  if (obj.is_dict()) {
    if (!obj.dict().is_namespace) {
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
    }
    const Value* v = obj.dict().find(name);
    return v ? *v : Value(Undefined{name});
  }
  if (obj.is_string()) return string_method(in, obj.str(), name);
  if (obj.is_list()) return list_method(obj, name);
  return Value(Undefined{name});
}

namespace {

// "[i]", for the name of an Undefined (snprintf: GCC 12 -O3 warns falsely on "[" + std::to_string(i)).
std::string index_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "[%lld]", static_cast<long long>(i));
  return buf;
}

// Python index normalization; false when out of range.
bool normalize_index(int64_t& i, size_t n) {
  if (i < 0) i += static_cast<int64_t>(n);
  return i >= 0 && i < static_cast<int64_t>(n);
}

}  // namespace

Value get_item(Interp& in, const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_access(in, obj, "[" + to_repr(key) + "]");
  if (obj.is_dict()) {
    if (key.is_string()) {
      const Value* v = obj.dict().find(key.str());
      if (v) return *v;
      return obj.dict().is_namespace ? Value(Undefined{key.str()}) : dict_method(obj, key.str());
    }
    return Value(Undefined{to_repr(key)});
  }
  if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.is_bool() ? key.boolean() : key.integer();
    if (obj.is_list()) {
      if (!normalize_index(i, obj.list().size())) return Value(Undefined{index_name(i)});
      return obj.list()[static_cast<size_t>(i)];
    }
    const std::u32string u = utf8_decode(obj.str());
    if (!normalize_index(i, u.size())) return Value(Undefined{index_name(i)});
    return Value(utf8_encode(u.substr(static_cast<size_t>(i), 1)));
  }
  if (key.is_string()) return get_attr(in, obj, key.str());
  return Value(Undefined{to_repr(key)});
}

Value slice_value(Interp& in, const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_access(in, obj, "a slice");
  const auto as_int = [&](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (v.is_int()) return v.integer();
    if (v.is_bool()) return int64_t{v.boolean()};
    in.fail(std::string("slice ") + what + " must be an integer or none, got " + type_name(v));
  };
  const int64_t st = as_int(step, "step").value_or(1);
  if (st == 0) in.fail("slice step cannot be zero");
  const bool is_str = obj.is_string();
  if (!is_str && !obj.is_list()) in.fail(std::string("'") + type_name(obj) + "' object is not subscriptable");
  const std::u32string u = is_str ? utf8_decode(obj.str()) : std::u32string();
  const auto n = static_cast<int64_t>(is_str ? u.size() : obj.list().size());
  // Python's PySlice_AdjustIndices
  const auto adjust = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = st < 0 ? -1 : 0;
    } else if (x >= n) {
      x = st < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t b = adjust(as_int(start, "start"), st < 0 ? n - 1 : 0);
  const int64_t e = adjust(as_int(stop, "stop"), st < 0 ? -1 : n);
  std::u32string s;
  List l;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (is_str) {
      s += u[static_cast<size_t>(i)];
    } else {
      l.push_back(obj.list()[static_cast<size_t>(i)]);
    }
  }
  return is_str ? Value(utf8_encode(s)) : Value(std::move(l));
}

List iterate(Interp& in, const Value& v) {
  if (v.is_list()) return v.list();
  if (v.is_undefined()) return {};
  if (v.is_dict() && !v.dict().is_namespace) {
    List keys;
    for (const auto& [k, x] : v.dict().items) keys.emplace_back(k);
    return keys;
  }
  if (v.is_string()) {
    List chars;
    for (const char32_t c : utf8_decode(v.str())) chars.emplace_back(utf8_encode(std::u32string(1, c)));
    return chars;
  }
  in.fail(std::string("'") + type_name(v) + "' object is not iterable");
}

}  // namespace qlora::data::jinja
