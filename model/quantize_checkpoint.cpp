#include "model/quantize_checkpoint.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "common/progress.h"
#include "io/bnb_format.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/loader.h"

namespace qlora::model {
namespace {

const char* const kSideFiles[] = {"tokenizer.model",         "tokenizer.json",         "tokenizer_config.json",
                                  "special_tokens_map.json", "generation_config.json", "added_tokens.json"};

}  // namespace

QuantizeCheckpointSummary quantize_checkpoint(const fs::path& in, const fs::path& out,
                                              const QuantizeCheckpointOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const io::LlamaConfig config = io::load_llama_config(in / "config.json");
  if (config.quantization) {
    throw Error((in / "config.json").string() + ": the model is already quantized (quantization_config present)" +
                "\nHINT: qlora-quantize takes a 16-bit (bf16/fp16/fp32) HF folder.");
  }
  const io::Checkpoint ckpt = io::Checkpoint::open(in);
  const auto expected = expected_llama_tensors(config);
  std::string missing;
  for (const auto& [name, shape] : expected) {
    if (!ckpt.contains(name)) missing += "\n  " + name;
  }
  if (!missing.empty()) throw Error(in.string() + ": checkpoint lacks tensors required by config.json:" + missing);

  check_output_path(out, o.overwrite);
  AtomicDir dir(out, o.overwrite);
  QuantizeCheckpointSummary s;
  {
    io::ShardedWriter writer(dir.path(), o.max_shard_bytes);
    const auto names = ckpt.names();
    Progress progress("quantizing " + in.filename().string(), static_cast<double>(names.size()), "tensors");
    for (const auto& name : names) {
      const io::TensorInfo& info = ckpt.info(name);
      s.input_bytes += info.nbytes();
      const std::string skip = ".rotary_emb.inv_freq";
      if (name.size() > skip.size() && name.compare(name.size() - skip.size(), skip.size(), skip) == 0) continue;
      torch::Tensor view = ckpt.get(name);
      if (expected.count(name) && view.dim() == 2 && is_projection_target(name, o.targets)) {
        quant::QuantizedTensor q = quant::quantize_4bit(view, o.type, o.blocksize, o.double_quant);
        ckpt.release(name);
        for (auto& [k, t] : io::bnb_tensors(name.substr(0, name.size() - 7), q)) {
          s.output_bytes += static_cast<uint64_t>(t.numel() * t.element_size());
          writer.add(k, t);
        }
        ++s.tensors_quantized;
      } else {
        s.output_bytes += info.nbytes();
        writer.add(name, view);  // stays mapped until its shard is written
        ++s.tensors_copied;
      }
      if (o.show_progress) progress.advance();
    }
    writer.finish();
    if (o.show_progress) progress.finish();
  }
  nlohmann::json cfg = read_json_file(in / "config.json");
  cfg["quantization_config"] = io::bnb_quantization_config(o.type, o.double_quant, config.torch_dtype);
  write_file_atomic(dir.path() / "config.json", cfg.dump(2) + "\n");
  for (const char* f : kSideFiles) {
    if (fs::exists(in / f)) fs::copy_file(in / f, dir.path() / f, fs::copy_options::overwrite_existing);
  }
  dir.commit();
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

}  // namespace qlora::model
