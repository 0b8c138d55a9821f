// Fuzz target: a chat template's Jinja source (the interpreter of data/jinja*.cpp), parsed and rendered with a
// conversation as transformers' apply_chat_template passes it (messages with a tool call and a tool turn, tools,
// the special tokens, add_generation_prompt). Templates come from model folders, so this input is untrusted too.
#include <string>

#include "data/jinja.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const nlohmann::ordered_json kContext = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are terse."},
      {"role": "user", "content": "What is 2+2? <b>&amp;</b>"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function":
        {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
      {"role": "tool", "content": "4", "name": "add"},
      {"role": "assistant", "content": "4", "reasoning_content": "easy"},
      {"role": "user", "content": [{"type": "text", "text": "thanks"}]}
    ],
    "tools": [{"type": "function", "function": {"name": "add", "description": "adds", "parameters":
      {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "number"}}, "required": ["a"]}}}],
    "documents": null,
    "add_generation_prompt": true,
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"
  })");
  // Limits below the defaults keep one input well inside libFuzzer's timeout; the bounds themselves are what is
  // under test (a template must not get past them), not their size.
  const data::JinjaLimits limits{.max_depth = 200, .max_loop_iterations = 100'000, .max_output_bytes = 1 << 20};
  fuzz::run_reader([&] {
    const data::JinjaTemplate t(std::string(fuzz::as_view(data, size)), "fuzz.jinja", limits);
    (void)t.render(kContext);
  });
  return 0;
}
