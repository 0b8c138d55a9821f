// Shared by fuzz_adapter_config and fuzz_adapter: a PEFT adapter folder (adapter_config.json +
// adapter_model.safetensors) read by load_adapter, the reader behind qlora-merge, qlora-generate --adapter and
// resuming from a checkpoint, and the promise it makes to apply_adapter about what it returns.
#pragma once

#include <cstdlib>

#include "fuzz/fuzz_util.h"
#include "lora/peft_io.h"

namespace qlora::fuzz {

inline fs::path peft_fixture_dir() {
  return source_dir() / "tests" / "fixtures" / "lora_peft_fixture";
}

// load_adapter(dir), then its promise: every module has a 2-D A (r, in) and B (out, r), r as configured.
inline void read_adapter(const fs::path& dir) {
  run_reader([&] {
    const lora::AdapterFile f = lora::load_adapter(dir);
    for (const lora::AdapterModule& m : f.modules) {
      if (m.a.dim() != 2 || m.b.dim() != 2 || m.a.size(0) != m.options.r || m.b.size(1) != m.options.r) std::abort();
      (void)m.scale();
      (void)f.find(m.module);
    }
  });
}

}  // namespace qlora::fuzz
