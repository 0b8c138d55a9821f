// Fuzz target: a YAML training config (configs/*.yaml: model, lora, data, train, eval, checkpoint, ... sections),
// parsed and validated by parse_config (the reader behind load_config), then everything derived from it: the
// effective config written into checkpoints, the run hash and its fields, the loader options and the LoRA config.
#include "fuzz/fuzz_util.h"
#include "trainer/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  fuzz::run_reader([&] {
    const trainer::TrainConfig cfg = trainer::parse_config(std::string(fuzz::as_view(data, size)), "fuzz.yaml");
    (void)trainer::effective_config_yaml(cfg);
    (void)trainer::config_hash(cfg);
    const nlohmann::json fields = trainer::trajectory_fields(cfg);
    (void)trainer::describe_field_changes(fields, fields);
    (void)trainer::load_options(cfg);
    (void)trainer::lora_config(cfg);
  });
  return 0;
}
