#include "gguf/gguf_export.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "gguf/gguf_bpe_vocab.h"
#include "gguf/gguf_families.h"
#include "io/bnb_format.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "lora/peft_io.h"
#include "model/loader.h"
#include "quant/quantized_tensor.h"

namespace qlora::gguf {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string strip_weight(const std::string& name) {
  return ends_with(name, ".weight") ? name.substr(0, name.size() - 7) : name;
}

// Projection module -> {out, in} for adapter shape checks.
std::map<std::string, std::pair<int64_t, int64_t>> projection_shapes(const io::LlamaConfig& c) {
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;
  for (const auto& [name, shape] : model::expected_llama_tensors(c)) {
    if (shape.size() == 2) shapes[strip_weight(name)] = {shape[0], shape[1]};
  }
  return shapes;
}

void add_general(GgufWriter& w, const std::string& arch, const std::string& type, const std::string& name, OutType out,
                 bool quantized) {
  w.add_string("general.architecture", arch);
  w.add_string("general.type", type);
  w.add_string("general.name", name);
  w.add_u32("general.alignment", w.alignment());
  w.add_u32("general.file_type", llama_file_type(out));
  if (quantized) w.add_u32("general.quantization_version", 2);  // GGML_QNT_VERSION
}

std::string folder_name(const fs::path& dir) {
  fs::path p = dir;
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

ExportSummary summarize(const fs::path& out, const GgufWriter& w) {
  ExportSummary s;
  s.path = out;
  s.tensors = static_cast<int64_t>(w.tensors().size());
  s.bytes = fs::file_size(out);
  for (const auto& t : w.tensors()) s.tensors_by_type[ggml_type_name(t.type)]++;
  return s;
}

// Where each weight of the GGUF file comes from.
struct Source {
  std::string hf_name;
  bool bnb = false;
  const lora::AdapterModule* lora = nullptr;
};

// Every weight's source, validated (present, shaped as config.json says) before anything is written.
std::vector<Source> plan_sources(const fs::path& model_dir, const io::LlamaConfig& config, const io::Checkpoint& ckpt,
                                 const std::map<std::string, std::vector<int64_t>>& expected,
                                 const lora::AdapterFile* adapter) {
  std::vector<Source> sources;
  std::vector<std::string> problems;
  for (const auto& name : ordered_tensor_names(config)) {
    Source src{name};
    const std::string module = strip_weight(name);
    if (io::bnb_is_quantized(ckpt, module)) {
      src.bnb = true;
    } else if (!ckpt.contains(name)) {
      problems.push_back("missing tensor " + name);
      continue;
    } else if (ckpt.info(name).shape != expected.at(name)) {
      problems.push_back(name + ": shape " + c10::str(c10::IntArrayRef(ckpt.info(name).shape)) + ", config.json says " +
                         c10::str(c10::IntArrayRef(expected.at(name))));
      continue;
    }
    if (adapter) src.lora = adapter->find(module);
    sources.push_back(src);
  }
  if (!problems.empty()) {
    std::string msg = model_dir.string() + ": cannot export to GGUF:";
    for (const auto& p : problems) msg += "\n  " + p;
    throw Error(msg);
  }
  return sources;
}

// Every adapter module must land on a weight; returns how many are merged.
int64_t check_adapter_modules(const lora::AdapterFile& adapter, const std::vector<Source>& sources,
                              const fs::path& adapter_dir, const fs::path& model_dir) {
  int64_t merged = 0;
  for (const auto& m : adapter.modules) {
    bool found = false;
    for (const auto& s : sources) found = found || s.lora == &m;
    if (!found) {
      throw Error(adapter_dir.string() + ": adapter module '" + m.module + "' has no weight in " + model_dir.string());
    }
    ++merged;
  }
  return merged;
}

// The vocabulary as the converter picks it: tokenizer.model (sentencepiece) when present, else tokenizer.json's
// byte-level BPE (Llama 3, Qwen).
struct ModelVocab {
  std::optional<SentencePieceVocab> sp;
  std::optional<BpeVocab> bpe;
  void add_to(GgufWriter& w) const {
    if (sp) {
      add_sentencepiece_vocab(w, *sp);
    } else {
      add_bpe_vocab(w, *bpe);
    }
  }
};

ModelVocab load_model_vocab(const fs::path& model_dir, const io::LlamaConfig& config) {
  ModelVocab v;
  if (fs::exists(model_dir / "tokenizer.model")) {
    v.sp = load_sentencepiece_vocab(model_dir, config.vocab_size, config);
  } else {
    v.bpe = load_bpe_vocab(model_dir, config.vocab_size);
  }
  return v;
}

}  // namespace

ExportSummary export_model_gguf(const fs::path& model_dir, const fs::path& out, const ExportOptions& options) {
  check_output_path(out, options.overwrite);
  const auto config = io::load_llama_config(model_dir / "config.json");
  const std::string arch = gguf_architecture(config, model_dir / "config.json");
  const auto ckpt = io::Checkpoint::open(model_dir);
  const ModelVocab vocab = load_model_vocab(model_dir, config);

  // Optional adapter to merge.
  std::optional<lora::AdapterFile> adapter;
  if (!options.adapter_dir.empty()) {
    adapter = lora::load_adapter(options.adapter_dir);
    lora::check_adapter_shapes(*adapter, projection_shapes(config), model_dir.string());
  }

  const auto expected = model::expected_llama_tensors(config);
  const std::vector<Source> sources = plan_sources(model_dir, config, ckpt, expected, adapter ? &*adapter : nullptr);
  const int64_t merged = adapter ? check_adapter_modules(*adapter, sources, options.adapter_dir, model_dir) : 0;

  const auto rope_factors = llama3_rope_factors(config);
  bool quantized = false;
  GgufWriter w;
  std::vector<std::pair<std::string, GgmlType>> planned;  // gguf name, type (sources order, rope_freqs first)
  if (!rope_factors.empty()) planned.emplace_back("rope_freqs.weight", GgmlType::kF32);
  KQuantModel mix_model{config.num_hidden_layers, /*has_output=*/false};  // what the K-quant mixes depend on
  for (const auto& s : sources) mix_model.has_output |= *family_tensor_name(s.hf_name, config) == "output.weight";
  for (const auto& s : sources) {
    const std::string gname = *family_tensor_name(s.hf_name, config);
    const GgmlType t = tensor_type_for(gname, expected.at(s.hf_name), options.out_type, mix_model);
    quantized = quantized || ggml_is_quantized(t);
    planned.emplace_back(gname, t);
  }
  add_general(w, arch, "model", options.name.empty() ? folder_name(model_dir) : options.name, options.out_type,
              quantized);
  add_family_hparams(w, config);
  vocab.add_to(w);
  size_t k = 0;
  if (!rope_factors.empty())
    w.add_tensor("rope_freqs.weight", {static_cast<int64_t>(rope_factors.size())}, planned[k++].second);
  for (const auto& s : sources) w.add_tensor(planned[k].first, expected.at(s.hf_name), planned[k].second), ++k;

  const size_t first_weight = rope_factors.empty() ? 0 : 1;
  Progress progress("export gguf", static_cast<double>(w.tensors().size()), "tensors");
  w.write_file(
      out,
      [&](size_t i, const TensorSpec& spec) -> torch::Tensor {
        if (i < first_weight) return torch::tensor(rope_factors, torch::kFloat32);
        const Source& s = sources[i - first_weight];
        const std::string module = strip_weight(s.hf_name);
        torch::Tensor t;
        if (s.bnb) {
          t = quant::dequantize_4bit(io::bnb_read(ckpt, module), torch::kFloat32);
        } else {
          t = ckpt.get(s.hf_name);
        }
        if (s.lora) {
          // W' = W + scale * B @ A, in fp32: (out, r) @ (r, in) -> (out, in)
          const auto delta = torch::matmul(s.lora->b.to(torch::kFloat32), s.lora->a.to(torch::kFloat32));
          t = t.to(torch::kFloat32) + delta * s.lora->scale();
        }
        t = family_tensor_data(s.hf_name, t, config);
        // llama-quantize reads the weights from our f16 file, so a K-quant mix quantizes their fp16 values.
        if (is_kquant_mix(options.out_type) && spec.type != GgmlType::kF32) t = t.to(torch::kHalf);
        return t;
      },
      [&](size_t i, const TensorSpec& spec) {
        if (i >= first_weight) {
          const Source& s = sources[i - first_weight];
          if (s.bnb) {
            for (const auto& key : io::bnb_keys(ckpt, strip_weight(s.hf_name))) ckpt.release(key);
          } else {
            ckpt.release(s.hf_name);
          }
        }
        if (options.show_progress) progress.advance(1, spec.name);
      });
  if (options.show_progress) progress.finish();
  auto summary = summarize(out, w);
  summary.merged_modules = merged;
  return summary;
}

namespace {

// One adapter module as llama.cpp's GGUF LoRA holds it.
struct AdapterItem {
  const lora::AdapterModule* m;
  std::string gname;  // "blk.0.attn_q.weight"
  double fold;        // extra factor folded into B (1 unless alpha/rank patterns make scales differ)
};

// The adapter's modules in llama.cpp's names; refuses modules llama.cpp cannot load as a LoRA.
std::vector<AdapterItem> adapter_items(const lora::AdapterFile& adapter, const fs::path& adapter_dir, double alpha) {
  std::vector<AdapterItem> items;
  for (const auto& m : adapter.modules) {
    if (m.module == "lm_head" || ends_with(m.module, "embed_tokens")) {
      throw Error(adapter_dir.string() + ": adapter module '" + m.module + "' cannot be exported as a GGUF LoRA " +
                  "(llama.cpp's converter accepts only layer projections)\nHINT: merge it instead: " +
                  "qlora-export-gguf --model BASE --adapter " + adapter_dir.string() + " --out FILE.gguf");
    }
    const auto gname = gguf_tensor_name(m.module + ".weight");
    if (!gname || gname->rfind("blk.", 0) != 0) {
      throw Error(adapter_dir.string() + ": adapter module '" + m.module + "' has no llama.cpp LoRA equivalent");
    }
    const double r = static_cast<double>(m.b.size(1));
    const double fold = m.scale() * r / alpha;
    if (std::abs(fold - 1.0) > 1e-6) {
      spdlog::info("{}: scale {:.6g} differs from alpha/r = {:.6g}; folded into lora_b", m.module, m.scale(),
                   alpha / r);
    }
    items.push_back({&m, *gname, std::abs(fold - 1.0) > 1e-6 ? fold : 1.0});
  }
  return items;
}

}  // namespace

ExportSummary export_adapter_gguf(const fs::path& adapter_dir, const fs::path& base_dir, const fs::path& out,
                                  const AdapterExportOptions& options) {
  if (options.out_type == OutType::kQ4_0 || is_kquant_mix(options.out_type)) {
    throw Error("GGUF LoRA adapters cannot be written as " + out_type_name(options.out_type) +
                "\nHINT: use --outtype f32 (default), f16, bf16 or q8_0");
  }
  check_output_path(out, options.overwrite);
  const auto adapter = lora::load_adapter(adapter_dir);
  fs::path base = base_dir;
  if (base.empty()) {
    if (!adapter.base_model_name_or_path.empty() && fs::is_directory(adapter.base_model_name_or_path)) {
      base = adapter.base_model_name_or_path;
    } else {
      throw Error(adapter_dir.string() +
                  ": the base model folder is needed (for its config.json)\nHINT: pass --base DIR");
    }
  }
  const auto config = io::load_llama_config(base / "config.json");
  if (gguf_architecture(config, base / "config.json") != "llama") {
    throw_file_error(
        (base / "config.json").string(),
        std::string("GGUF LoRA adapters of ") + io::family_name(config.family) + " models are not supported",
        "merge the adapter into the model instead: qlora-export-gguf --model BASE --adapter DIR --out F");
  }
  lora::check_adapter_shapes(adapter, projection_shapes(config), base.string());

  // One alpha for the file; llama.cpp scales by alpha / r with r = lora_b's ne[0].
  const auto& cfg = adapter.config;
  const double alpha = cfg.rslora ? cfg.alpha * std::sqrt(static_cast<double>(cfg.r)) : cfg.alpha;

  const std::vector<AdapterItem> items = adapter_items(adapter, adapter_dir, alpha);
  if (items.empty()) throw Error(adapter_dir.string() + ": the adapter has no modules");

  GgufWriter w;
  bool quantized = false;
  std::vector<std::tuple<std::string, std::vector<int64_t>, GgmlType>> planned;
  for (const auto& it : items) {
    const auto a_shape = it.m->a.sizes().vec();  // (r, in)  -> ne [in, r]
    const auto b_shape = it.m->b.sizes().vec();  // (out, r) -> ne [r, out]
    planned.emplace_back(it.gname + ".lora_a", a_shape, tensor_type_for(it.gname, a_shape, options.out_type));
    planned.emplace_back(it.gname + ".lora_b", b_shape, tensor_type_for(it.gname, b_shape, options.out_type));
  }
  for (const auto& [n, s, t] : planned) quantized = quantized || ggml_is_quantized(t);
  add_general(w, "llama", "adapter", options.name.empty() ? folder_name(adapter_dir) : options.name, options.out_type,
              quantized);
  w.add_string("adapter.type", "lora");
  w.add_f32("adapter.lora.alpha", static_cast<float>(alpha));
  for (const auto& [n, s, t] : planned) w.add_tensor(n, s, t);

  w.write_file(out, [&](size_t i, const TensorSpec&) -> torch::Tensor {
    const AdapterItem& it = items[i / 2];
    if (i % 2 == 0) return it.m->a;
    torch::Tensor b = it.m->b;
    if (it.fold != 1.0) b = b.to(torch::kFloat32) * it.fold;
    if (const int64_t heads = permute_heads_for(it.m->module, config)) b = permute_qk(b, heads);
    return b;
  });
  return summarize(out, w);
}

}  // namespace qlora::gguf
