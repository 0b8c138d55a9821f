// Shared by the data tests: a byte-level fake tokenizer (id = byte + 3; <pad>=0 <s>=1 </s>=2) and helpers to
// write JSONL files and build configs.
#pragma once

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/data_config.h"
#include "tokenizer/tokenizer.h"

namespace qlora::test {

class ByteTokenizer : public tokenizer::Tokenizer {
 public:
  static constexpr int32_t kOffset = 3;
  explicit ByteTokenizer(int32_t pad = -1) : pad_(pad) {}

  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool add_eos = false) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c) + kOffset);
    if (add_eos) ids.push_back(2);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= kOffset) s += static_cast<char>(id - kOffset);
    }
    return s;
  }
  std::string id_to_piece(int32_t id) const override {
    if (id == 0) return "<pad>";
    if (id == 1) return "<s>";
    if (id == 2) return "</s>";
    return std::string(1, static_cast<char>(id - kOffset));
  }
  int32_t piece_to_id(const std::string& piece) const override {
    return piece.size() == 1 ? static_cast<unsigned char>(piece[0]) + kOffset : 0;
  }
  int32_t vocab_size() const override { return 256 + kOffset; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  int32_t unk_id() const override { return 0; }
  int32_t pad_id() const override { return pad_; }

 private:
  int32_t pad_;
};

inline void write_text_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

inline void write_jsonl(const std::filesystem::path& p, const std::vector<nlohmann::json>& records) {
  std::ofstream out(p, std::ios::binary);
  for (const auto& r : records) out << r.dump() << "\n";
}

// Parses a `data:` mapping given as YAML text (file name "cfg.yaml" in errors).
inline data::DataConfig make_config(const std::string& yaml) {
  return data::parse_data_config(YAML::Load(yaml), "cfg.yaml");
}

}  // namespace qlora::test
