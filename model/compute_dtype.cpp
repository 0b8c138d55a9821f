#include "model/compute_dtype.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace qlora::model {
namespace {

// A LibTorch op taking nothing and returning a bool, by name; false when this LibTorch lacks it (no oneDNN).
bool ask_libtorch(const char* op) {
  const auto handle = c10::Dispatcher::singleton().findSchema({op, ""});
  if (!handle) return false;
  return handle->typed<bool()>().call();
}

}  // namespace

bool cpu_matmul_native(torch::ScalarType dtype) {
  if (dtype == torch::kBFloat16) {
    static const bool bf16 = ask_libtorch("mkldnn::_is_mkldnn_bf16_supported");
    return bf16;
  }
  if (dtype == torch::kFloat16) {
    static const bool fp16 = ask_libtorch("mkldnn::_is_mkldnn_fp16_supported");
    return fp16;
  }
  return true;
}

std::string resolve_compute_dtype(const std::string& name, bool cuda) {
  if (name != "auto") return name;
  return cuda || cpu_matmul_native(torch::kBFloat16) ? "bf16" : "fp32";
}

std::string slow_cpu_dtype_warning(const std::string& name) {
  if (name != "bf16" && name != "fp16") return "";
  if (cpu_matmul_native(compute_dtype_from_name(name))) return "";
  return name + " on a CPU without " + name +
         " matmul instructions: LibTorch multiplies it through oneDNN only with AVX-512, AMX or AVX-NE-CONVERT, "
         "here in its reference loops, ~100x slower than fp32; use compute dtype auto (fp32 on this CPU) or fp32";
}

torch::ScalarType cpu_compute_dtype(const std::string& name, const std::string& flag) {
  if (const std::string slow = slow_cpu_dtype_warning(name); !slow.empty()) spdlog::warn("{} {}", flag, slow);
  return compute_dtype_from_name(resolve_compute_dtype(name, /*cuda=*/false));
}

torch::ScalarType compute_dtype_from_name(const std::string& name) {
  if (name == "bf16") return torch::kBFloat16;
  if (name == "fp16") return torch::kFloat16;
  if (name == "fp32") return torch::kFloat32;
  throw Error("unknown compute dtype `" + name + "` (bf16 | fp16 | fp32, or auto before it is resolved)");
}

}  // namespace qlora::model
