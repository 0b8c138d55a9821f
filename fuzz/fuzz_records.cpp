// Fuzz target: a training data file (JSONL records, or a plain .txt file) through the DataLoader with the built-in
// templates. The first input byte picks one of the data configs below (format, template, packing, file kind); the
// rest is the file.
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

#include "data/data_config.h"
#include "fuzz/records_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  struct Variant {
    const char* file;
    const char* yaml;  // the data: section without train
  };
  static const std::vector<Variant> kVariants = {
      {"d.jsonl", "format: alpaca\ntemplate: alpaca\n"},
      {"d.jsonl", "format: chat\ntemplate: llama2-chat\npacking: false\n"},
      {"d.jsonl", "format: chat\ntemplate: chatml\n"},
      {"d.jsonl", "format: chat\ntemplate: llama3\ntrain_on_prompt: true\n"},
      {"d.jsonl", "format: completion\ntemplate: raw\ndrop_long: true\n"},
      {"d.jsonl", "format: text\npacking: false\n"},
      {"d.txt", "format: text\n"},
      {"d.jsonl", "format: alpaca\ntemplate: {prompt: \"Q: {instruction} {input}\\n\", response: \"A: {output}\"}\n"},
      {"d.jsonl",
       "format: chat\ntemplate: {system: {prefix: \"[S]\", suffix: \"\\n\"}, user: {prefix: \"[U]\", suffix: \"\\n\"}, "
       "assistant: {prefix: \"[A]\", suffix: \"\\n\"}}\n"},
  };
  if (size == 0) return 0;
  const Variant& v = kVariants[data[0] % kVariants.size()];
  const fuzz::fs::path file = fuzz::work_dir() / v.file;
  fuzz::write_file(file, fuzz::as_view(data + 1, size - 1));
  fuzz::run_reader([&] {
    const std::string yaml = std::string(v.yaml) + "train: " + file.string() +
                             "\nmax_seq_len: 48\nshuffle_buffer: 4\non_bad_line: skip\nmax_record_bytes: 65536\n";
    const data::DataConfig cfg = data::parse_data_config(YAML::Load(yaml), "fuzz.yaml");
    fuzz::read_all_batches(cfg);
  });
  return 0;
}
