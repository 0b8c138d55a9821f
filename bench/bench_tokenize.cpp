// bench_tokenize [--model DIR] [--mb N]: byte-level BPE encode speed (MB/s, one thread) on English prose, C++
// code and CJK text, with Meta's Llama 3 tokenizer.json (assets/llama3-tokenizer by default). Prints the
// first pass (cold word cache) and the best of the next passes, plus decode speed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "bench/machine_limits.h"
#include "tokenizer/bpe_tokenizer.h"

namespace fs = std::filesystem;
using qlora::tokenizer::BpeTokenizer;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string repeat_to(const std::string& s, size_t bytes) {
  std::string out;
  if (s.empty()) return out;
  out.reserve(bytes + s.size());
  while (out.size() < bytes) out += s;
  return out;
}

// English prose: the GPL-3 text (Debian ships it) or, failing that, the repo's Markdown files.
std::string prose_corpus(const fs::path& src) {
  std::string s = read_file("/usr/share/common-licenses/GPL-3");
  if (s.empty()) s = read_file(src / "README.md");
  return s;
}

std::string code_corpus(const fs::path& src) {
  std::string s;
  for (const char* dir : {"model", "quant", "common"}) {
    if (!fs::is_directory(src / dir)) continue;
    for (const auto& e : fs::directory_iterator(src / dir)) {
      const auto ext = e.path().extension();
      if (ext == ".cpp" || ext == ".h") s += read_file(e.path());
    }
  }
  return s;
}

std::string cjk_corpus() {
  return "機器學習是人工智慧的一個分支。人工智慧的研究歷史有著一條從以「推理」為重點，到以「知識」為重點，再到以「學習"
         "」為重點的"
         "自然、清晰的脈絡。显然，机器学习是实现人工智能的一个途径，即以机器学习为手段解决人工智能中的问题。"
         "機械学習は、経験からの学習により自動で改善するコンピューターアルゴリズムもしくはその研究領域で、人工知能の一"
         "種である。"
         "기계 학습은 경험을 통해 자동으로 개선하는 컴퓨터 알고리즘의 연구이다. "
         "人工知能の研究、東京と北京、서울에서。\n";
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

void run(const BpeTokenizer& tok, const char* name, const std::string& text, int reps) {
  size_t n_ids = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto ids = tok.encode(text);
  const double first = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double best = qlora::bench::time_best([&] { n_ids = tok.encode(text).size(); }, reps);
  // CPU time of this thread: the honest figure on a shared, oversubscribed machine.
  double cpu_best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double c0 = thread_cpu_seconds();
    n_ids = tok.encode(text).size();
    cpu_best = std::min(cpu_best, thread_cpu_seconds() - c0);
  }
  const double dec = qlora::bench::time_best([&] { (void)tok.decode(ids).size(); }, reps);
  const double mb = double(text.size()) / 1e6;
  std::printf(
      "%-6s %6.2f MB %8zu tokens (%.2f B/token)  encode MB/s: first %6.2f, best %6.2f wall, %6.2f cpu"
      "  decode %7.1f MB/s\n",
      name, mb, n_ids, double(text.size()) / double(n_ids), mb / first, mb / best, mb / cpu_best, mb / dec);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path src = fs::path(__FILE__).parent_path().parent_path();  // the repo root
  fs::path model = src / "assets" / "llama3-tokenizer";
  double target_mb = 4.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--model") == 0)
      model = argv[i + 1];
    else if (std::strcmp(argv[i], "--mb") == 0)
      target_mb = std::stod(argv[i + 1]);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  const auto tok = BpeTokenizer::load(model);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokenizer %s: %d tokens, loaded in %.2f s (%.2f s cpu); one thread\n", tok->tokenizer_file().c_str(),
              tok->vocab_size(), load_s, thread_cpu_seconds() - c0);
  const auto bytes = size_t(target_mb * 1e6);
  run(*tok, "prose", repeat_to(prose_corpus(src), bytes), 3);
  run(*tok, "code", repeat_to(code_corpus(src), bytes), 3);
  run(*tok, "cjk", repeat_to(cjk_corpus(), bytes), 3);
  return 0;
}
