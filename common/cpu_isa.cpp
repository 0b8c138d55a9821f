#include "common/cpu_isa.h"

#include <cpuid.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <string>

namespace qlora {
namespace {

Isa detect_isa() {
  Isa best = cpu_supports(Isa::kAvx512) ? Isa::kAvx512 : cpu_supports(Isa::kAvx2) ? Isa::kAvx2 : Isa::kScalar;
  const char* env = std::getenv("QLORA_QUANT_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (want != isa_name(isa)) continue;
    if (cpu_supports(isa)) return isa;
    spdlog::warn("QLORA_QUANT_ISA={} is not supported by this CPU; using {}", want, isa_name(best));
    return best;
  }
  spdlog::warn("QLORA_QUANT_ISA={} is unknown (scalar|avx2|avx512); using {}", want, isa_name(best));
  return best;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2");
    case Isa::kAvx2:
      // F16C has no feature string here; every AVX2+FMA CPU has it.
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
}

bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(1, 0, &a, &b, &c, &d) == 0 || (c & (1u << 27)) == 0) return false;  // OSXSAVE
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  const bool amx = (d & (1u << 22)) != 0 && (d & (1u << 24)) != 0;  // AMX-BF16, AMX-TILE
  if (!amx) return false;
  unsigned lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & (3u << 17)) == (3u << 17);  // XTILECFG and XTILEDATA state enabled
}

Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace qlora
