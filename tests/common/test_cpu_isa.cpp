// CPU feature detection against the kernel's own view of the CPU: the flags line of /proc/cpuinfo (Linux lists
// amx_bf16 / amx_tile only when the CPU has them and the kernel enabled their register state).
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "common/cpu_isa.h"

namespace qlora {
namespace {

std::set<std::string> proc_cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

TEST(CpuIsa, AmxDetectionAgreesWithProcCpuinfo) {
  const std::set<std::string> flags = proc_cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  EXPECT_EQ(cpu_has_amx_bf16(), flags.count("amx_bf16") == 1 && flags.count("amx_tile") == 1);
  EXPECT_EQ(cpu_supports(Isa::kAvx512), flags.count("avx512f") == 1 && flags.count("avx512bw") == 1 &&
                                            flags.count("avx512vl") == 1 && flags.count("avx2") == 1);
  EXPECT_EQ(cpu_supports(Isa::kAvx2), flags.count("avx2") == 1 && flags.count("fma") == 1);
}

}  // namespace
}  // namespace qlora
