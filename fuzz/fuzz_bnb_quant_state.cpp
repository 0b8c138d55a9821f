// Fuzz target: the quant-state JSON of a bitsandbytes 4-bit projection (the U8 tensor
// P.weight.quant_state.bitsandbytes__nf4|fp4 of a `*-bnb-4bit` checkpoint: quant_type, blocksize, dtype, shape,
// nested_*), read by bnb_read next to fixed packed weights, absmax and quant maps, then dequantized as the model
// loader does. Input byte 0: bit 0 picks the key suffix (nf4 / fp4), bit 1 the parts (double quant or plain); the
// rest is the JSON.
#include <string>
#include <utility>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "io/bnb_format.h"
#include "quant/quantized_tensor.h"

namespace {

// The parts of one 32 x 64 projection, without the quant_state (the fuzzed input supplies it).
qlora::io::NamedTensors base_parts(bool double_quant) {
  const torch::Tensor w = torch::sin(torch::arange(2048, torch::kFloat32) * 0.37f).reshape({32, 64});
  const auto q = qlora::quant::quantize_4bit(w, qlora::quant::QuantType::kNF4, /*blocksize=*/64, double_quant);
  qlora::io::NamedTensors out;
  for (auto& [name, t] : qlora::io::bnb_tensors("layer.q_proj", q)) {
    if (name.find(".quant_state.") == std::string::npos) out.emplace_back(name, t);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::vector<io::NamedTensors> kParts = {base_parts(false), base_parts(true)};
  if (size == 0) return 0;
  io::NamedTensors tensors = kParts[(data[0] >> 1) & 1];
  const std::string key =
      std::string("layer.q_proj.weight.quant_state.bitsandbytes__") + ((data[0] & 1) ? "fp4" : "nf4");
  tensors.emplace_back(
      key, torch::from_blob(const_cast<uint8_t*>(data + 1), {static_cast<int64_t>(size - 1)}, torch::kUInt8).clone());
  const fuzz::fs::path dir = fuzz::work_dir() / "bnb";
  fuzz::fs::create_directories(dir);
  io::save_safetensors(dir / "model.safetensors", tensors);
  fuzz::run_reader([&] {
    const io::Checkpoint ckpt = io::Checkpoint::open(dir);
    const quant::QuantizedTensor q = io::bnb_read(ckpt, "layer.q_proj");
    (void)quant::dequantize_4bit(q, torch::kFloat32);
  });
  return 0;
}
