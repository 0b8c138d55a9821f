// Fuzz target: a model folder's tokenizer_config.json (special tokens, added_tokens_decoder, add_bos/eos_token,
// chat_template as a string or a list), read by both of its readers: BpeTokenizer::load (next to a fixed small
// tokenizer.json) and load_model_chat_template, whose template is then rendered for generation and for training.
#include <string>

#include "data/chat_template.h"
#include "fuzz/fuzz_util.h"
#include "tokenizer/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::string kTokenizerJson =
      fuzz::read_file_bytes(fuzz::source_dir() / "fuzz" / "seeds" / "bpe_tokenizer" / "tiny_bytelevel.json");
  static const nlohmann::ordered_json kMessages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <s> there"},
    {"role": "assistant", "content": "Hello</s>"}, {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye!"}])");
  const fuzz::fs::path dir = fuzz::work_dir() / "model";
  fuzz::fs::create_directories(dir);
  fuzz::write_file(dir / "tokenizer.json", kTokenizerJson);
  fuzz::write_file(dir / "tokenizer_config.json", fuzz::as_view(data, size));
  fuzz::run_reader([&] {
    const auto tok = tokenizer::BpeTokenizer::load(dir);
    (void)tok->encode("Hi <s> there</s>", true, true);
    (void)tok->chat_template();
  });
  fuzz::run_reader([&] {
    data::ModelChatTemplate t = data::load_model_chat_template(dir);
    if (t.empty()) return;
    const data::JinjaLimits limits{.max_depth = 200, .max_loop_iterations = 100'000, .max_output_bytes = 1 << 20};
    const data::ChatTemplateRenderer r(std::move(t), limits);
    (void)r.render(kMessages, nullptr, /*add_generation_prompt=*/true);
    try {
      (void)r.render_for_training(kMessages, nullptr);
    } catch (const data::BadRecord&) {  // the template refused the conversation: a documented outcome
    }
  });
  return 0;
}
