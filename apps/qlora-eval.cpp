// qlora-eval: mean token loss and perplexity of a Llama model (optionally with a PEFT LoRA adapter) on a data file.
// The last stdout line is `loss <mean> ppl <perplexity> tokens <n>`.
//
//   qlora-eval --model models/tiny --data data/valid.txt                       (plain text, windows of max-seq-len)
//   qlora-eval --model models/tiny --adapter runs/tiny/final --data data/demo/eval.jsonl --format alpaca
//   qlora-eval --model models/tiny --adapter runs/tiny/final --config configs/tiny.yaml   (its data: section, eval
//              split; the loss is then the one qlora-train reports as eval_loss)
// Formats other than plain text go through the trainer's data pipeline (data/data_loader.h): the same files (.jsonl,
// .json arrays, .txt), templates, field mapping and loss masking, so the loss is the mean over the trained tokens.
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <sstream>
#include <string>

#include "apps/app_main.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "data/chat_template.h"
#include "data/data_loader.h"
#include "lora/peft_io.h"
#include "model/compute_dtype.h"
#include "model/evaluate.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Args {
  std::string model_dir, adapter, data, config, format = "text", tmpl, quant = "nf4", dtype = "auto";
  int64_t max_seq_len = 512;
  int64_t batch_size = 4;
  bool batch_size_given = false;
  int threads = 0;
};

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

// Plain text: every token of every document, in windows of max_seq_len.
qlora::model::EvalResult evaluate_text(qlora::model::LlamaModelImpl& model, const qlora::tokenizer::Tokenizer& tok,
                                       const Args& a) {
  auto docs_text = split_documents(qlora::read_file(a.data));
  if (docs_text.empty()) throw qlora::Error(a.data + ": no text to evaluate (the file is empty)");
  std::vector<std::vector<int64_t>> docs;
  for (const auto& d : docs_text) {
    auto ids = tok.encode(d, /*add_bos=*/true, /*add_eos=*/true);
    docs.emplace_back(ids.begin(), ids.end());
  }
  std::printf("file %s format text (windows of %lld tokens) documents %zu\n", a.data.c_str(),
              static_cast<long long>(a.max_seq_len), docs.size());
  return qlora::model::evaluate_documents(model, docs, a.max_seq_len);
}

// The data config: the --config file's data: section, or one made from the flags.
qlora::data::DataConfig make_data_config(const Args& a) {
  qlora::data::DataConfig cfg;
  if (!a.config.empty()) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(a.config);
    } catch (const YAML::Exception& e) {
      qlora::throw_file_error(a.config, std::string("cannot read the config: ") + e.what());
    }
    if (!root["data"]) qlora::throw_file_error(a.config, "no data: section", "give a qlora-train config");
    cfg = qlora::data::parse_data_config(root["data"], a.config);
    if (!a.data.empty()) cfg.eval = {a.data};
    return cfg;
  }
  std::string yaml = "train: '" + a.data + "'\neval: '" + a.data + "'\nformat: " + a.format +
                     "\nmax_seq_len: " + std::to_string(a.max_seq_len) + "\npacking: false\nshuffle_buffer: 0\n";
  if (!a.tmpl.empty()) yaml += "template: " + a.tmpl + "\n";
  return qlora::data::parse_data_config(YAML::Load(yaml), "qlora-eval flags (--format/--template)");
}

// Any format through the trainer's data pipeline: its eval split, its batches, its loss masking.
qlora::model::EvalResult evaluate_data(qlora::model::LlamaModelImpl& model, const qlora::tokenizer::Tokenizer& tok,
                                       const Args& a) {
  qlora::data::DataConfig cfg = make_data_config(a);
  cfg.chat_template =
      std::make_shared<const qlora::data::ModelChatTemplate>(qlora::data::load_model_chat_template(a.model_dir));
  // The trainer's eval batches are micro batches of its config (the same batches give the same loss).
  int64_t batch = a.batch_size;
  if (!a.config.empty() && !a.batch_size_given) {
    const YAML::Node mb = YAML::LoadFile(a.config)["train"]["micro_batch_size"];
    if (mb && mb.IsScalar()) batch = mb.as<int64_t>();
  }
  qlora::data::DataLoader loader(cfg, tok, qlora::data::Split::kEval, batch, /*seed=*/0, /*max_epochs=*/1);
  const auto r = qlora::model::evaluate_batches(
      model,
      [&]() -> std::optional<qlora::model::EvalBatch> {
        auto b = loader.next();
        if (!b) return std::nullopt;
        return qlora::model::EvalBatch{b->input_ids, b->labels, {b->attention_mask, b->position_ids, b->segment_ids}};
      },
      torch::kCPU);
  const auto st = loader.stats();
  std::string files;
  for (const auto& f : loader.files()) files += (files.empty() ? "" : ",") + f.string();
  std::printf("file %s format %s template %s records %lld examples %lld skipped %lld truncated %lld\n", files.c_str(),
              qlora::data::format_name(cfg.format), qlora::data::template_name(cfg.tmpl.kind),
              static_cast<long long>(st.records_read), static_cast<long long>(st.examples),
              static_cast<long long>(st.bad_lines_skipped + st.dropped_long + st.fully_masked_skipped),
              static_cast<long long>(st.truncated));
  return r;
}

int run_eval(const Args& a) {
  if (a.data.empty() && a.config.empty()) throw qlora::Error("give --data FILE or --config RUN.yaml");
  qlora::configure_threads(a.threads);
  qlora::model::LoadOptions lo;
  lo.compute_dtype = qlora::model::cpu_compute_dtype(a.dtype, "--dtype");
  lo.quant = qlora::quant::parse_quant_option(a.quant);
  auto model = qlora::model::load_model(a.model_dir, lo);
  if (!a.adapter.empty()) {
    qlora::lora::apply_adapter(model, qlora::lora::load_adapter(a.adapter));
    std::printf("adapter %s\n", a.adapter.c_str());
  }
  model->eval();
  auto tok = qlora::tokenizer::load_tokenizer(a.model_dir);
  const bool plain = a.config.empty() && a.format == "text" && a.tmpl.empty();
  const auto r = plain ? evaluate_text(*model, *tok, a) : evaluate_data(*model, *tok, a);
  if (r.tokens == 0) throw qlora::Error("no token to predict (the examples are empty or too short)");
  std::printf("loss %.6f ppl %.4f tokens %lld\n", r.mean_loss(), r.perplexity(), static_cast<long long>(r.tokens));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"Evaluate mean loss and perplexity of a Llama model (optionally with a LoRA adapter) on a data file."};
  Args a;
  cli.add_option("--model", a.model_dir, "HF model folder")->required();
  cli.add_option("--adapter", a.adapter, "PEFT LoRA adapter folder (as qlora-train writes it)");
  cli.add_option("--data", a.data, "evaluation file (.txt, .jsonl, .json array; a glob or folder with --format)");
  cli.add_option("--config", a.config, "a qlora-train config: evaluate its data: section's eval split (or --data)");
  cli.add_option("--format", a.format, "data format: text (plain text windows) | alpaca | chat | completion")
      ->check(CLI::IsMember({"text", "alpaca", "chat", "completion"}))
      ->capture_default_str();
  cli.add_option("--template", a.tmpl, "prompt template as data.template (alpaca, chatml, llama3, auto, ...)");
  cli.add_option("--max-seq-len", a.max_seq_len, "window length (text) or data.max_seq_len (other formats)")
      ->check(CLI::Range(8, 1 << 20))
      ->capture_default_str();
  cli.add_option("--batch-size", a.batch_size,
                 "examples per batch (other formats; with --config: train.micro_batch_size)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cli.add_option("--quant", a.quant, "base weights: 4-bit type or none")
      ->check(CLI::IsMember(qlora::quant::quant_option_names()))
      ->capture_default_str();
  cli.add_option("--dtype", a.dtype,
                 "compute dtype; auto: bf16 where the CPU multiplies bf16 natively (AVX-512, AMX), else fp32")
      ->check(CLI::IsMember({"auto", "bf16", "fp16", "fp32"}))
      ->capture_default_str();
  cli.add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
  return qlora::app::run(cli, argc, argv, [&] {
    a.batch_size_given = cli.count("--batch-size") > 0;
    return run_eval(a);
  });
}
