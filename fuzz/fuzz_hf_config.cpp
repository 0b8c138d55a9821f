// Fuzz target: a model's config.json (parse_json + parse_llama_config, the reader behind load_llama_config), then
// what the model builder derives from it (parameter count, the projections and norms of a layer).
#include "common/json_read.h"
#include "fuzz/fuzz_util.h"
#include "io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  fuzz::run_reader([&] {
    const nlohmann::json j = parse_json(fuzz::as_view(data, size), "config.json");
    const io::LlamaConfig c = io::parse_llama_config(j, "config.json");
    (void)c.num_parameters();
    (void)io::layer_projections(c);
    (void)io::layer_norms(c);
    for (int64_t layer = 0; layer < c.num_hidden_layers && layer < 64; ++layer) (void)c.layer_is_sliding(layer);
    (void)io::llama_config_to_json(c).dump();
  });
  return 0;
}
