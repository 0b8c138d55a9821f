// The Jinja parser, statements: tokens -> the statement tree ({% if %}, {% for %}, {% set %}, macros, ...);
// expressions are parsed in jinja_expr.cpp.
#include "data/jinja_parser_impl.h"

namespace qlora::data::jinja {

// ---- statements ----

// Statements until one of `ends` (a block tag name) or EOF; *end gets the tag that stopped it.
Body Parser::parse_body(const std::set<std::string>& ends, std::string* end) {
  DepthGuard g(*this);
  Body body;
  while (true) {
    const Token& t = cur();
    if (t.kind == TK::kEof) {
      if (!ends.empty()) {
        std::string want = *ends.begin();
        for (const auto& e : ends) {
          if (e.rfind("end", 0) == 0) want = e;
        }
        fail("unexpected end of template, expected {% " + want + " %}");
      }
      *end = "";
      return body;
    }
    if (t.kind == TK::kText) {
      auto s = std::make_unique<Stmt>();
      s->kind = Stmt::Kind::kText;
      s->line = t.line;
      s->text = t.text;
      body.push_back(std::move(s));
      next();
    } else if (t.kind == TK::kVarBegin) {
      auto s = std::make_unique<Stmt>();
      s->kind = Stmt::Kind::kOutput;
      s->line = t.line;
      next();
      s->expr = parse_tuple(true);
      if (cur().kind != TK::kVarEnd) fail("expected '}}', got " + describe(cur()));
      next();
      body.push_back(std::move(s));
    } else if (t.kind == TK::kBlockBegin) {
      next();
      if (cur().kind != TK::kName) fail("expected a tag name after {%");
      const std::string tag = cur().text;
      if (ends.count(tag)) {
        next();
        *end = tag;
        return body;
      }
      parse_statement(tag, body);
    } else {
      fail("unexpected " + describe(t));
    }
  }
}

void Parser::parse_statement(const std::string& tag, Body& body) {
  const int line = cur().line;
  next();
  auto s = std::make_unique<Stmt>();
  s->line = line;
  if (tag == "if") {
    parse_if(*s);
  } else if (tag == "for") {
    parse_for(*s);
  } else if (tag == "set") {
    parse_set(*s);
  } else if (tag == "macro") {
    parse_macro(*s);
  } else if (tag == "call") {
    parse_call_block(*s);
  } else if (tag == "filter") {
    s->kind = Stmt::Kind::kFilterBlock;
    parse_filter_chain(*s);
    expect_block_end();
    std::string end;
    s->body = parse_body({"endfilter"}, &end);
    expect_block_end();
  } else if (tag == "break" || tag == "continue") {
    s->kind = tag == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
    expect_block_end();
  } else if (tag == "generation") {
    // transformers' AssistantTracker: renders its body unchanged.
    expect_block_end();
    std::string end;
    Body inner = parse_body({"endgeneration"}, &end);
    expect_block_end();
    for (auto& st : inner) body.push_back(std::move(st));
    return;
  } else {
    i_ -= 1;
    fail("the tag {% " + tag + " %} is not supported" +
         (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif" ? " here (no open block it closes)" : ""));
  }
  body.push_back(std::move(s));
}

void Parser::parse_if(Stmt& s) {
  s.kind = Stmt::Kind::kIf;
  ExprPtr cond = parse_expression();
  expect_block_end();
  while (true) {
    std::string end;
    Body b = parse_body({"elif", "else", "endif"}, &end);
    s.branches.emplace_back(std::move(cond), std::move(b));
    if (end == "elif") {
      cond = parse_expression();
      expect_block_end();
    } else if (end == "else") {
      expect_block_end();
      Body eb = parse_body({"endif"}, &end);
      s.branches.emplace_back(nullptr, std::move(eb));
      expect_block_end();
      return;
    } else {
      expect_block_end();
      return;
    }
  }
}

void Parser::parse_for(Stmt& s) {
  s.kind = Stmt::Kind::kFor;
  s.targets.push_back(expect_name());
  while (is_op(",")) {
    next();
    s.targets.push_back(expect_name());
  }
  if (!is_name("in")) fail("expected 'in' in the for loop, got " + describe(cur()));
  next();
  s.expr = parse_tuple(false);
  if (is_name("if")) {
    next();
    s.cond = parse_expression();
  }
  if (is_name("recursive")) fail("recursive for loops are not supported");
  expect_block_end();
  std::string end;
  s.body = parse_body({"else", "endfor"}, &end);
  expect_block_end();
  if (end == "else") {
    s.else_body = parse_body({"endfor"}, &end);
    expect_block_end();
  }
}

void Parser::parse_set(Stmt& s) {
  s.targets.push_back(expect_name());
  if (is_op(".")) {
    next();
    s.attr = expect_name();
  } else {
    while (is_op(",")) {
      next();
      s.targets.push_back(expect_name());
    }
  }
  if (is_op("=")) {
    next();
    s.kind = Stmt::Kind::kSet;
    s.expr = parse_tuple(true);
    expect_block_end();
    return;
  }
  if (!s.attr.empty() || s.targets.size() != 1) fail("a {% set %} block assigns one plain name");
  s.kind = Stmt::Kind::kSetBlock;
  if (is_op("|")) parse_filter_chain(s);
  expect_block_end();
  std::string end;
  s.body = parse_body({"endset"}, &end);
  expect_block_end();
}

// `name(args) | name2 ...` after {% filter %} or {% set x | ... %}: each filter as a kFilter expr on a null subject.
void Parser::parse_filter_chain(Stmt& s) {
  if (is_op("|")) next();
  while (true) {
    const int line = cur().line;
    std::string fname = expect_name();
    ExprPtr f = node(Expr::Kind::kFilter, line);
    f->name = fname;
    f->args.push_back(nullptr);
    if (is_op("(")) parse_call_args(*f);
    s.filters.emplace_back(fname, std::move(f));
    if (!is_op("|")) break;
    next();
  }
}

std::vector<std::pair<std::string, ExprPtr>> Parser::parse_params() {
  std::vector<std::pair<std::string, ExprPtr>> params;
  expect_op("(");
  while (!is_op(")")) {
    if (!params.empty()) expect_op(",");
    if (is_op(")")) break;
    std::string p = expect_name();
    ExprPtr def;
    if (is_op("=")) {
      next();
      def = parse_expression();
    }
    params.emplace_back(std::move(p), std::move(def));
  }
  next();
  return params;
}

void Parser::parse_macro(Stmt& s) {
  s.kind = Stmt::Kind::kMacro;
  auto m = std::make_shared<Macro>();
  m->name = expect_name();
  m->params = parse_params();
  expect_block_end();
  std::string end;
  m->body = parse_body({"endmacro"}, &end);
  expect_block_end();
  s.macro = std::move(m);
}

void Parser::parse_call_block(Stmt& s) {
  s.kind = Stmt::Kind::kCallBlock;
  auto caller = std::make_shared<Macro>();
  caller->name = "caller";
  if (is_op("(")) caller->params = parse_params();
  s.expr = parse_expression();
  if (s.expr->kind != Expr::Kind::kCall) fail("{% call %} needs a macro call");
  expect_block_end();
  std::string end;
  caller->body = parse_body({"endcall"}, &end);
  expect_block_end();
  s.macro = std::move(caller);
}

Program parse(const std::vector<Token>& tokens, const std::string& name, int max_depth) {
  return Parser(tokens, name, max_depth).parse_program();
}

}  // namespace qlora::data::jinja
