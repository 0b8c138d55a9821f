#include "common/cpu_isa.h"

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

Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

}  // namespace qlora
