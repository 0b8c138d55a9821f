// Test helper for tests/interop_chat: renders Jinja templates and chat conversations with qlora's interpreter so
// that a Python script can compare them with jinja2 and transformers. Reads JSON lines, writes one JSON line per
// input line ({"error": "..."} when ours fails).
//   render_chat jinja CASES.jsonl             {"template": str, "context": {...}}       -> {"text": str}
//   render_chat chat MODEL_DIR CASES.jsonl    {"messages": [...], "tools": [...]?, "add_generation_prompt": bool}
//                                             -> {"text": str} (rendered as apply_chat_template(tokenize=False));
//                                             with "train": true -> {"text", "ids", "labels", "spans"}
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "data/chat_template.h"
#include "data/jinja.h"
#include "tokenizer/tokenizer.h"

using ojson = nlohmann::ordered_json;

namespace {

ojson run_jinja(const ojson& c) {
  qlora::data::JinjaTemplate t(c.at("template").get<std::string>(), "case");
  return {{"text", t.render(c.at("context"))}};
}

ojson run_chat(const ojson& c, const qlora::data::ChatTemplateRenderer& r, const qlora::tokenizer::Tokenizer* tok) {
  const ojson tools = c.contains("tools") ? c["tools"] : ojson();
  if (!c.value("train", false))
    return {{"text", r.render(c.at("messages"), tools, c.value("add_generation_prompt", false))}};
  const qlora::data::RenderedChat chat = r.render_for_training(c.at("messages"), tools);
  const qlora::data::TokenizedExample ex =
      qlora::data::tokenize_rendered(chat, *tok, r.model_template(), c.value("train_on_prompt", false));
  ojson spans = ojson::array();
  for (const auto& [s, e] : chat.trained) spans.push_back({s, e});
  return {{"text", chat.text}, {"ids", ex.ids}, {"labels", ex.labels}, {"spans", spans}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: render_chat jinja CASES.jsonl | render_chat chat MODEL_DIR CASES.jsonl\n";
    return 2;
  }
  const std::string mode = argv[1];
  std::optional<qlora::data::ChatTemplateRenderer> renderer;
  std::unique_ptr<qlora::tokenizer::Tokenizer> tok;
  if (mode == "chat") {
    renderer.emplace(qlora::data::load_model_chat_template(argv[2]));
    tok = qlora::tokenizer::load_tokenizer(argv[2]);
  }
  std::ifstream in(argv[argc - 1]);
  std::string line;
  while (std::getline(in, line)) {
    ojson out;
    try {
      const ojson c = ojson::parse(line);
      out = mode == "jinja" ? run_jinja(c) : run_chat(c, *renderer, tok.get());
    } catch (const std::exception& e) {
      out = {{"error", e.what()}};
    }
    std::cout << out.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
  }
  return 0;
}
