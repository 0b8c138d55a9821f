// A Jinja interpreter for chat templates: the subset of jinja2 that Hugging Face chat templates use, in the
// environment transformers builds for them (transformers/utils/chat_template_utils.py: an
// ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True, the loopcontrols extension, the
// {% generation %} tag, and the globals raise_exception, strftime_now, namespace, dict; tojson is json.dumps with
// ensure_ascii=False, so it does not escape HTML and keeps key order).
//
//   JinjaTemplate t(source, "Qwen/tokenizer_config.json");          // parses; syntax errors are qlora::Error
//   std::string text = t.render(context);                            // context: a JSON object of variables
//
// Covered: {{ }}, {% %}, {# #}, whitespace control (-, +), if/elif/else, for (loop.index/index0/revindex/
// revindex0/first/last/length/previtem/nextitem, for-else, `for x in y if cond`, tuple targets), break/continue,
// set (including namespace attributes and {% set x %}...{% endset %}), macro and call blocks, filter blocks,
// literals, attribute/item access, slicing, arithmetic, ~, comparisons, in / not in, and/or/not, inline if-else,
// tests, the filters and string/dict methods templates use (data/jinja_builtins.cpp lists them). Values follow
// Python: str() of numbers, lists and dicts as Python prints them, jinja2's default Undefined (renders empty,
// falsy, iterates as empty; attribute or item access on it is an error, as in jinja2).
// Anything outside that (include, extends, import, a filter or method we do not have) is a qlora::Error naming
// the construct and the template line, never a silently different output. Nesting depth, loop iterations and
// output size are bounded (JinjaLimits), so a hostile template cannot crash or hang the process.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace qlora::data {

// A template problem: syntax (at parse time) or evaluation (at render time). The message names the template
// and the line.
class JinjaError : public Error {
 public:
  using Error::Error;
};

// The template called raise_exception(message): the input is one the template refuses (e.g. roles that do not
// alternate). The message names the template and carries the template's own message.
class JinjaRaised : public JinjaError {
 public:
  using JinjaError::JinjaError;
};

struct JinjaLimits {
  int max_depth = 200;                           // nesting of expressions, statements and macro calls
  int64_t max_loop_iterations = 1'000'000;       // for-loop iterations in one render, all loops together
  int64_t max_output_bytes = int64_t{64} << 20;  // rendered text and any string built on the way
};

namespace jinja {
struct Program;
}

class JinjaTemplate {
 public:
  // Parses `source` (a chat template); `name` appears in error messages (e.g. "MODEL/tokenizer_config.json").
  JinjaTemplate(const std::string& source, std::string name, JinjaLimits limits = {});
  ~JinjaTemplate();
  JinjaTemplate(JinjaTemplate&&) noexcept;
  JinjaTemplate& operator=(JinjaTemplate&&) noexcept;

  // Renders with the variables of `context` (a JSON object; key order is kept, as Python dicts keep it).
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  JinjaLimits limits_;
  std::unique_ptr<jinja::Program> program_;
};

}  // namespace qlora::data
