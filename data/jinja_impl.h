// The Jinja interpreter's parts (data/jinja.h is the API): values (jinja_value.cpp), lexer (jinja_lexer.cpp),
// parser (jinja_parser.cpp), evaluator (jinja_eval.cpp), filters, tests, methods and globals (jinja_builtins.cpp).
// Private to data/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "data/jinja.h"

namespace qlora::data::jinja {

// ---- values -------------------------------------------------------------------------------------------------

struct Value;
struct Interp;
using List = std::vector<Value>;
struct Dict;
// The deleters of every list and dict: freeing a value frees what it holds in a loop, not in a recursion as deep as
// the value (a loop can wrap a list a million times), so a deep value never overflows the stack when it goes.
void free_list(const List* l);
void free_dict(Dict* d);

struct Undefined {
  std::string name;  // what was looked up, for error messages
};
struct None {};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python dicts
  bool is_namespace = false;                         // namespace(): the one mutable object ({% set ns.x = %})
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Function {
  std::string name;
  std::function<Value(Interp&, Args&)> call;
};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<const List>, std::shared_ptr<Dict>,
               std::shared_ptr<const Function>>
      v;
  bool tuple = false;  // a list that is a Python tuple: prints as (a, b), never equal to a list

  Value() = default;
  Value(Undefined u) : v(std::move(u)) {}
  Value(None n) : v(n) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(int64_t{i}) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(List l) : v(std::shared_ptr<const List>(new List(std::move(l)), free_list)) {}
  Value(std::shared_ptr<Dict> d) : v(std::move(d)) {}
  Value(std::shared_ptr<const Function> f) : v(std::move(f)) {}

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }  // bool is not int here
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<const List>>(v); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(v); }
  bool is_function() const { return std::holds_alternative<std::shared_ptr<const Function>>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  const List& list() const { return *std::get<std::shared_ptr<const List>>(v); }
  Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(v); }
  const Function& function() const { return *std::get<std::shared_ptr<const Function>>(v); }
  bool boolean() const { return std::get<bool>(v); }
  int64_t integer() const { return std::get<int64_t>(v); }
};

Value make_dict(std::vector<std::pair<std::string, Value>> items = {});
Value from_json(const nlohmann::ordered_json& j);

const char* type_name(const Value& v);  // Python's type names: str, int, list, dict, NoneType, Undefined, ...
bool truthy(const Value& v);
double as_double(const Value& v);     // int, float or bool
std::string to_str(const Value& v);   // Python str(); Undefined -> ""
std::string to_repr(const Value& v);  // Python repr()
// The recursive walks over a value (repr, ==, <, JSON) go at most this deep: deeper values come only from a loop
// that keeps wrapping a value or a namespace that holds itself (Python: RecursionError, or "{...}"). Past it they
// throw ValueTooDeep, which render() reports as a JinjaError at the current line (never a stack overflow).
constexpr int kMaxValueNesting = 512;
struct ValueTooDeep {};
std::string format_float(double d);  // Python repr of a float: 1.0, 0.1, 1e-05, inf
bool equal(const Value& a, const Value& b);
// Python's <: numbers, strings (code point order), lists; anything else returns false with *ok = false.
bool less(const Value& a, const Value& b, bool* ok);
// json.dumps(v, ensure_ascii=False, indent=indent, separators=None, sort_keys=False); indent < 0: none.
// Returns false (and the offending type in *err) for values JSON cannot hold (Undefined, functions).
bool to_json_text(const Value& v, int indent, std::string& out, std::string* err);

// UTF-8 helpers: Python counts and slices strings by code point.
std::u32string utf8_decode(const std::string& s);
std::string utf8_encode(const std::u32string& s);
bool is_python_space(char32_t c);
bool is_ascii(const std::string& s);

// ---- syntax -------------------------------------------------------------------------------------------------

struct Token {
  enum class Kind { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };
  Kind kind = Kind::kEof;
  std::string text;  // text / name / unescaped string / operator / number digits
  int line = 1;
};

// jinja2's lexer with trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False.
std::vector<Token> tokenize(const std::string& source, const std::string& name);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // value
    kName,     // name
    kList,     // args (name "tuple": a tuple)
    kDict,     // kwargs-like pairs in `pairs`
    kAttr,     // args[0] . name
    kItem,     // args[0] [ args[1] ]
    kSlice,    // args[0] [ args[1] : args[2] : args[3] ] (null: omitted)
    kCall,     // args[0] ( args[1..], kwargs )
    kFilter,   // name: filter applied to args[0] with args[1..], kwargs
    kTest,     // args[0] is [not] name (args[1..])
    kUnary,    // name: "-", "+", "not"
    kBinary,   // name: operator (and, or, +, -, *, /, //, %, **, ~, ==, !=, <, <=, >, >=, in, notin)
    kCond,     // args[1] if args[0] else args[2] (args[2] null: undefined)
  };
  Kind kind = Kind::kLiteral;
  int line = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::pair<ExprPtr, ExprPtr>> pairs;  // kDict
  bool negated = false;                            // kTest
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Macro {
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default null: required
  Body body;
};

struct Stmt {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kCallBlock, kFilterBlock, kBreak, kContinue };
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;                                      // kText
  ExprPtr expr;                                          // kOutput, kFor iterable, kSet value, kCallBlock call
  std::vector<std::pair<ExprPtr, Body>> branches;        // kIf: condition (null for else) and body
  std::vector<std::string> targets;                      // kFor / kSet names (several: tuple unpacking)
  std::string attr;                                      // kSet: `set ns.attr = ...` (targets[0] is ns)
  ExprPtr cond;                                          // kFor: `if` filter
  Body body;                                             // kFor, kSetBlock, kCallBlock, kFilterBlock
  Body else_body;                                        // kFor
  std::shared_ptr<const Macro> macro;                    // kMacro, kCallBlock (the caller)
  std::vector<std::pair<std::string, ExprPtr>> filters;  // kFilterBlock / kSetBlock filters (name, call expr)
};

struct Program {
  Body body;
};

Program parse(const std::vector<Token>& tokens, const std::string& name, int max_depth);

// ---- evaluation ---------------------------------------------------------------------------------------------

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  const Value* find(const std::string& name) const;
  void set(const std::string& name, Value v);
};

struct Interp {
  const std::string& name;  // template name, for messages
  const JinjaLimits& limits;
  std::vector<Frame> frames;  // frames[0]: globals and context; one more per loop iteration / macro call
  size_t macro_base = 0;      // lookups inside a macro skip the caller's frames between 1 and macro_base
  int depth = 0;
  int64_t iterations = 0;
  int line = 0;  // the line being evaluated

  [[noreturn]] void fail(const std::string& what) const;
  void check_size(size_t bytes) const;
};

Value call_filter(Interp& in, const std::string& name, Value subject, Args& args);
bool call_test(Interp& in, const std::string& name, const Value& subject, Args& args);
// obj.name: a method of a str / dict / list, or an item of a dict (jinja2's getattr: attribute first).
Value get_attr(Interp& in, const Value& obj, const std::string& name);
// obj[key]: item first, then attribute (jinja2's getitem).
Value get_item(Interp& in, const Value& obj, const Value& key);
Value slice_value(Interp& in, const Value& obj, const Value& start, const Value& stop, const Value& step);
void add_globals(Frame& frame);
// str methods (jinja_builtins.cpp) and the string helpers filters share with them (jinja_methods.cpp).
Value string_method(Interp& in, const std::string& s, const std::string& name);
std::string strip_string(const std::string& s, const Value* chars, bool left, bool right);
List split_string(Interp& in, const std::string& s, const Value* sep, int64_t maxsplit);
std::string replace_string(const std::string& s, const std::string& old, const std::string& rep, int64_t count);
std::string ascii_case(std::string s, bool upper);
std::string format_string(Interp& in, const std::string& fmt, Args& a);
// The items a for loop or a filter iterates: list items, dict keys, string characters; Undefined: none.
List iterate(Interp& in, const Value& v);
Value call_value(Interp& in, const Value& callee, Args& args);

}  // namespace qlora::data::jinja
