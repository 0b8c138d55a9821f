// Fuzz target: a .safetensors file (header JSON, offsets, dtypes, shapes and the data section), read as the model
// loader reads one: SafetensorsFile::open, then every tensor's bytes through get(). Beyond "no crash", an opened file
// keeps the reader's promise that each tensor lies inside the file and holds exactly numel * dtype size bytes.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  const fuzz::fs::path file = fuzz::work_dir() / "model.safetensors";
  fuzz::write_file(file, fuzz::as_view(data, size));
  fuzz::run_reader([&] {
    const auto st = io::SafetensorsFile::open(file);
    uint64_t data_start = 0;
    if (size >= 8) std::memcpy(&data_start, data, 8);
    for (const io::TensorInfo& ti : st->tensors()) {
      // The promise every caller relies on (memory outside the mapping would be read otherwise).
      if (ti.begin > ti.end || ti.end > size - 8 - data_start ||
          ti.nbytes() != static_cast<uint64_t>(ti.numel()) * io::dtype_size(ti.dtype)) {
        std::abort();
      }
      const torch::Tensor t = st->get(ti.name);
      std::vector<char> copy(ti.nbytes());
      if (!copy.empty()) std::memcpy(copy.data(), t.data_ptr(), copy.size());
      st->release(ti.name);
    }
    for (const auto& [k, v] : st->metadata()) (void)k.size();
  });
  return 0;
}
