// Fuzz target: a PEFT adapter_config.json (peft_type, r, lora_alpha, target_modules, rank_pattern, alpha_pattern,
// use_rslora, ...), read by load_adapter next to the fixed adapter weights of tests/fixtures/lora_peft_fixture.
#include "fuzz/adapter_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::string kWeights = fuzz::read_file_bytes(fuzz::peft_fixture_dir() / lora::kAdapterWeightsFile);
  const fuzz::fs::path dir = fuzz::work_dir() / "adapter";
  fuzz::fs::create_directories(dir);
  fuzz::write_file(dir / lora::kAdapterWeightsFile, kWeights);
  fuzz::write_file(dir / lora::kAdapterConfigFile, fuzz::as_view(data, size));
  fuzz::read_adapter(dir);
  return 0;
}
