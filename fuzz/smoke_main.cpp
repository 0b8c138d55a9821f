// The fuzz targets in the normal build, as ctest fuzz_smoke_<reader> (label `unit`): replays the seed inputs (files,
// or the files of folders, given as arguments) and then deterministic mutations of them, each through the target's
// LLVMFuzzerTestOneInput. Not a fuzzer (no coverage feedback): a fast check that the readers still refuse broken
// input cleanly, with the same findings contract as libFuzzer (a crash or an escaping exception fails the test).
//
//   fuzz_smoke_<reader> SEED... [QLORA_FUZZ_SMOKE_RUNS=N (default 5000)] [QLORA_FUZZ_SMOKE_SECONDS=S (default 30)]
//
// Mutations, from a fixed seed: bit flips, interesting bytes, truncations, byte insertions and deletions, chunk
// copies, splices of two seeds, and tokens of the formats (JSON, YAML, Jinja) inserted or overwritten; one to four
// stacked per input.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

constexpr uint64_t kSeed = 20261203;
constexpr int64_t kDefaultRuns = 5000;
constexpr double kDefaultSeconds = 30.0;

const std::vector<std::string> kTokens = {"null",
                                          "true",
                                          "false",
                                          "1e308",
                                          "-1",
                                          "0",
                                          "9223372036854775807",
                                          "-9223372036854775808",
                                          "4294967296",
                                          "NaN",
                                          "\"\"",
                                          "[]",
                                          "{}",
                                          "[[[[",
                                          "{\"\":",
                                          "\\u0000",
                                          "\\ud800",
                                          ": ",
                                          "- ",
                                          "&a",
                                          "*a",
                                          "!!binary",
                                          "---",
                                          "{{",
                                          "}}",
                                          "{%",
                                          "%}",
                                          "{#",
                                          "#}",
                                          "{% for x in y %}",
                                          "{% endfor %}",
                                          "{% if %}",
                                          "loop.",
                                          "|tojson",
                                          "\xF0\x9F\x98",
                                          "\xE2\x96\x81",
                                          "<s>",
                                          "\"dtype\":\"F32\"",
                                          "\"shape\":[",
                                          "\"data_offsets\":["};
const std::vector<uint8_t> kInteresting = {0,   1,   0x7f, 0x80, 0xff, '"', '{', '}', '[', ']',
                                           ',', ':', '\\', '\n', '-',  '9', ' ', '%', '#'};

int64_t env_int(const char* name, int64_t def) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : def;
}

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<Bytes> load_seeds(int argc, char** argv) {
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p = argv[i];
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "fuzz smoke: seed %s not found\n", p.c_str());
      std::exit(2);
    }
  }
  std::sort(files.begin(), files.end());  // the order (and so the mutations) must not depend on the filesystem
  std::vector<Bytes> seeds;
  for (const auto& f : files) seeds.push_back(read_bytes(f));
  return seeds;
}

// One input through the target; an exception that escapes it (a finding) first saves the input to
// fuzz_smoke_crash.bin in the working directory (ctest: build/fuzz/), to replay with the libFuzzer build.
void run_one(const Bytes& b) {
  try {
    LLVMFuzzerTestOneInput(b.data(), b.size());
  } catch (...) {
    std::ofstream("fuzz_smoke_crash.bin", std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    const fs::path saved = fs::current_path() / "fuzz_smoke_crash.bin";
    std::fprintf(stderr, "fuzz smoke: the input that threw is in %s\n", saved.c_str());
    throw;
  }
}

class Mutator {
 public:
  explicit Mutator(const std::vector<Bytes>& seeds) : seeds_(seeds), rng_(kSeed) {}

  Bytes next() {
    Bytes b = seeds_[below(seeds_.size())];
    const size_t n = 1 + below(4);
    for (size_t i = 0; i < n; ++i) mutate_once(b);
    return b;
  }

 private:
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  void mutate_once(Bytes& b) {
    switch (below(9)) {
      case 0:  // flip a bit
        if (!b.empty()) b[below(b.size())] ^= static_cast<uint8_t>(1u << below(8));
        break;
      case 1:  // an interesting byte
        if (!b.empty()) b[below(b.size())] = kInteresting[below(kInteresting.size())];
        break;
      case 2:  // truncate
        b.resize(below(b.size() + 1));
        break;
      case 3: {  // insert random bytes
        const size_t at = below(b.size() + 1), k = 1 + below(8);
        for (size_t i = 0; i < k; ++i) b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), uint8_t(rng_()));
        break;
      }
      case 4: {  // erase a range
        if (b.empty()) break;
        const size_t at = below(b.size()), k = 1 + below(std::min<size_t>(b.size() - at, 64));
        b.erase(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + k));
        break;
      }
      case 5: {  // copy a chunk elsewhere
        if (b.empty()) break;
        const size_t from = below(b.size()), k = 1 + below(std::min<size_t>(b.size() - from, 256));
        const Bytes chunk(b.begin() + static_cast<std::ptrdiff_t>(from),
                          b.begin() + static_cast<std::ptrdiff_t>(from + k));
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(below(b.size() + 1)), chunk.begin(), chunk.end());
        break;
      }
      case 6: {  // splice: a prefix of this input, a suffix of another seed
        const Bytes& o = seeds_[below(seeds_.size())];
        b.resize(below(b.size() + 1));
        b.insert(b.end(), o.begin() + static_cast<std::ptrdiff_t>(below(o.size() + 1)), o.end());
        break;
      }
      case 7: {  // insert a format token
        const std::string& t = kTokens[below(kTokens.size())];
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(below(b.size() + 1)), t.begin(), t.end());
        break;
      }
      default: {  // overwrite with a format token
        const std::string& t = kTokens[below(kTokens.size())];
        const size_t at = below(b.size() + 1);
        if (at + t.size() > b.size()) b.resize(at + t.size());
        std::copy(t.begin(), t.end(), b.begin() + static_cast<std::ptrdiff_t>(at));
        break;
      }
    }
  }

  const std::vector<Bytes>& seeds_;
  std::mt19937_64 rng_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Bytes> seeds = load_seeds(argc, argv);
  if (seeds.empty()) {
    std::fprintf(stderr, "usage: %s SEED_FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  for (const Bytes& s : seeds) run_one(s);
  const int64_t runs = env_int("QLORA_FUZZ_SMOKE_RUNS", kDefaultRuns);
  const double budget = static_cast<double>(env_int("QLORA_FUZZ_SMOKE_SECONDS", 0));
  const double limit = budget > 0 ? budget : kDefaultSeconds;
  Mutator mutator(seeds);
  int64_t done = 0;
  for (; done < runs && seconds() < limit; ++done) {
    run_one(mutator.next());
  }
  std::printf("fuzz smoke: %zu seeds + %lld mutations in %.1f s%s\n", seeds.size(), static_cast<long long>(done),
              seconds(), done < runs ? " (stopped at the time limit)" : "");
  return 0;
}
