// bench_data [MB] [--tokenizer MODEL_DIR]: streams a generated JSONL file (default 200 MB) through the
// DataLoader (completion format, packing, shuffle buffer 1000) and prints throughput and memory. The resident set
// must stay bounded (the loader never holds the file); the ratio column compares the read rate with the
// machine's memcpy bandwidth measured in the same run.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "bench/machine_limits.h"
#include "common/log.h"
#include "data/data_loader.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace qlora;
namespace fs = std::filesystem;

// Byte-level stand-in (id = byte + 3) so the figures measure the data path, not a tokenizer.
class ByteTokenizer : public tokenizer::Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 2);
    if (add_bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c) + 3);
    if (add_eos) ids.push_back(2);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += id >= 3 ? static_cast<char>(id - 3) : '?';
    return s;
  }
  std::string id_to_piece(int32_t id) const override { return std::string(1, static_cast<char>(id - 3)); }
  int32_t piece_to_id(const std::string& p) const override {
    return p.empty() ? 0 : static_cast<unsigned char>(p[0]) + 3;
  }
  int32_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  int32_t unk_id() const override { return 0; }
  int32_t pad_id() const override { return 0; }
};

}  // namespace

int main(int argc, char** argv) {
  init_logging("warn");
  int64_t mb = 200;
  std::string tokenizer_dir;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
      tokenizer_dir = argv[++i];
    } else if (char* end = nullptr; (mb = std::strtoll(argv[i], &end, 10)) > 0 && *end == '\0') {
      continue;
    } else {
      std::fprintf(stderr, "usage: bench_data [MB=200] [--tokenizer MODEL_DIR]\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  const fs::path dir = fs::temp_directory_path() / ("bench_data_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path file = dir / "big.jsonl";
  int64_t records = 0;
  {
    std::ofstream out(file, std::ios::binary);
    const std::string pad(180, 'w');
    while (static_cast<int64_t>(out.tellp()) < (mb << 20)) {
      out << R"({"prompt": "question )" << records << " " << pad << R"(", "completion": "answer )" << records
          << "\"}\n";
      ++records;
    }
  }
  const double file_mb = static_cast<double>(fs::file_size(file)) / (1 << 20);

  std::unique_ptr<tokenizer::Tokenizer> tok =
      tokenizer_dir.empty() ? std::make_unique<ByteTokenizer>() : tokenizer::load_tokenizer(tokenizer_dir);
  YAML::Node node = YAML::Load("train: " + file.string() +
                               "\nformat: completion\nmax_seq_len: 512\npacking: true\nshuffle_buffer: 1000\n");
  const data::DataConfig cfg = data::parse_data_config(node, "bench");
  const size_t rss0 = current_rss_bytes();
  size_t rss_max = rss0;
  const auto t0 = std::chrono::steady_clock::now();
  data::DataLoader loader(cfg, *tok, data::Split::kTrain, /*micro_batch_size=*/8, /*seed=*/1, /*max_epochs=*/1);
  int64_t batches = 0;
  while (auto b = loader.next()) {
    ++batches;
    if (batches % 64 == 0) rss_max = std::max(rss_max, current_rss_bytes());
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double bw = bench::measure_copy_bandwidth_gbs(size_t(256) << 20, 3);
  const auto st = loader.stats();
  std::printf("| what | value |\n|---|---|\n");
  std::printf("| file | %.0f MB, %lld records |\n", file_mb, static_cast<long long>(records));
  std::printf("| tokenizer | %s |\n", tokenizer_dir.empty() ? "byte-level stand-in" : tokenizer_dir.c_str());
  std::printf("| examples / batches | %lld / %lld |\n", static_cast<long long>(st.examples),
              static_cast<long long>(batches));
  std::printf("| time | %.2f s |\n", s);
  std::printf("| read rate | %.1f MB/s (%.2e of memcpy %.1f GB/s) |\n", file_mb / s, file_mb / s / 1024.0 / bw, bw);
  std::printf("| tokens/s | %.0f |\n", static_cast<double>(st.tokens) / s);
  std::printf("| RSS growth (max) | %s |\n",
              format_bytes(static_cast<double>(rss_max - std::min(rss_max, rss0))).c_str());
  fs::remove_all(dir);
  return 0;
}
