// The Jinja parser's class, shared by its two files: statements (jinja_parser.cpp) and expressions
// (jinja_expr.cpp). Private to data/.
#pragma once

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "data/jinja_impl.h"

namespace qlora::data::jinja {

using TK = Token::Kind;

class Parser {
 public:
  Parser(const std::vector<Token>& toks, const std::string& name, int max_depth)
      : toks_(toks), name_(name), max_depth_(max_depth) {}

  Program parse_program() {
    Program p;
    std::string end;
    p.body = parse_body({}, &end);
    return p;
  }

 private:
  const std::vector<Token>& toks_;
  const std::string& name_;
  int max_depth_;
  size_t i_ = 0;
  int depth_ = 0;

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > p.max_depth_) p.fail("nesting deeper than " + std::to_string(p.max_depth_) + " levels");
    }
    ~DepthGuard() { --p.depth_; }
  };

  [[noreturn]] void fail(const std::string& what) const {
    throw JinjaError(name_ + ":" + std::to_string(cur().line) + ": template syntax error: " + what +
                     "\nHINT: the chat template is not valid Jinja (or uses syntax this interpreter does not have)");
  }
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().kind == TK::kOp && cur().text == op; }
  bool is_name(const char* n) const { return cur().kind == TK::kName && cur().text == n; }
  void next() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(std::string("expected '") + op + "', got " + describe(cur()));
    next();
  }
  std::string expect_name() {
    if (cur().kind != TK::kName) fail("expected a name, got " + describe(cur()));
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() {
    if (cur().kind != TK::kBlockEnd) fail("expected the end of the tag (%}), got " + describe(cur()));
    next();
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case TK::kEof:
        return "the end of the template";
      case TK::kBlockEnd:
        return "'%}'";
      case TK::kVarEnd:
        return "'}}'";
      case TK::kString:
        return "a string";
      default:
        return "'" + t.text + "'";
    }
  }

  ExprPtr node(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // statements (jinja_parser.cpp)
  Body parse_body(const std::set<std::string>& ends, std::string* end);
  void parse_statement(const std::string& tag, Body& body);
  void parse_if(Stmt& s);
  void parse_for(Stmt& s);
  void parse_set(Stmt& s);
  void parse_filter_chain(Stmt& s);
  std::vector<std::pair<std::string, ExprPtr>> parse_params();
  void parse_macro(Stmt& s);
  void parse_call_block(Stmt& s);

  // expressions (jinja_expr.cpp)
  ExprPtr parse_tuple(bool with_condexpr);
  ExprPtr parse_expression();
  ExprPtr binary(const std::string& op, ExprPtr l, ExprPtr r, int line);
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_math1();
  ExprPtr parse_concat();
  ExprPtr parse_math2();
  ExprPtr parse_pow();
  ExprPtr parse_unary(bool with_filter);
  ExprPtr parse_primary();
  ExprPtr parse_postfix(ExprPtr e);
  ExprPtr parse_filter_expr(ExprPtr e);
  ExprPtr parse_subscript(ExprPtr e);
  void parse_call_args(Expr& call);
};

}  // namespace qlora::data::jinja
