// qlora-eval: mean token loss and perplexity of a Llama model on a text file. The last stdout line is
// `loss <mean> ppl <perplexity> tokens <n>`.
//
//   qlora-eval --model models/tiny --data data/valid.txt [--max-seq-len 512] [--quant nf4|fp4|none]
#include <spdlog/spdlog.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "apps/app_main.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "model/evaluate.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace {

// Documents are paragraphs (separated by blank lines); a file without blank lines is one document per line.
std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> paras, lines;
  std::istringstream in(text);
  std::string line, cur;
  bool blank_seen = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      blank_seen = true;
      if (!cur.empty()) paras.push_back(cur);
      cur.clear();
      continue;
    }
    lines.push_back(line);
    cur += (cur.empty() ? "" : "\n") + line;
  }
  if (!cur.empty()) paras.push_back(cur);
  return blank_seen ? paras : lines;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"Evaluate mean loss and perplexity of a Llama model on a text file."};
  std::string model_dir, data, format = "text", quant = "nf4", dtype = "bf16";
  int64_t max_seq_len = 512;
  int threads = 0;
  cli.add_option("--model", model_dir, "HF model folder")->required();
  cli.add_option("--data", data, "evaluation file")->required();
  cli.add_option("--format", format, "data format (text: paragraphs, or lines when no blank lines)")
      ->capture_default_str();
  cli.add_option("--max-seq-len", max_seq_len, "window length in tokens")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  cli.add_option("--quant", quant, "base weights: 4-bit type or none")
      ->check(CLI::IsMember(qlora::quant::quant_option_names()))
      ->capture_default_str();
  cli.add_option("--dtype", dtype, "compute dtype")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}))
      ->capture_default_str();
  cli.add_option("--threads", threads, "CPU threads (0 = all cores)")->capture_default_str();

  return qlora::app::run(cli, argc, argv, [&] {
    if (format != "text") {
      throw qlora::Error("--format " + format + ": only 'text' is supported by qlora-eval for now" +
                         "\nHINT: alpaca/chat formats will come through the data pipeline; use --format text.");
    }
    qlora::configure_threads(threads);
    const std::string text = qlora::read_file(data);
    auto docs_text = split_documents(text);
    if (docs_text.empty()) throw qlora::Error(data + ": no text to evaluate (the file is empty)");
    qlora::model::LoadOptions lo;
    lo.compute_dtype = dtype == "fp32" ? torch::kFloat32 : dtype == "fp16" ? torch::kFloat16 : torch::kBFloat16;
    lo.quant = qlora::quant::parse_quant_option(quant);
    auto model = qlora::model::load_model(model_dir, lo);
    auto tok = qlora::tokenizer::load_tokenizer(model_dir);
    std::vector<std::vector<int64_t>> docs;
    for (const auto& d : docs_text) {
      auto ids = tok->encode(d, /*add_bos=*/true, /*add_eos=*/true);
      docs.emplace_back(ids.begin(), ids.end());
    }
    const auto r = qlora::model::evaluate_documents(*model, docs, max_seq_len);
    if (r.tokens == 0) throw qlora::Error(data + ": no token to predict (documents too short)");
    std::printf("documents %zu\n", docs.size());
    std::printf("loss %.4f ppl %.2f tokens %lld\n", r.mean_loss(), r.perplexity(), static_cast<long long>(r.tokens));
    return 0;
  });
}
