// The CPU instruction sets the SIMD kernels (quant/, ops/) are compiled for, and which one runs.
#pragma once

namespace qlora {

// Instruction-set paths of the CPU kernels. Chosen once from the CPU (best available) unless
// QLORA_QUANT_ISA=scalar|avx2|avx512 forces one (an unsupported choice falls back with a warning).
enum class Isa { kScalar, kAvx2, kAvx512 };

const char* isa_name(Isa isa);
bool cpu_supports(Isa isa);
Isa active_isa();

}  // namespace qlora
