// Filters, tests, str methods and globals: the ones chat templates use, with jinja2's (jinja2/filters.py,
// jinja2/tests.py) and transformers' (tojson, raise_exception, strftime_now, namespace, dict) behaviour.
// Case mapping (upper, lower, title, capitalize) is ASCII-only: other letters keep their case.
// A filter, test or method not listed here is a JinjaError naming it.
#include <algorithm>
#include <ctime>
#include <map>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

namespace {

const Value* arg(Args& a, size_t pos, const char* kw) {
  for (const auto& [k, v] : a.kw) {
    if (k == kw) return &v;
  }
  return pos < a.pos.size() ? &a.pos[pos] : nullptr;
}

int64_t int_arg(Interp& in, Args& a, size_t pos, const char* kw, int64_t def) {
  const Value* v = arg(a, pos, kw);
  if (!v || v->is_none()) return def;
  if (v->is_int()) return v->integer();
  if (v->is_bool()) return v->boolean();
  in.fail(std::string("argument '") + kw + "' must be an integer, got " + type_name(*v));
}

bool bool_arg(Args& a, size_t pos, const char* kw, bool def) {
  const Value* v = arg(a, pos, kw);
  return v ? truthy(*v) : def;
}

Value make_function(const std::string& name, std::function<Value(Interp&, Args&)> fn) {
  auto f = std::make_shared<Function>();
  f->name = name;
  f->call = std::move(fn);
  return Value(std::shared_ptr<const Function>(std::move(f)));
}

int64_t length_of(Interp& in, const Value& v) {
  if (v.is_string()) return static_cast<int64_t>(utf8_decode(v.str()).size());
  if (v.is_list()) return static_cast<int64_t>(v.list().size());
  if (v.is_dict()) return static_cast<int64_t>(v.dict().items.size());
  if (v.is_undefined()) return 0;
  in.fail(std::string("object of type '") + type_name(v) + "' has no len()");
}

// jinja2's title filter: words split at whitespace and - ( { [ <; each word's first letter upper, the rest lower.
std::string title_filter(const std::string& s) {
  std::string out = ascii_case(s, false);
  bool start = true;
  for (char& c : out) {
    const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || c == ' ' || (c >= 0x09 && c <= 0x0D);
    if (start && !sep && c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    start = sep;
  }
  return out;
}

// Python's str.title(): a letter after a non-letter is upper, after a letter lower.
std::string title_method(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (char& c : out) {
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (letter) c = prev_letter ? static_cast<char>(std::tolower(c)) : static_cast<char>(std::toupper(c));
    prev_letter = letter || static_cast<unsigned char>(c) >= 0x80;
  }
  return out;
}

std::string capitalize(const std::string& s) {
  std::string out = ascii_case(s, false);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z') out[0] = static_cast<char>(out[0] - 32);
  return out;
}

// Python's str.splitlines() line boundaries.
std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  const std::u32string u = utf8_decode(s);
  std::u32string cur;
  for (size_t i = 0; i < u.size(); ++i) {
    const char32_t c = u[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
                     c == 0x2028 || c == 0x2029;
    if (!brk) {
      cur += c;
      continue;
    }
    if (c == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ++i;
    lines.push_back(utf8_encode(cur));
    cur.clear();
  }
  if (!cur.empty()) lines.push_back(utf8_encode(cur));
  return lines;
}

std::string indent_filter(Interp& in, const std::string& text, Args& a) {
  const Value* w = arg(a, 0, "width");
  const std::string ind =
      w && w->is_string() ? w->str() : std::string(static_cast<size_t>(int_arg(in, a, 0, "width", 4)), ' ');
  const bool first = bool_arg(a, 1, "first", false);
  const bool blank = bool_arg(a, 2, "blank", false);
  std::vector<std::string> lines = split_lines(text + "\n");
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) rv.append("\n").append(ind);
      rv.append(lines[k]);
    }
  } else if (!lines.empty()) {
    rv = lines[0];
    for (size_t k = 1; k < lines.size(); ++k) {
      rv.append("\n");
      if (!lines[k].empty()) rv.append(ind).append(lines[k]);
    }
  }
  return first ? ind + rv : rv;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Value tojson_filter(Interp& in, const Value& v, Args& a) {
  for (const auto& [k, x] : a.kw) {
    if (k == "indent") continue;
    if (k == "ensure_ascii" && !truthy(x)) continue;
    if (k == "sort_keys" && !truthy(x)) continue;
    if (k == "separators" && x.is_none()) continue;
    in.fail("tojson(" + k + "=" + to_repr(x) + ") is not supported");
  }
  const Value* ind = arg(a, 0, "indent");
  int indent = -1;
  if (ind && !ind->is_none()) {
    if (!ind->is_int()) in.fail("tojson(indent=...) must be an integer");
    indent = static_cast<int>(std::clamp<int64_t>(ind->integer(), 0, 64));
  }
  std::string out, err;
  if (!to_json_text(v, indent, out, &err)) in.fail("tojson: Object of type " + err + " is not JSON serializable");
  in.check_size(out.size());
  return Value(std::move(out));
}

// The attribute `name` (dotted: "a.b") of each item, as map(attribute=) and selectattr read it.
Value item_attr(Interp& in, const Value& item, const std::string& name) {
  Value v = item;
  size_t start = 0;
  while (true) {
    const size_t dot = name.find('.', start);
    const std::string part = name.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    v = digits ? get_item(in, v, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(in, v, Value(part));
    if (dot == std::string::npos) return v;
    if (v.is_undefined()) return v;
    start = dot + 1;
  }
}

Value select_filter(Interp& in, const std::string& fname, const Value& seq, Args& a) {
  const bool by_attr = fname == "selectattr" || fname == "rejectattr";
  const bool keep_true = fname == "selectattr" || fname == "select";
  size_t k = 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty() || !a.pos[0].is_string()) in.fail(fname + " needs an attribute name");
    attr = a.pos[k++].str();
  }
  std::string test;
  if (k < a.pos.size()) test = to_str(a.pos[k++]);
  Args targs;
  targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(std::min(k, a.pos.size())), a.pos.end());
  List out;
  for (const auto& item : iterate(in, seq)) {
    const Value v = by_attr ? item_attr(in, item, attr) : item;
    const bool pass = test.empty() ? truthy(v) : call_test(in, test, v, targs);
    if (pass == keep_true) out.push_back(item);
  }
  return Value(std::move(out));
}

Value map_filter(Interp& in, const Value& seq, Args& a) {
  const Value* attr = arg(a, a.pos.size(), "attribute");
  List out;
  if (attr) {
    const Value* def = arg(a, a.pos.size(), "default");
    for (const auto& item : iterate(in, seq)) {
      Value v = item_attr(in, item, to_str(*attr));
      out.push_back(v.is_undefined() && def ? *def : v);
    }
    return Value(std::move(out));
  }
  if (a.pos.empty() || !a.pos[0].is_string()) in.fail("map needs a filter name or attribute=");
  const std::string f = a.pos[0].str();
  Args rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (const auto& item : iterate(in, seq)) {
    Args copy = rest;
    out.push_back(call_filter(in, f, item, copy));
  }
  return Value(std::move(out));
}

Value unique_filter(Interp& in, const Value& seq, Args& a) {
  const bool cs = bool_arg(a, 0, "case_sensitive", false);
  List out;
  std::vector<Value> seen;
  for (const auto& item : iterate(in, seq)) {
    const Value key = (!cs && item.is_string()) ? Value(ascii_case(item.str(), false)) : item;
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value(std::move(out));
}

Value number_filter(const Value& v, Args& a, bool to_int) {
  const Value* def = arg(a, 0, "default");
  const Value fallback = def ? *def : (to_int ? Value(int64_t{0}) : Value(0.0));
  if (v.is_int() || v.is_bool()) return to_int ? Value(static_cast<int64_t>(as_double(v))) : Value(as_double(v));
  if (v.is_float()) return to_int ? Value(static_cast<int64_t>(std::get<double>(v.v))) : v;
  if (!v.is_string()) return fallback;
  const std::string s = strip_string(v.str(), nullptr, true, true);
  try {
    size_t used = 0;
    if (to_int) {
      const long long i = std::stoll(s, &used);
      if (used == s.size()) return Value(static_cast<int64_t>(i));
      const double d = std::stod(s, &used);  // int("1.5") fails in Python, but jinja2's int filter tries float
      if (used == s.size()) return Value(static_cast<int64_t>(d));
    } else {
      const double d = std::stod(s, &used);
      if (used == s.size()) return Value(d);
    }
  } catch (const std::exception&) {
  }
  return fallback;
}

Value sort_filter(Interp& in, const Value& seq, Args& a) {
  const bool reverse = bool_arg(a, 0, "reverse", false);
  const bool cs = bool_arg(a, 1, "case_sensitive", false);
  const Value* attr = arg(a, 2, "attribute");
  List items = iterate(in, seq);
  const auto key = [&](const Value& v) {
    Value k = attr ? item_attr(in, v, to_str(*attr)) : v;
    return (!cs && k.is_string()) ? Value(ascii_case(k.str(), false)) : k;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    bool ok = true;
    const bool r = reverse ? less(key(y), key(x), &ok) : less(key(x), key(y), &ok);
    if (!ok) in.fail("sort: values cannot be compared");
    return r;
  });
  return Value(std::move(items));
}

}  // namespace

// Size: one branch per filter; a table of lambdas would read no better.
Value call_filter(Interp& in, const std::string& name, Value v, Args& a) {
  if (name == "trim") return Value(strip_string(to_str(v), arg(a, 0, "chars"), true, true));
  if (name == "tojson") return tojson_filter(in, v, a);
  if (name == "length" || name == "count") return Value(length_of(in, v));
  if (name == "upper" || name == "lower") return Value(ascii_case(to_str(v), name == "upper"));
  if (name == "title") return Value(title_filter(to_str(v)));
  if (name == "capitalize") return Value(capitalize(to_str(v)));
  if (name == "default" || name == "d") {
    const bool boolean = bool_arg(a, 1, "boolean", false);
    if (v.is_undefined() || (boolean && !truthy(v))) {
      const Value* def = arg(a, 0, "default_value");
      return def ? *def : Value(std::string());
    }
    return v;
  }
  if (name == "join") {
    const Value* sep = arg(a, 0, "d");
    const Value* attr = arg(a, 1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& item : iterate(in, v)) {
      out += (first ? "" : (sep ? to_str(*sep) : "")) + to_str(attr ? item_attr(in, item, to_str(*attr)) : item);
      first = false;
      in.check_size(out.size());
    }
    return Value(std::move(out));
  }
  if (name == "first" || name == "last") {
    List items = iterate(in, v);
    if (items.empty()) return Value(Undefined{name});
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value(iterate(in, v));
  if (name == "map") return map_filter(in, v, a);
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    return select_filter(in, name, v, a);
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = utf8_decode(v.str());
      std::reverse(u.begin(), u.end());
      return Value(utf8_encode(u));
    }
    List items = iterate(in, v);
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "string") return Value(to_str(v));
  if (name == "int" || name == "float") return number_filter(v, a, name == "int");
  if (name == "safe") return v;
  if (name == "e" || name == "escape") return Value(html_escape(to_str(v)));
  if (name == "indent") return Value(indent_filter(in, to_str(v), a));
  if (name == "items") {
    if (v.is_undefined()) return Value(List{});
    if (!v.is_dict()) in.fail(std::string("items: expected a mapping, got ") + type_name(v));
    Args none;
    return call_value(in, get_attr(in, v, "items"), none);
  }
  if (name == "replace") {
    const Value* old = arg(a, 0, "old");
    const Value* rep = arg(a, 1, "new");
    if (!old || !rep) in.fail("replace needs old and new");
    return Value(replace_string(to_str(v), to_str(*old), to_str(*rep), int_arg(in, a, 2, "count", -1)));
  }
  if (name == "unique") return unique_filter(in, v, a);
  if (name == "abs") {
    if (v.is_int()) return Value(v.integer() < 0 ? -v.integer() : v.integer());
    if (v.is_float()) return Value(std::abs(std::get<double>(v.v)));
    in.fail(std::string("abs: bad operand type '") + type_name(v) + "'");
  }
  if (name == "sort") return sort_filter(in, v, a);
  if (name == "sum") {
    Value total = arg(a, 1, "start") ? *arg(a, 1, "start") : Value(int64_t{0});
    const Value* attr = arg(a, 0, "attribute");
    for (const auto& item : iterate(in, v)) {
      const Value x = attr ? item_attr(in, item, to_str(*attr)) : item;
      if (!x.is_number() || !total.is_number()) in.fail("sum: values must be numbers");
      total = (x.is_float() || total.is_float()) ? Value(as_double(total) + as_double(x))
                                                 : Value(static_cast<int64_t>(as_double(total) + as_double(x)));
    }
    return total;
  }
  if (name == "attr") return get_attr(in, v, a.pos.empty() ? "" : to_str(a.pos[0]));
  in.fail("the filter '" + name + "' is not supported");
}

// Size: one branch per test.
bool call_test(Interp& in, const std::string& name, const Value& v, Args& a) {
  const auto other = [&]() -> const Value& {
    if (a.pos.empty()) in.fail("the test '" + name + "' needs an argument");
    return a.pos[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.boolean();
  if (name == "false") return v.is_bool() && !v.boolean();
  if (name == "mapping") return v.is_dict() && !v.dict().is_namespace;
  if (name == "iterable")
    return v.is_string() || v.is_list() || (v.is_dict() && !v.dict().is_namespace) || v.is_undefined();
  if (name == "sequence")
    return v.is_string() || v.is_list() || (v.is_dict() && !v.dict().is_namespace) || v.is_undefined();
  if (name == "callable") return v.is_function();
  if (name == "odd" || name == "even") {
    if (!v.is_int()) in.fail("the test '" + name + "' needs an integer");
    return (v.integer() % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const Value& d = other();
    if (!v.is_int() || !d.is_int() || d.integer() == 0) in.fail("divisibleby needs non-zero integers");
    return v.integer() % d.integer() == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return equal(v, other());
  if (name == "ne" || name == "!=") return !equal(v, other());
  if (name == "lt" || name == "le" || name == "gt" || name == "ge") {
    bool ok = true;
    const bool r = name == "lt"   ? less(v, other(), &ok)
                   : name == "le" ? !less(other(), v, &ok)
                   : name == "gt" ? less(other(), v, &ok)
                                  : !less(v, other(), &ok);
    if (!ok) in.fail("the test '" + name + "' cannot compare these values");
    return r;
  }
  if (name == "in") {
    const Value& seq = other();
    if (seq.is_string()) return v.is_string() && seq.str().find(v.str()) != std::string::npos;
    if (seq.is_dict()) return v.is_string() && seq.dict().find(v.str());
    for (const auto& x : iterate(in, seq)) {
      if (equal(x, v)) return true;
    }
    return false;
  }
  if (name == "lower" || name == "upper") return v.is_string() && ascii_case(v.str(), name == "upper") == v.str();
  if (name == "sameas") return equal(v, other()) && v.v.index() == other().v.index();
  if (name == "escaped") return false;
  in.fail("the test '" + name + "' is not supported");
}

// Size: one branch per str method.
Value string_method(Interp& in, const std::string& s, const std::string& name) {
  const auto fn = [&](std::function<Value(Interp&, Args&)> f) { return make_function("str." + name, std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool l = name != "rstrip", r = name != "lstrip";
    return fn([s, l, r](Interp&, Args& a) { return Value(strip_string(s, arg(a, 0, "chars"), l, r)); });
  }
  if (name == "split") {
    return fn([s](Interp& i, Args& a) {
      return Value(split_string(i, s, arg(a, 0, "sep"), int_arg(i, a, 1, "maxsplit", -1)));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool start = name == "startswith";
    return fn([s, start](Interp& i, Args& a) {
      const Value* p = arg(a, 0, "prefix");
      if (!p) i.fail("startswith/endswith needs an argument");
      List options = p->is_list() ? p->list() : List{*p};
      for (const auto& o : options) {
        const std::string x = to_str(o);
        if (x.size() <= s.size() &&
            (start ? s.compare(0, x.size(), x) : s.compare(s.size() - x.size(), x.size(), x)) == 0)
          return Value(true);
      }
      return Value(false);
    });
  }
  if (name == "upper" || name == "lower") {
    const bool up = name == "upper";
    return fn([s, up](Interp&, Args&) { return Value(ascii_case(s, up)); });
  }
  if (name == "title") return fn([s](Interp&, Args&) { return Value(title_method(s)); });
  if (name == "capitalize") return fn([s](Interp&, Args&) { return Value(capitalize(s)); });
  if (name == "replace") {
    return fn([s](Interp& i, Args& a) {
      if (a.pos.size() < 2) i.fail("replace() needs old and new");
      return Value(replace_string(s, to_str(a.pos[0]), to_str(a.pos[1]), int_arg(i, a, 2, "count", -1)));
    });
  }
  if (name == "format") return fn([s](Interp& i, Args& a) { return Value(format_string(i, s, a)); });
  if (name == "join") {
    return fn([s](Interp& i, Args& a) {
      if (a.pos.empty()) i.fail("join() needs an iterable");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(i, a.pos[0])) {
        out += (first ? "" : s) + to_str(x);
        first = false;
      }
      return Value(std::move(out));
    });
  }
  if (name == "find" || name == "rfind" || name == "count") {
    return fn([s, name](Interp& i, Args& a) {
      if (a.pos.empty()) i.fail(name + "() needs an argument");
      const std::string x = to_str(a.pos[0]);
      if (name == "count") {
        int64_t n = 0;
        for (size_t p = s.find(x); p != std::string::npos && !x.empty(); p = s.find(x, p + x.size())) ++n;
        return Value(x.empty() ? static_cast<int64_t>(utf8_decode(s).size() + 1) : n);
      }
      const size_t p = name == "find" ? s.find(x) : s.rfind(x);
      return Value(p == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_decode(s.substr(0, p)).size()));
    });
  }
  if (name == "splitlines") {
    return fn([s](Interp&, Args&) {
      List l;
      for (auto& line : split_lines(s)) l.emplace_back(std::move(line));
      return Value(std::move(l));
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace") {
    return fn([s, name](Interp&, Args&) {
      if (s.empty()) return Value(false);
      for (unsigned char c : s) {
        const bool ok = name == "isdigit"   ? std::isdigit(c)
                        : name == "isalpha" ? std::isalpha(c)
                        : name == "isalnum" ? std::isalnum(c)
                                            : std::isspace(c);
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  return Value(Undefined{name});
}

void add_globals(Frame& frame) {
  frame.set("range", make_function("range", [](Interp& in, Args& a) {
              if (a.pos.empty() || a.pos.size() > 3) in.fail("range() takes 1 to 3 arguments");
              for (const auto& x : a.pos) {
                if (!x.is_int()) in.fail("range() arguments must be integers");
              }
              const int64_t start = a.pos.size() > 1 ? a.pos[0].integer() : 0;
              const int64_t stop = a.pos.size() > 1 ? a.pos[1].integer() : a.pos[0].integer();
              const int64_t step = a.pos.size() > 2 ? a.pos[2].integer() : 1;
              if (step == 0) in.fail("range() step must not be zero");
              List l;
              for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
                if (l.size() >= 100000) in.fail("range() too big (the sandbox allows 100000 items)");
                l.emplace_back(i);
              }
              return Value(std::move(l));
            }));
  const auto kwargs_dict = [](Interp& in, Args& a, bool ns) {
    Value d = make_dict();
    d.dict().is_namespace = ns;
    for (const auto& p : a.pos) {
      if (!p.is_dict()) in.fail("namespace()/dict() positional argument must be a mapping");
      for (const auto& [k, v] : p.dict().items) d.dict().set(k, v);
    }
    for (const auto& [k, v] : a.kw) {
      if (ns && !k.empty() && k[0] == '_') in.fail("namespace attributes cannot start with '_': " + k);
      d.dict().set(k, v);
    }
    return d;
  };
  frame.set("namespace",
            make_function("namespace", [kwargs_dict](Interp& in, Args& a) { return kwargs_dict(in, a, true); }));
  frame.set("dict", make_function("dict", [kwargs_dict](Interp& in, Args& a) { return kwargs_dict(in, a, false); }));
  frame.set(
      "raise_exception", make_function("raise_exception", [](Interp& in, Args& a) -> Value {
        const std::string msg = a.pos.empty() ? "" : to_str(a.pos[0]);
        throw JinjaRaised(in.name + ":" + std::to_string(in.line) + ": the chat template refused the input: " + msg);
      }));
  frame.set("strftime_now", make_function("strftime_now", [](Interp& in, Args& a) {
              if (a.pos.empty() || !a.pos[0].is_string()) in.fail("strftime_now() needs a format string");
              const std::time_t t = std::time(nullptr);
              std::tm tm{};
              localtime_r(&t, &tm);
              char buf[256];
              const size_t n = std::strftime(buf, sizeof(buf), a.pos[0].str().c_str(), &tm);
              return Value(std::string(buf, n));
            }));
}

}  // namespace qlora::data::jinja
