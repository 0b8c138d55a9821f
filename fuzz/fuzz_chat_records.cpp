// Fuzz target: chat records (JSONL: messages / ShareGPT conversations, tools, tool calls) through the DataLoader
// with data.template: auto, i.e. rendered by a real model chat template (tests/fixtures/chat_templates) and its
// assistant turns located for the loss mask. The first input byte picks the template; the rest is the file.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/data_config.h"
#include "fuzz/records_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::vector<std::shared_ptr<const data::ModelChatTemplate>> kTemplates = [] {
    std::vector<fuzz::fs::path> files;
    for (const auto& e : fuzz::fs::directory_iterator(fuzz::source_dir() / "tests" / "fixtures" / "chat_templates")) {
      if (e.path().extension() == ".jinja") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    std::vector<std::shared_ptr<const data::ModelChatTemplate>> out;
    for (const auto& f : files) {
      data::ModelChatTemplate t;
      t.source = fuzz::read_file_bytes(f);
      t.origin = f.filename().string();
      t.special_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
      t.special_token_texts = {"<s>", "</s>"};
      out.push_back(std::make_shared<const data::ModelChatTemplate>(std::move(t)));
    }
    return out;
  }();
  if (size == 0 || kTemplates.empty()) return 0;
  const fuzz::fs::path file = fuzz::work_dir() / "chat.jsonl";
  fuzz::write_file(file, fuzz::as_view(data + 1, size - 1));
  fuzz::run_reader([&] {
    const std::string yaml = "format: chat\ntemplate: auto\ntrain: " + file.string() +
                             "\nmax_seq_len: 64\nshuffle_buffer: 4\non_bad_line: skip\nmax_record_bytes: 65536\n";
    data::DataConfig cfg = data::parse_data_config(YAML::Load(yaml), "fuzz.yaml");
    cfg.chat_template = kTemplates[data[0] % kTemplates.size()];
    fuzz::read_all_batches(cfg);
  });
  return 0;
}
