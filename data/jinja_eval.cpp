// The Jinja evaluator: statements render into a string, expressions evaluate to Values (Python semantics,
// jinja_value.cpp). Scoping follows jinja2: a for-loop body and a macro call get their own frame (a `set`
// inside does not leak out, hence namespace()); if-blocks do not. Macros see their own frame and the
// template's top level, not their caller's loop variables.
#include <cmath>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

const Value* Frame::find(const std::string& name) const {
  for (const auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Frame::set(const std::string& name, Value v) {
  for (auto& [k, old] : vars) {
    if (k == name) {
      old = std::move(v);
      return;
    }
  }
  vars.emplace_back(name, std::move(v));
}

void Interp::fail(const std::string& what) const {
  throw JinjaError(name + ":" + std::to_string(line) + ": " + what +
                   "\nHINT: the chat template failed on this input; check the record against the template, or pick "
                   "a built-in data.template");
}

void Interp::check_size(size_t bytes) const {
  if (static_cast<int64_t>(bytes) > limits.max_output_bytes) {
    fail("output larger than " + std::to_string(limits.max_output_bytes) + " bytes");
  }
}

namespace {

enum class Flow { kNormal, kBreak, kContinue };

struct Eval {
  Interp& in;

  struct Depth {
    Interp& in;
    explicit Depth(Interp& i) : in(i) {
      if (++in.depth > in.limits.max_depth) in.fail("nesting deeper than " + std::to_string(in.limits.max_depth));
    }
    ~Depth() { --in.depth; }
  };

  Value lookup(const std::string& name) const {
    for (size_t k = in.frames.size(); k-- > 0;) {
      if (k > 0 && k < in.macro_base) continue;
      if (const Value* v = in.frames[k].find(name)) return *v;
    }
    return Value(Undefined{name});
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t k = first; k < e.args.size(); ++k) a.pos.push_back(e.args[k] ? eval(*e.args[k]) : Value());
    for (const auto& [key, x] : e.kwargs) a.kw.emplace_back(key, eval(*x));
    return a;
  }

  Value eval(const Expr& e) {
    Depth d(in);
    in.line = e.line;
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList: {
        List l;
        for (const auto& x : e.args) l.push_back(eval(*x));
        Value v(std::move(l));
        v.tuple = e.name == "tuple";
        return v;
      }
      case Expr::Kind::kDict: {
        Value d = make_dict();
        for (const auto& [k, v] : e.pairs) {
          Value key = eval(*k);
          if (!key.is_string()) in.fail("dict keys must be strings here, got " + std::string(type_name(key)));
          d.dict().set(key.str(), eval(*v));
        }
        return d;
      }
      case Expr::Kind::kAttr:
        return get_attr(in, eval(*e.args[0]), e.name);
      case Expr::Kind::kItem: {
        Value obj = eval(*e.args[0]);
        return get_item(in, obj, eval(*e.args[1]));
      }
      case Expr::Kind::kSlice: {
        Value obj = eval(*e.args[0]);
        Value parts[3];
        for (int k = 0; k < 3; ++k) parts[k] = e.args[1 + k] ? eval(*e.args[1 + k]) : Value(None{});
        return slice_value(in, obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Kind::kCall: {
        Value callee = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        in.line = e.line;
        return checked(call_value(in, callee, a));
      }
      case Expr::Kind::kFilter: {
        Value subject = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        in.line = e.line;
        return checked(call_filter(in, e.name, std::move(subject), a));
      }
      case Expr::Kind::kTest: {
        Value subject = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        in.line = e.line;
        return Value(call_test(in, e.name, subject, a) != e.negated);
      }
      case Expr::Kind::kUnary:
        return unary(e.name, eval(*e.args[0]));
      case Expr::Kind::kBinary:
        return binary(e);
      case Expr::Kind::kCond:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value(Undefined{"(inline if without else)"});
    }
    return Value();
  }

  // The result of a filter, method or macro: strings and lists count against the output limit (a list element as
  // the size of a Value), so that repeated doubling through filters stops there.
  Value checked(Value v) {
    if (v.is_string()) in.check_size(v.str().size());
    if (v.is_list()) in.check_size(v.list().size() * sizeof(Value));
    return v;
  }

  Value unary(const std::string& op, const Value& v) {
    if (op == "not") return Value(!truthy(v));
    if (v.is_int()) return op == "-" ? Value(-v.integer()) : v;
    if (v.is_bool()) return Value(static_cast<int64_t>(op == "-" ? -int(v.boolean()) : int(v.boolean())));
    if (v.is_float()) return op == "-" ? Value(-std::get<double>(v.v)) : v;
    in.fail("bad operand type for unary " + op + ": '" + type_name(v) + "'");
  }

  [[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
    in.fail("unsupported operand types for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and" || op == "or") {
      Value l = eval(*e.args[0]);
      if (truthy(l) == (op == "or")) return l;
      return eval(*e.args[1]);
    }
    Value a = eval(*e.args[0]);
    Value b = eval(*e.args[1]);
    in.line = e.line;
    if (op == "~") {
      std::string s = to_str(a) + to_str(b);
      in.check_size(s.size());
      return Value(std::move(s));
    }
    if (op == "==") return Value(equal(a, b));
    if (op == "!=") return Value(!equal(a, b));
    if (op == "<" || op == ">" || op == "<=" || op == ">=") return compare(op, a, b);
    if (op == "in" || op == "notin") return Value(contains(b, a) == (op == "in"));
    return arithmetic(op, a, b);
  }

  Value compare(const std::string& op, const Value& a, const Value& b) {
    bool ok = true;
    bool r = false;
    if (op == "<") r = less(a, b, &ok);
    if (op == ">") r = less(b, a, &ok);
    if (op == "<=") r = !less(b, a, &ok);
    if (op == ">=") r = !less(a, b, &ok);
    if (!ok) in.fail("'" + op + "' not supported between '" + type_name(a) + "' and '" + type_name(b) + "'");
    return Value(r);
  }

  bool contains(const Value& hay, const Value& needle) {
    if (hay.is_string()) {
      if (!needle.is_string()) in.fail("'in <string>' requires a string as left operand, not " + to_repr(needle));
      return hay.str().find(needle.str()) != std::string::npos;
    }
    if (hay.is_list()) {
      for (const auto& x : hay.list()) {
        if (equal(x, needle)) return true;
      }
      return false;
    }
    if (hay.is_dict()) return needle.is_string() && hay.dict().find(needle.str()) != nullptr;
    if (hay.is_undefined()) return false;
    in.fail(std::string("argument of type '") + type_name(hay) + "' is not iterable");
  }

  Value arithmetic(const std::string& op, const Value& a, const Value& b);
  Value repeat(const Value& seq, int64_t n);

  // ---- statements ----

  Flow exec(const Body& body, std::string& out) {
    Depth d(in);
    for (const auto& s : body) {
      const Flow f = exec_one(*s, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  void emit(std::string& out, const std::string& text) {
    out += text;
    in.check_size(out.size());
  }

  Flow exec_one(const Stmt& s, std::string& out) {
    in.line = s.line;
    switch (s.kind) {
      case Stmt::Kind::kText:
        emit(out, s.text);
        return Flow::kNormal;
      case Stmt::Kind::kOutput:
        emit(out, to_str(eval(*s.expr)));
        return Flow::kNormal;
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (!cond || truthy(eval(*cond))) return exec(body, out);
        }
        return Flow::kNormal;
      case Stmt::Kind::kFor:
        exec_for(s, out);
        return Flow::kNormal;
      case Stmt::Kind::kSet:
        exec_set(s, eval(*s.expr));
        return Flow::kNormal;
      case Stmt::Kind::kSetBlock: {
        std::string text;
        exec(s.body, text);
        exec_set(s, apply_filters(s, Value(std::move(text))));
        return Flow::kNormal;
      }
      case Stmt::Kind::kFilterBlock: {
        std::string text;
        exec(s.body, text);
        emit(out, to_str(apply_filters(s, Value(std::move(text)))));
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        in.frames.back().set(s.macro->name, make_macro(s.macro));
        return Flow::kNormal;
      case Stmt::Kind::kCallBlock:
        emit(out, to_str(exec_call_block(s)));
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  Value apply_filters(const Stmt& s, Value v) {
    for (const auto& [name, f] : s.filters) {
      Args a = eval_args(*f, 1);
      v = call_filter(in, name, std::move(v), a);
    }
    return v;
  }

  void exec_set(const Stmt& s, Value v) {
    if (!s.attr.empty()) {
      Value ns = lookup(s.targets[0]);
      if (!ns.is_dict() || !ns.dict().is_namespace) {
        in.fail("cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
      }
      if (s.attr[0] == '_') in.fail("namespace attributes cannot start with '_': " + s.attr);
      ns.dict().set(s.attr, std::move(v));
      return;
    }
    if (s.targets.size() == 1) {
      in.frames.back().set(s.targets[0], std::move(v));
      return;
    }
    List items = iterate(in, v);
    if (items.size() != s.targets.size()) {
      in.fail("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(s.targets.size()));
    }
    for (size_t k = 0; k < items.size(); ++k) in.frames.back().set(s.targets[k], items[k]);
  }

  void bind_targets(const Stmt& s, Frame& f, const Value& item) {
    if (s.targets.size() == 1) {
      f.set(s.targets[0], item);
      return;
    }
    List parts = iterate(in, item);
    if (parts.size() != s.targets.size()) {
      in.fail("cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(s.targets.size()));
    }
    for (size_t k = 0; k < parts.size(); ++k) f.set(s.targets[k], parts[k]);
  }

  void exec_for(const Stmt& s, std::string& out) {
    List items = iterate(in, eval(*s.expr));
    if (s.cond) {
      List kept;
      for (auto& item : items) {
        in.frames.emplace_back();
        bind_targets(s, in.frames.back(), item);
        const bool keep = truthy(eval(*s.cond));
        in.frames.pop_back();
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      if (++in.iterations > in.limits.max_loop_iterations) {
        in.fail("more than " + std::to_string(in.limits.max_loop_iterations) + " loop iterations");
      }
      in.frames.emplace_back();
      Frame& f = in.frames.back();
      bind_targets(s, f, items[static_cast<size_t>(k)]);
      f.set("loop",
            make_dict({{"index", Value(k + 1)},
                       {"index0", Value(k)},
                       {"revindex", Value(n - k)},
                       {"revindex0", Value(n - k - 1)},
                       {"first", Value(k == 0)},
                       {"last", Value(k == n - 1)},
                       {"length", Value(n)},
                       {"depth", Value(int64_t{1})},
                       {"depth0", Value(int64_t{0})},
                       {"previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value(Undefined{"previtem"})},
                       {"nextitem", k + 1 < n ? items[static_cast<size_t>(k + 1)] : Value(Undefined{"nextitem"})}}));
      const Flow flow = exec(s.body, out);
      in.frames.pop_back();
      if (flow == Flow::kBreak) break;
    }
    if (n == 0) exec(s.else_body, out);
  }

  Value run_macro(const Macro& m, Args& args, const Value& caller) {
    Frame f;
    const size_t np = m.params.size();
    if (args.pos.size() > np) {
      in.fail("macro '" + m.name + "' takes " + std::to_string(np) + " arguments, got " +
              std::to_string(args.pos.size()));
    }
    for (const auto& [key, v] : args.kw) {
      bool known = key == "caller";
      for (const auto& p : m.params) known = known || p.first == key;
      if (!known) in.fail("macro '" + m.name + "' has no parameter '" + key + "'");
    }
    const size_t saved_base = in.macro_base;
    in.frames.emplace_back();
    in.macro_base = in.frames.size() - 1;
    for (size_t k = 0; k < np; ++k) {
      Value v;
      bool have = false;
      if (k < args.pos.size()) {
        v = args.pos[k];
        have = true;
      }
      for (const auto& [key, kv] : args.kw) {
        if (key == m.params[k].first) {
          v = kv;
          have = true;
        }
      }
      if (!have) v = m.params[k].second ? eval(*m.params[k].second) : Value(Undefined{m.params[k].first});
      in.frames.back().set(m.params[k].first, std::move(v));
    }
    if (!caller.is_undefined()) in.frames.back().set("caller", caller);
    std::string out;
    exec(m.body, out);
    in.frames.pop_back();
    in.macro_base = saved_base;
    return Value(std::move(out));
  }

  Value make_macro(std::shared_ptr<const Macro> m) {
    auto f = std::make_shared<Function>();
    f->name = m->name;
    f->call = [m](Interp& i, Args& a) {
      Value caller(Undefined{"caller"});
      for (const auto& [k, v] : a.kw) {
        if (k == "caller") caller = v;
      }
      return Eval{i}.run_macro(*m, a, caller);
    };
    return Value(std::shared_ptr<const Function>(std::move(f)));
  }

  Value exec_call_block(const Stmt& s) {
    const Expr& call = *s.expr;
    Value callee = eval(*call.args[0]);
    Args a = eval_args(call, 1);
    a.kw.emplace_back("caller", make_macro(s.macro));
    return call_value(in, callee, a);
  }
};

Value Eval::repeat(const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value(std::string()) : Value(List{});
  if (seq.is_string()) {
    in.check_size(seq.str().size() * static_cast<size_t>(n));
    std::string s;
    for (int64_t k = 0; k < n; ++k) s += seq.str();
    return Value(std::move(s));
  }
  in.check_size(seq.list().size() * static_cast<size_t>(n) * sizeof(Value));
  List l;
  for (int64_t k = 0; k < n; ++k) l.insert(l.end(), seq.list().begin(), seq.list().end());
  return Value(std::move(l));
}

Value Eval::arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      in.check_size(a.str().size() + b.str().size());
      return Value(a.str() + b.str());
    }
    if (a.is_list() && b.is_list()) {
      in.check_size((a.list().size() + b.list().size()) * sizeof(Value));
      List l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value(std::move(l));
    }
  }
  if (op == "*" && (a.is_string() || a.is_list()) && (b.is_int() || b.is_bool()))
    return repeat(a, static_cast<int64_t>(as_double(b)));
  if (op == "*" && (b.is_string() || b.is_list()) && (a.is_int() || a.is_bool()))
    return repeat(b, static_cast<int64_t>(as_double(a)));
  if (!a.is_number() || !b.is_number()) bad_operands(op, a, b);
  const bool ints = !a.is_float() && !b.is_float();
  const double x = as_double(a), y = as_double(b);
  if ((op == "/" || op == "//" || op == "%") && y == 0)
    in.fail(ints ? "integer division or modulo by zero" : "float division by zero");
  if (ints && op != "/" && op != "**") {
    const auto i = static_cast<int64_t>(x), j = static_cast<int64_t>(y);
    if (op == "+") return Value(i + j);
    if (op == "-") return Value(i - j);
    if (op == "*") return Value(i * j);
    const int64_t q = i / j - ((i % j != 0) && ((i < 0) != (j < 0)));  // Python floors
    if (op == "//") return Value(q);
    if (op == "%") return Value(i - q * j);
  }
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "/") return Value(x / y);
  if (op == "//") return Value(std::floor(x / y));
  if (op == "%") return Value(x - std::floor(x / y) * y);
  if (op == "**") {
    if (ints && y >= 0) return Value(static_cast<int64_t>(std::llround(std::pow(x, y))));
    return Value(std::pow(x, y));
  }
  bad_operands(op, a, b);
}

}  // namespace

Value call_value(Interp& in, const Value& callee, Args& args) {
  if (callee.is_function()) return callee.function().call(in, args);
  if (callee.is_undefined()) in.fail("'" + std::get<Undefined>(callee.v).name + "' is undefined (called)");
  in.fail(std::string("'") + type_name(callee) + "' object is not callable");
}

}  // namespace qlora::data::jinja

namespace qlora::data {

JinjaTemplate::JinjaTemplate(const std::string& source, std::string name, JinjaLimits limits)
    : name_(std::move(name)), limits_(limits) {
  program_ = std::make_unique<jinja::Program>(jinja::parse(jinja::tokenize(source, name_), name_, limits_.max_depth));
}

JinjaTemplate::~JinjaTemplate() = default;
JinjaTemplate::JinjaTemplate(JinjaTemplate&&) noexcept = default;
JinjaTemplate& JinjaTemplate::operator=(JinjaTemplate&&) noexcept = default;

std::string JinjaTemplate::render(const nlohmann::ordered_json& context) const {
  jinja::Interp in{name_, limits_, {}, 0, 0, 0, 0};
  in.frames.emplace_back();  // globals, the context and the template's top-level sets
  jinja::add_globals(in.frames[0]);
  if (!context.is_object()) in.fail("the context must be a JSON object");
  for (auto it = context.begin(); it != context.end(); ++it) in.frames[0].set(it.key(), jinja::from_json(it.value()));
  std::string out;
  try {
    jinja::Eval{in}.exec(program_->body, out);
  } catch (const jinja::ValueTooDeep&) {
    in.fail("a value nested deeper than " + std::to_string(jinja::kMaxValueNesting) +
            " levels (a namespace that contains itself, or a loop that keeps wrapping a value)");
  }
  return out;
}

}  // namespace qlora::data
