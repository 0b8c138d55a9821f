// qlora-make-tiny: writes a random-initialised Llama in real HF layout (config.json, model.safetensors in BF16,
// a trained sentencepiece tokenizer.model, generation_config.json) for tests, the CPU demo and benchmarks.
//
//   qlora-make-tiny --out models/tiny [--preset tiny|bench] [--seed N] [--overwrite]
#include <spdlog/spdlog.h>

#include <string>

#include "apps/app_main.h"
#include "common/log.h"
#include "tools/tiny_model.h"

int main(int argc, char** argv) {
  CLI::App cli{"Write a random-initialised Llama model folder (HF layout) for tests, demos and benchmarks."};
  std::string out;
  qlora::tools::TinyModelOptions opts;
  std::string corpus;
  cli.add_option("--out", out, "output model folder (must not exist unless --overwrite)")->required();
  cli.add_option("--preset", opts.preset,
                 "tiny: ~1M params, fast on CPU; tiny-llama3: tiny layers with Meta's Llama 3 tokenizer (128k vocab, "
                 "~16M params); bench: ~125M params")
      ->check(CLI::IsMember({"tiny", "tiny-llama3", "bench"}))
      ->capture_default_str();
  cli.add_option("--seed", opts.seed, "random seed of the weights (same seed, same bytes)")->capture_default_str();
  cli.add_flag("--overwrite", opts.overwrite, "replace an existing output folder");
  cli.add_option("--corpus", corpus, "tokenizer training text (default: assets/tiny_corpus.txt)");
  std::string tokenizer_dir;
  cli.add_option("--tokenizer-dir", tokenizer_dir,
                 "tiny-llama3: folder with Meta's tokenizer.json, tokenizer_config.json, LICENSE, NOTICE "
                 "(default: assets/llama3-tokenizer)");

  return qlora::app::run(cli, argc, argv, [&] {
    if (!corpus.empty()) opts.corpus = corpus;
    if (!tokenizer_dir.empty()) opts.tokenizer_dir = tokenizer_dir;
    const auto report = qlora::tools::make_tiny_model(out, opts);
    const auto& c = report.config;
    spdlog::info("wrote {} preset '{}' (seed {}) to {}", c.architecture, opts.preset, opts.seed, report.dir.string());
    spdlog::info("  {:.2f} M parameters: vocab {} (tokenizer {}), hidden {}, layers {}, heads {}/{} kv, ffn {}",
                 c.num_parameters() / 1e6, c.vocab_size, report.tokenizer_vocab, c.hidden_size, c.num_hidden_layers,
                 c.num_attention_heads, c.num_key_value_heads, c.intermediate_size);
    for (const auto& [name, size] : report.files) {
      spdlog::info("  {:<28} {}", name, qlora::format_bytes(static_cast<double>(size)));
    }
    return 0;
  });
}
