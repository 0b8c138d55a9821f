// The Jinja parser, expressions, with jinja2's grammar and precedence (jinja2/parser.py): inline if < or < and <
// not < comparisons (chained) < + - < ~ < * / // % < ** < unary - + < postfix (. [] ()) and filters / tests (| is),
// which bind tightest.
#include "data/jinja_parser_impl.h"

namespace qlora::data::jinja {

// ---- expressions ----

// Comma-separated expressions; more than one (or a trailing comma) makes a tuple (a list here).
ExprPtr Parser::parse_tuple(bool with_condexpr) {
  const int line = cur().line;
  ExprPtr first = with_condexpr ? parse_expression() : parse_or();
  if (!is_op(",")) return first;
  ExprPtr t = node(Expr::Kind::kList, line);
  t->name = "tuple";
  t->args.push_back(std::move(first));
  while (is_op(",")) {
    next();
    if (cur().kind == TK::kBlockEnd || cur().kind == TK::kVarEnd || is_op(")") || is_name("if")) break;
    t->args.push_back(with_condexpr ? parse_expression() : parse_or());
  }
  return t;
}

ExprPtr Parser::parse_expression() {
  DepthGuard g(*this);
  const int line = cur().line;
  ExprPtr e = parse_or();
  while (is_name("if")) {
    next();
    ExprPtr c = node(Expr::Kind::kCond, line);
    ExprPtr test = parse_or();
    ExprPtr other;
    if (is_name("else")) {
      next();
      other = parse_expression();
    }
    c->args.push_back(std::move(test));
    c->args.push_back(std::move(e));
    c->args.push_back(std::move(other));
    e = std::move(c);
  }
  return e;
}

ExprPtr Parser::binary(const std::string& op, ExprPtr l, ExprPtr r, int line) {
  ExprPtr b = node(Expr::Kind::kBinary, line);
  b->name = op;
  b->args.push_back(std::move(l));
  b->args.push_back(std::move(r));
  return b;
}

ExprPtr Parser::parse_or() {
  const int line = cur().line;
  ExprPtr l = parse_and();
  while (is_name("or")) {
    next();
    l = binary("or", std::move(l), parse_and(), line);
  }
  return l;
}

ExprPtr Parser::parse_and() {
  const int line = cur().line;
  ExprPtr l = parse_not();
  while (is_name("and")) {
    next();
    l = binary("and", std::move(l), parse_not(), line);
  }
  return l;
}

ExprPtr Parser::parse_not() {
  DepthGuard g(*this);
  if (is_name("not")) {
    const int line = cur().line;
    next();
    ExprPtr u = node(Expr::Kind::kUnary, line);
    u->name = "not";
    u->args.push_back(parse_not());
    return u;
  }
  return parse_compare();
}

// a < b < c is (a < b) and (b < c); the middle operand is evaluated twice (it has no side effects here).
ExprPtr Parser::parse_compare() {
  const int line = cur().line;
  ExprPtr l = parse_math1();
  ExprPtr result;
  static const std::set<std::string> kOps = {"==", "!=", "<", "<=", ">", ">="};
  while (true) {
    std::string op;
    if (cur().kind == TK::kOp && kOps.count(cur().text)) {
      op = cur().text;
      next();
    } else if (is_name("in")) {
      op = "in";
      next();
    } else if (is_name("not") && peek().kind == TK::kName && peek().text == "in") {
      op = "notin";
      next();
      next();
    } else {
      break;
    }
    const size_t mark = i_;
    ExprPtr r = parse_math1();
    ExprPtr cmp = binary(op, std::move(l), std::move(r), line);
    result = result ? binary("and", std::move(result), std::move(cmp), line) : std::move(cmp);
    // the right operand is the next comparison's left one: parse it again from the same tokens
    const size_t after = i_;
    i_ = mark;
    l = parse_math1();
    i_ = after;
  }
  return result ? std::move(result) : std::move(l);
}

ExprPtr Parser::parse_math1() {
  const int line = cur().line;
  ExprPtr l = parse_concat();
  while (is_op("+") || is_op("-")) {
    const std::string op = cur().text;
    next();
    l = binary(op, std::move(l), parse_concat(), line);
  }
  return l;
}

ExprPtr Parser::parse_concat() {
  const int line = cur().line;
  ExprPtr l = parse_math2();
  while (is_op("~")) {
    next();
    l = binary("~", std::move(l), parse_math2(), line);
  }
  return l;
}

ExprPtr Parser::parse_math2() {
  const int line = cur().line;
  ExprPtr l = parse_pow();
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    const std::string op = cur().text;
    next();
    l = binary(op, std::move(l), parse_pow(), line);
  }
  return l;
}

ExprPtr Parser::parse_pow() {
  const int line = cur().line;
  ExprPtr l = parse_unary(true);
  while (is_op("**")) {
    next();
    l = binary("**", std::move(l), parse_unary(true), line);
  }
  return l;
}

ExprPtr Parser::parse_unary(bool with_filter) {
  DepthGuard g(*this);
  const int line = cur().line;
  ExprPtr e;
  if (is_op("-") || is_op("+")) {
    e = node(Expr::Kind::kUnary, line);
    e->name = cur().text;
    next();
    e->args.push_back(parse_unary(false));
  } else {
    e = parse_primary();
  }
  e = parse_postfix(std::move(e));
  if (with_filter) e = parse_filter_expr(std::move(e));
  return e;
}

ExprPtr Parser::parse_primary() {
  const Token& t = cur();
  const int line = t.line;
  ExprPtr e = node(Expr::Kind::kLiteral, line);
  if (t.kind == TK::kName) {
    const std::string& n = t.text;
    if (n == "true" || n == "True") {
      e->value = Value(true);
    } else if (n == "false" || n == "False") {
      e->value = Value(false);
    } else if (n == "none" || n == "None") {
      e->value = Value(None{});
    } else {
      e->kind = Expr::Kind::kName;
      e->name = n;
    }
    next();
  } else if (t.kind == TK::kString) {
    std::string s;
    while (cur().kind == TK::kString) {  // adjacent literals concatenate
      s += cur().text;
      next();
    }
    e->value = Value(std::move(s));
  } else if (t.kind == TK::kInt) {
    try {
      e->value = Value(static_cast<int64_t>(std::stoll(t.text)));
    } catch (const std::out_of_range&) {
      fail("integer literal " + t.text + " is out of range");
    }
    next();
  } else if (t.kind == TK::kFloat) {
    e->value = Value(std::stod(t.text));
    next();
  } else if (is_op("(")) {
    next();
    if (is_op(")")) {
      next();
      e->kind = Expr::Kind::kList;
      e->name = "tuple";
      return e;
    }
    ExprPtr inner = parse_tuple(true);
    expect_op(")");
    return inner;
  } else if (is_op("[")) {
    next();
    e->kind = Expr::Kind::kList;
    while (!is_op("]")) {
      if (!e->args.empty()) expect_op(",");
      if (is_op("]")) break;
      e->args.push_back(parse_expression());
    }
    next();
  } else if (is_op("{")) {
    next();
    e->kind = Expr::Kind::kDict;
    while (!is_op("}")) {
      if (!e->pairs.empty()) expect_op(",");
      if (is_op("}")) break;
      ExprPtr k = parse_expression();
      expect_op(":");
      e->pairs.emplace_back(std::move(k), parse_expression());
    }
    next();
  } else {
    fail("unexpected " + describe(t) + " in an expression");
  }
  return e;
}

ExprPtr Parser::parse_postfix(ExprPtr e) {
  while (true) {
    if (is_op(".") || is_op("[")) {
      e = parse_subscript(std::move(e));
    } else if (is_op("(")) {
      ExprPtr c = node(Expr::Kind::kCall, cur().line);
      c->args.push_back(std::move(e));
      parse_call_args(*c);
      e = std::move(c);
    } else {
      return e;
    }
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr e) {
  while (true) {
    const int line = cur().line;
    if (is_op("|")) {
      next();
      ExprPtr f = node(Expr::Kind::kFilter, line);
      f->name = expect_name();
      while (is_op(".")) {
        next();
        f->name.append(".").append(expect_name());
      }
      f->args.push_back(std::move(e));
      if (is_op("(")) parse_call_args(*f);
      e = std::move(f);
    } else if (is_name("is")) {
      next();
      ExprPtr t = node(Expr::Kind::kTest, line);
      if (is_name("not")) {
        t->negated = true;
        next();
      }
      t->name = expect_name();
      t->args.push_back(std::move(e));
      const TK k = cur().kind;
      if (is_op("(")) {
        parse_call_args(*t);
      } else if ((k == TK::kName || k == TK::kString || k == TK::kInt || k == TK::kFloat || is_op("[") || is_op("{")) &&
                 !is_name("else") && !is_name("or") && !is_name("and")) {
        if (is_name("is")) fail("tests cannot be chained with 'is'");
        t->args.push_back(parse_postfix(parse_primary()));
      }
      e = std::move(t);
    } else if (is_op("(")) {
      ExprPtr c = node(Expr::Kind::kCall, line);
      c->args.push_back(std::move(e));
      parse_call_args(*c);
      e = std::move(c);
    } else {
      return e;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr e) {
  const int line = cur().line;
  if (is_op(".")) {
    next();
    if (cur().kind == TK::kInt) {
      ExprPtr item = node(Expr::Kind::kItem, line);
      ExprPtr idx = node(Expr::Kind::kLiteral, line);
      try {
        idx->value = Value(static_cast<int64_t>(std::stoll(cur().text)));
      } catch (const std::out_of_range&) {
        fail("integer index ." + cur().text + " is out of range");
      }
      next();
      item->args.push_back(std::move(e));
      item->args.push_back(std::move(idx));
      return item;
    }
    ExprPtr a = node(Expr::Kind::kAttr, line);
    a->name = expect_name();
    a->args.push_back(std::move(e));
    return a;
  }
  next();  // [
  ExprPtr parts[3];
  int colons = 0;
  while (!is_op("]")) {
    if (is_op(":")) {
      if (++colons > 2) fail("too many ':' in a slice");
      next();
      continue;
    }
    if (parts[colons]) fail("expected ']' or ':' in a subscript, got " + describe(cur()));
    parts[colons] = parse_expression();
    if (is_op(",")) fail("tuple subscripts are not supported");
  }
  next();
  if (colons == 0) {
    if (!parts[0]) fail("empty subscript []");
    ExprPtr item = node(Expr::Kind::kItem, line);
    item->args.push_back(std::move(e));
    item->args.push_back(std::move(parts[0]));
    return item;
  }
  ExprPtr s = node(Expr::Kind::kSlice, line);
  s->args.push_back(std::move(e));
  for (auto& p : parts) s->args.push_back(std::move(p));
  return s;
}

void Parser::parse_call_args(Expr& call) {
  expect_op("(");
  bool first = true;
  while (!is_op(")")) {
    if (!first) expect_op(",");
    first = false;
    if (is_op(")")) break;
    if (is_op("*") || is_op("**")) fail("*args and **kwargs in calls are not supported");
    if (cur().kind == TK::kName && peek().kind == TK::kOp && peek().text == "=") {
      std::string key = cur().text;
      next();
      next();
      call.kwargs.emplace_back(std::move(key), parse_expression());
    } else {
      if (!call.kwargs.empty()) fail("a positional argument follows a keyword argument");
      call.args.push_back(parse_expression());
    }
  }
  next();
}

}  // namespace qlora::data::jinja
