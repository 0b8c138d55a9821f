// Fuzz target: a checkpoint's manifest.json (file names, sizes, CRC32C), checked by verify_manifest against a
// checkpoint folder of fixed small files, as `resume: auto` checks each candidate checkpoint.
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "trainer/checkpoint_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const fuzz::fs::path dir = fuzz::work_dir() / "checkpoint-4";
  static const bool kFiles = [&] {
    fuzz::fs::create_directories(dir);
    fuzz::write_file(dir / "trainer_state.json", "{\"step\": 4}\n");
    fuzz::write_file(dir / "adapter_config.json", "{\"peft_type\": \"LORA\"}\n");
    fuzz::write_file(dir / "effective_config.yaml", "train:\n  max_steps: 8\n");
    return true;
  }();
  (void)kFiles;
  fuzz::write_file(dir / trainer::kManifestFile, fuzz::as_view(data, size));
  fuzz::run_reader([&] {
    std::string why;
    const trainer::ManifestCheck c = trainer::verify_manifest(dir, &why);
    if (c == trainer::ManifestCheck::kCorrupt && why.empty()) std::abort();  // a refusal always says why
  });
  return 0;
}
