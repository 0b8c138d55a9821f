// qlora-data CONFIG.yaml [--examples N]: checks a config's `data:` section against its data and tokenizer.
// Prints the first N rendered examples with the masked (prompt) span marked, then streams one epoch of each
// split and prints token counts, truncation, masking and packing stats.
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "apps/app_main.h"
#include "data/data_loader.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace qlora;
namespace fs = std::filesystem;

YAML::Node load_yaml(const std::string& path) {
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw_file_error(path, "cannot read the config file");
  } catch (const YAML::Exception& e) {
    throw_file_error(path + ":" + std::to_string(e.mark.line + 1), "YAML syntax error: " + e.msg);
  }
}

// model.path, resolved like data paths: as given, else relative to the config's folder.
fs::path model_path(const YAML::Node& root, const std::string& config) {
  const YAML::Node model = root["model"];
  if (!model || !model.IsMap() || !model["path"] || !model["path"].IsScalar()) {
    throw_file_error(config, "model.path is missing (the tokenizer comes from the model folder)",
                     "add model: {path: path/to/hf-model}");
  }
  fs::path p = model["path"].Scalar();
  if (!fs::exists(p) && p.is_relative() && fs::exists(fs::path(config).parent_path() / p)) {
    p = fs::path(config).parent_path() / p;
  }
  return p;
}

void print_split(const data::DataConfig& cfg, const tokenizer::Tokenizer& tok, data::Split split, int64_t batch_size,
                 int64_t examples) {
  data::DataConfig scan = cfg;
  scan.shuffle_buffer = 0;  // stats only: stream order is enough
  data::DataLoader loader(scan, tok, split, batch_size, /*seed=*/0, /*max_epochs=*/1);
  std::printf("== %s: %zu file(s)\n", data::split_name(split), loader.files().size());
  const auto preview = loader.preview(examples);
  for (size_t i = 0; i < preview.size(); ++i) {
    std::printf("-- example %zu (%lld tokens, %lld trained)\n%s\n", i + 1, static_cast<long long>(preview[i].size()),
                static_cast<long long>(preview[i].num_label_tokens()),
                data::format_prompt_trained(preview[i], tok).c_str());
  }
  int64_t slots = 0, tokens = 0, rows = 0;
  while (auto b = loader.next()) {
    slots += b->input_ids.numel();
    tokens += b->num_tokens;
    rows += b->input_ids.size(0);
  }
  const data::DataStats s = loader.stats();
  const auto pct = [](int64_t a, int64_t b) {
    return b > 0 ? 100.0 * static_cast<double>(a) / static_cast<double>(b) : 0.0;
  };
  std::printf("records read        %lld\n", static_cast<long long>(s.records_read));
  std::printf("examples            %lld\n", static_cast<long long>(s.examples));
  std::printf("tokens              %lld (mean %.1f per example)\n", static_cast<long long>(s.tokens),
              s.examples ? static_cast<double>(s.tokens) / static_cast<double>(s.examples) : 0.0);
  std::printf("trained tokens      %lld (%.1f%%; the rest is masked prompt)\n", static_cast<long long>(s.label_tokens),
              pct(s.label_tokens, s.tokens));
  std::printf("truncated           %lld (max_seq_len %lld)\n", static_cast<long long>(s.truncated),
              static_cast<long long>(cfg.max_seq_len));
  std::printf("dropped (too long)  %lld\n", static_cast<long long>(s.dropped_long));
  std::printf("skipped (no labels) %lld\n", static_cast<long long>(s.fully_masked_skipped));
  std::printf("bad lines skipped   %lld\n", static_cast<long long>(s.bad_lines_skipped));
  std::printf("rows / batches      %lld / %lld (batch size %lld, %s); %.1f%% of slots are tokens\n",
              static_cast<long long>(rows), static_cast<long long>(s.batches), static_cast<long long>(batch_size),
              cfg.packing ? "packed" : "padded", pct(tokens, slots));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"Checks the data: section of a training config: renders examples and prints token stats."};
  std::string config;
  int64_t examples = 3;
  int64_t batch_size = 8;
  cli.add_option("config", config, "training config (YAML with data: and model.path)")->required();
  cli.add_option("--examples", examples, "rendered examples to show per split")->check(CLI::NonNegativeNumber);
  cli.add_option("--batch-size", batch_size, "micro batch size for the packing stats")->check(CLI::PositiveNumber);
  return app::run(cli, argc, argv, [&] {
    const YAML::Node root = load_yaml(config);
    data::DataConfig cfg = data::parse_data_config(root["data"], config);
    const auto tok = tokenizer::load_tokenizer(model_path(root, config));
    cfg.chat_template =
        std::make_shared<const data::ModelChatTemplate>(data::load_model_chat_template(model_path(root, config)));
    std::printf("format %s, template %s, max_seq_len %lld, packing %s, train_on_prompt %s\n",
                data::format_name(cfg.format), data::template_name(cfg.tmpl.kind),
                static_cast<long long>(cfg.max_seq_len), cfg.packing ? "on" : "off",
                cfg.train_on_prompt ? "on" : "off");
    std::printf("(PROMPT is masked out of the loss, label -100; TRAINED is what the model learns)\n");
    print_split(cfg, *tok, data::Split::kTrain, batch_size, examples);
    if (data::has_eval_split(cfg)) print_split(cfg, *tok, data::Split::kEval, batch_size, examples);
    return 0;
  });
}
