// The compute dtype by name ("auto", "bf16", "fp16", "fp32"), resolved for the device a run uses.
//
// LibTorch multiplies bf16 and fp16 matrices on the CPU through oneDNN only where the CPU has the instructions for
// it (x86: AVX-512 BW/VL/DQ, AMX or AVX-NE-CONVERT; Arm: the BF16 extension). Elsewhere at::mm falls to reference
// loops: a 1024^3 bf16 matmul took 3.1 s (0.69 GFLOP/s) against 17 ms in fp32 on a 2-core AVX2 AMD EPYC (torch
// 2.15, 2026-12-06, bench/RESULTS.md), so a bf16 run on an AVX2 laptop would spend ~100x longer in every matmul
// than an fp32 one.
#pragma once

#include <torch/types.h>

#include <string>

namespace qlora::model {

// LibTorch's own answer (its `mkldnn::_is_mkldnn_bf16_supported` / `_fp16_` ops, which its matmul dispatch
// consults): whether CPU matmuls in `dtype` run through oneDNN. Always true for fp32.
bool cpu_matmul_native(torch::ScalarType dtype);

// "auto" -> "bf16" on CUDA and on CPUs where cpu_matmul_native(bf16), else "fp32". Any other name is returned as is.
std::string resolve_compute_dtype(const std::string& name, bool cuda);

// A one-line warning, empty when there is none: `name` is a 16-bit dtype this CPU multiplies only in LibTorch's
// reference loops (so every matmul runs far slower than in fp32), with the way out.
std::string slow_cpu_dtype_warning(const std::string& name);

// A CPU tool's `flag` (e.g. "--dtype") set to `name`: auto resolved for this CPU, an explicit 16-bit dtype this CPU
// multiplies only in reference loops kept with slow_cpu_dtype_warning logged, as a torch dtype.
torch::ScalarType cpu_compute_dtype(const std::string& name, const std::string& flag);

// "bf16" | "fp16" | "fp32" -> the torch dtype (anything else throws qlora::Error).
torch::ScalarType compute_dtype_from_name(const std::string& name);

}  // namespace qlora::model
