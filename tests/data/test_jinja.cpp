// The Jinja interpreter's own contract: errors that name the template, line and construct; the limits that stop a
// hostile template; Python's number formatting. Its rendering is checked against jinja2 itself in
// tests/interop_chat/check_jinja.py (label interop); the expected strings here are what jinja2 renders.
#include <gtest/gtest.h>

#include <string>

#include "data/jinja.h"
#include "data/jinja_impl.h"

namespace qlora::data {
namespace {

using ojson = nlohmann::ordered_json;

std::string render(const std::string& tmpl, const ojson& ctx = ojson::object(), JinjaLimits limits = {}) {
  return JinjaTemplate(tmpl, "t.jinja", limits).render(ctx);
}

std::string error_of(const std::string& tmpl, const ojson& ctx = ojson::object(), JinjaLimits limits = {}) {
  try {
    render(tmpl, ctx, limits);
  } catch (const JinjaError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Jinja, RendersWithTransformersWhitespaceSettings) {
  // trim_blocks drops the newline after a tag, lstrip_blocks the indentation before it; one trailing newline goes.
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc\n"), "a\n  b\nc");
  EXPECT_EQ(render("{{- ' x ' -}}  \n {{ 'y' }}"), " x y");
  const ojson ctx = {{"messages", {{{"role", "user"}, {"content", " hi "}}}}};
  EXPECT_EQ(render("{% for m in messages %}<{{ m.role }}>{{ m['content'] | trim }}{% endfor %}", ctx), "<user>hi");
}

TEST(Jinja, PythonValueFormatting) {
  EXPECT_EQ(render("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 7 // -2 }} {{ -7 % 3 }}"),
            "1.0 0.30000000000000004 1e+20 1e-05 -4 2");
  EXPECT_EQ(render("{{ [1, 'a', none, true] }} {{ {'k': 'v'} }} {{ (1,) }}"), "[1, 'a', None, True] {'k': 'v'} (1,)");
  EXPECT_EQ(render("{{ {'b': 1, 'a': '<é>'} | tojson }}"), "{\"b\": 1, \"a\": \"<é>\"}");
}

TEST(Jinja, NamespaceAndLoopScoping) {
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% set x = 'out' %}{% for i in range(3) %}{% set ns.n = ns.n + i %}"
                   "{% set x = 'in' %}{% endfor %}{{ ns.n }} {{ x }}"),
            "3 out");
}

TEST(Jinja, ErrorsNameTemplateLineAndConstruct) {
  EXPECT_EQ(error_of("line1\n{{ x | frobnicate }}"),
            "t.jinja:2: the filter 'frobnicate' is not supported\nHINT: the chat template failed on this input; check "
            "the record against the template, or pick a built-in data.template");
  EXPECT_NE(
      error_of("a\n\n{% include 'other.jinja' %}").find("t.jinja:3: template syntax error: the tag {% include %}"),
      std::string::npos);
  EXPECT_NE(error_of("{% if x %}open").find("expected {% endif %}"), std::string::npos);
  EXPECT_NE(error_of("{{ missing.attr }}").find("'missing' is undefined"), std::string::npos);
}

TEST(Jinja, RaiseExceptionIsItsOwnType) {
  try {
    render("\n{{ raise_exception('roles must alternate') }}");
    FAIL() << "no exception";
  } catch (const JinjaRaised& e) {
    EXPECT_STREQ(e.what(), "t.jinja:2: the chat template refused the input: roles must alternate");
  }
}

TEST(Jinja, LimitsStopHostileTemplates) {
  JinjaLimits small;
  small.max_loop_iterations = 1000;
  small.max_output_bytes = 1 << 16;
  small.max_depth = 50;
  EXPECT_NE(
      error_of("{% for i in range(100) %}{% for j in range(100) %}x{% endfor %}{% endfor %}", ojson::object(), small)
          .find("more than 1000 loop iterations"),
      std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000 }}", ojson::object(), small).find("output larger than"), std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(200, '(') + "1" + std::string(200, ')') + " }}", ojson::object(), small)
                .find("nesting deeper"),
            std::string::npos);
  // A macro calling itself forever stops at the depth limit instead of overflowing the stack.
  EXPECT_NE(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", ojson::object(), small).find("nesting deeper"),
            std::string::npos);
  EXPECT_NE(error_of("{{ range(1000000) | length }}").find("range() too big"), std::string::npos);
  // Doubling a list or a string through a namespace stops at the output limit, not at the memory's end.
  EXPECT_NE(error_of("{% set ns = namespace(l=[1], s='ab') %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}"
                     "{% endfor %}",
                     ojson::object(), small)
                .find("output larger than"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s|replace('a', 'aa') %}"
                     "{% endfor %}",
                     ojson::object(), small)
                .find("output larger than"),
            std::string::npos);
}

TEST(Jinja, FloatReprMatchesPython) {
  // repr() of floats (Python 3): shortest round trip, exponent outside [1e-4, 1e16).
  EXPECT_EQ(jinja::format_float(123456789012345678.0), "1.2345678901234568e+17");
  EXPECT_EQ(jinja::format_float(1e16), "1e+16");
  EXPECT_EQ(jinja::format_float(9999999999999998.0), "9999999999999998.0");
  EXPECT_EQ(jinja::format_float(0.0001), "0.0001");
  EXPECT_EQ(jinja::format_float(-2.5), "-2.5");
}

}  // namespace
}  // namespace qlora::data
