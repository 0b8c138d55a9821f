// Fuzz target: a PEFT adapter_model.safetensors (lora_A / lora_B keys, dtypes, shapes), read by load_adapter next
// to the fixed adapter_config.json of tests/fixtures/lora_peft_fixture.
#include "fuzz/adapter_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const std::string kConfig = fuzz::read_file_bytes(fuzz::peft_fixture_dir() / lora::kAdapterConfigFile);
  const fuzz::fs::path dir = fuzz::work_dir() / "adapter";
  fuzz::fs::create_directories(dir);
  fuzz::write_file(dir / lora::kAdapterConfigFile, kConfig);
  fuzz::write_file(dir / lora::kAdapterWeightsFile, fuzz::as_view(data, size));
  fuzz::read_adapter(dir);
  return 0;
}
