#include "lora/merge.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/threads.h"
#include "io/bnb_format.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "lora/peft_io.h"
#include "quant/quantized_tensor.h"

namespace qlora::lora {

namespace {

constexpr const char* kQuantStateTag = ".weight.quant_state.bitsandbytes__";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "model.layers.3.mlp.down_proj.weight" -> true (the 7 decoder projections, the ones bnb quantizes).
bool is_projection_weight(const std::string& name) {
  for (const auto& s : llama_projection_suffixes()) {
    if (ends_with(name, "." + s + ".weight")) return true;
  }
  return false;
}

// Expected (out, in) of a projection from the config (used for 4-bit bases, whose stored shape is packed).
std::optional<std::pair<int64_t, int64_t>> projection_shape(const io::LlamaConfig& c, const std::string& module) {
  if (module == "lm_head") return std::make_pair(c.vocab_size, c.hidden_size);
  for (const auto& p : io::layer_projections(c)) {
    const std::string path = p.path();
    const size_t at = module.size() - std::min(module.size(), path.size());
    if (module.compare(at, std::string::npos, path) == 0 && (at == 0 || module[at - 1] == '.')) {
      return std::make_pair(p.out, p.in);
    }
  }
  return std::nullopt;
}

bool is_copied_side_file(const std::string& name) {
  return name.rfind("tokenizer", 0) == 0 || name == "special_tokens_map.json" || name == "added_tokens.json" ||
         name == "generation_config.json" || name.rfind("chat_template", 0) == 0;
}

RequantError requant_error(const std::string& module, bool merged, const torch::Tensor& w,
                           const quant::QuantizedTensor& q) {
  torch::NoGradGuard no_grad;
  torch::Tensor d = quant::dequantize_4bit(q, torch::kFloat32).reshape(w.sizes());
  torch::Tensor err = (d - w).abs_();
  torch::Tensor aw = w.abs();
  RequantError e;
  e.module = module;
  e.merged = merged;
  e.mean_rel = err.mean().item<double>() / std::max(aw.mean().item<double>(), 1e-30);
  e.max_rel = err.max().item<double>() / std::max(aw.max().item<double>(), 1e-30);
  return e;
}

}  // namespace

MergeFormat parse_merge_format(const std::string& name) {
  if (name == "bf16" || name == "bfloat16") return MergeFormat::kBF16;
  if (name == "fp16" || name == "float16") return MergeFormat::kFP16;
  if (name == "nf4") return MergeFormat::kNF4;
  throw Error(fmt::format("unknown merge dtype '{}'\nHINT: use bf16, fp16 or nf4", name));
}

std::string merge_format_name(MergeFormat f) {
  switch (f) {
    case MergeFormat::kBF16:
      return "bf16";
    case MergeFormat::kFP16:
      return "fp16";
    case MergeFormat::kNF4:
      return "nf4";
  }
  return "?";
}

uint64_t parse_size_bytes(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0) throw Error(fmt::format("size '{}' must start with a number, e.g. 5GB or 500MB", text));
  const uint64_t n = std::stoull(text.substr(0, i));
  std::string unit = text.substr(i);
  for (auto& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  // transformers convert_file_size_to_int: decimal units for GB/MB/KB, binary for GIB/MIB/KIB.
  static const std::map<std::string, uint64_t> kUnits = {{"", 1},
                                                         {"B", 1},
                                                         {"KB", 1000},
                                                         {"MB", 1000000},
                                                         {"GB", 1000000000},
                                                         {"KIB", 1 << 10},
                                                         {"MIB", 1ull << 20},
                                                         {"GIB", 1ull << 30},
                                                         {"TB", 1000000000000ull},
                                                         {"TIB", 1ull << 40}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end())
    throw Error(fmt::format("size '{}': unknown unit '{}' (use B, KB, MB, GB, KiB, MiB, GiB)", text, unit));
  if (n == 0) throw Error(fmt::format("size '{}' must be positive", text));
  return n * it->second;
}

namespace {

// Everything step 1 of a merge learns about its inputs before any heavy work.
struct MergeInputs {
  MergeInputs(AdapterFile a, io::LlamaConfig c, nlohmann::json cj, io::Checkpoint k)
      : adapter(std::move(a)), config(std::move(c)), config_json(std::move(cj)), ckpt(std::move(k)) {}

  AdapterFile adapter;
  io::LlamaConfig config;
  nlohmann::json config_json;
  io::Checkpoint ckpt;
  std::vector<std::string> names;
  std::set<std::string> quantized_prefixes;               // bnb-4bit projections in the base
  std::set<std::string> bnb_aux;                          // keys of quantized projections other than P.weight itself
  std::map<std::string, const AdapterModule*> by_weight;  // "<module>.weight" -> adapter module
  // Quant settings of an nf4 output.
  quant::QuantType qtype = quant::QuantType::kNF4;
  bool qdouble = true;
  int64_t qblock = quant::kDefaultBlocksize;
  std::string compute_dtype;
  torch::ScalarType out16 = torch::kBFloat16;
};

// Step 1: checks before any heavy work (output path, adapter vs base shapes) and the output's quant settings.
MergeInputs prepare_merge(const MergeOptions& o, MergeReport& report) {
  check_output_path(o.out_dir, o.overwrite);
  const fs::path config_path = o.base_dir / "config.json";
  // In this order, so that of several problems the same one is reported first every time.
  AdapterFile adapter = load_adapter(o.adapter_dir);
  io::LlamaConfig config = io::load_llama_config(config_path);
  nlohmann::json config_json = read_json_file(config_path);
  io::Checkpoint ckpt = io::Checkpoint::open(o.base_dir);
  MergeInputs in(std::move(adapter), std::move(config), std::move(config_json), std::move(ckpt));
  in.names = in.ckpt.names();
  for (const auto& n : in.names) {
    const auto pos = n.find(kQuantStateTag);
    if (pos != std::string::npos) in.quantized_prefixes.insert(n.substr(0, pos));
  }
  for (const auto& p : in.quantized_prefixes) {
    for (const auto& k : io::bnb_keys(in.ckpt, p)) {
      if (k != p + ".weight") in.bnb_aux.insert(k);
    }
  }
  report.base_was_4bit = !in.quantized_prefixes.empty();

  std::map<std::string, std::pair<int64_t, int64_t>> shapes;  // module -> (out, in)
  for (const auto& m : in.adapter.modules) {
    const std::string key = m.module + ".weight";
    if (!in.ckpt.contains(key)) continue;  // reported by check_adapter_shapes
    if (in.quantized_prefixes.count(m.module)) {
      if (auto s = projection_shape(in.config, m.module)) shapes[m.module] = *s;
    } else {
      const auto& info = in.ckpt.info(key);
      if (info.shape.size() == 2) shapes[m.module] = {info.shape[0], info.shape[1]};
    }
  }
  check_adapter_shapes(in.adapter, shapes, "base model " + o.base_dir.string());
  for (const auto& m : in.adapter.modules) in.by_weight[m.module + ".weight"] = &m;

  in.compute_dtype = in.config.torch_dtype;
  if (in.config.quantization) {
    in.qtype = quant::parse_quant_type(in.config.quantization->quant_type);
    in.qdouble = in.config.quantization->double_quant;
    in.compute_dtype = in.config.quantization->compute_dtype;
  }
  if (o.format == MergeFormat::kNF4 && !in.quantized_prefixes.empty()) {
    const auto q0 = io::bnb_read(in.ckpt, *in.quantized_prefixes.begin());
    in.qtype = q0.type;
    in.qdouble = q0.double_quant;
    in.qblock = q0.blocksize;
  }
  in.out16 = o.format == MergeFormat::kFP16 ? torch::kFloat16 : torch::kBFloat16;
  return in;
}

// Step 2: one base tensor into the output (merged with its adapter module when it has one).
class TensorMerger {
 public:
  TensorMerger(const MergeOptions& o, const MergeInputs& in, io::ShardedWriter& writer, MergeReport& report)
      : o_(o), in_(in), writer_(writer), report_(report) {}

  void merge(const std::string& name) {
    torch::NoGradGuard no_grad;
    const AdapterModule* am = in_.by_weight.count(name) ? in_.by_weight.at(name) : nullptr;
    const std::string prefix = ends_with(name, ".weight") ? name.substr(0, name.size() - 7) : name;
    if (in_.quantized_prefixes.count(prefix) > 0) {
      merge_quantized(name, prefix, am);
    } else {
      merge_dense(name, prefix, am);
    }
  }

 private:
  static void add_delta(torch::Tensor& w, const AdapterModule& am) {
    w.add_(torch::matmul(am.b.to(torch::kFloat32), am.a.to(torch::kFloat32)) * am.scale());
  }

  void emit(const std::string& name, const torch::Tensor& t) {
    writer_.add(name, t);
    ++report_.tensors_written;
  }

  void emit_quantized(const std::string& prefix, const quant::QuantizedTensor& q) {
    for (const auto& [k, t] : io::bnb_tensors(prefix, q)) emit(k, t);
  }

  // A bnb-4bit projection of the base.
  void merge_quantized(const std::string& name, const std::string& prefix, const AdapterModule* am) {
    const quant::QuantizedTensor q = io::bnb_read(in_.ckpt, prefix);
    for (const auto& k : io::bnb_keys(in_.ckpt, prefix)) in_.ckpt.release(k);
    if (!am && o_.format == MergeFormat::kNF4) {
      emit_quantized(prefix, q);  // untouched projection: same bytes as the base
    } else {
      torch::Tensor w = quant::dequantize_4bit(q, torch::kFloat32).reshape(q.shape);
      if (am) add_delta(w, *am);
      if (o_.format == MergeFormat::kNF4) {
        quant::QuantizedTensor q2 = quant::quantize_4bit(w, q.type, q.blocksize, q.double_quant);
        q2.dtype = q.dtype;
        report_.requant.push_back(requant_error(prefix, true, w, q2));
        emit_quantized(prefix, q2);
      } else {
        emit(name, w.to(in_.out16));
      }
    }
    report_.modules_merged += am ? 1 : 0;
  }

  // A 16/32-bit tensor of the base.
  void merge_dense(const std::string& name, const std::string& prefix, const AdapterModule* am) {
    const torch::Tensor t = in_.ckpt.get(name);
    const bool quantize_now = o_.format == MergeFormat::kNF4 && is_projection_weight(name);
    if (am || quantize_now) {
      torch::Tensor w = t.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
      in_.ckpt.release(name);
      if (am) add_delta(w, *am);
      if (quantize_now) {
        quant::QuantizedTensor q2 = quant::quantize_4bit(w, in_.qtype, in_.qblock, in_.qdouble);
        q2.dtype = t.scalar_type();
        report_.requant.push_back(requant_error(prefix, am != nullptr, w, q2));
        emit_quantized(prefix, q2);
      } else {
        emit(name, w.to(o_.format == MergeFormat::kNF4 ? t.scalar_type() : in_.out16));
      }
      report_.modules_merged += am ? 1 : 0;
    } else if (o_.format != MergeFormat::kNF4 && c10::isFloatingType(t.scalar_type()) && t.scalar_type() != in_.out16) {
      emit(name, t.to(in_.out16));
      in_.ckpt.release(name);
    } else {
      emit(name, t);  // unchanged: a view of the mapping, written when its shard is flushed
    }
  }

  const MergeOptions& o_;
  const MergeInputs& in_;
  io::ShardedWriter& writer_;
  MergeReport& report_;
};

// Step 3: config.json (quantization_config or the 16-bit dtype) and the side files (tokenizer, generation config).
void write_merged_config(const MergeOptions& o, MergeInputs& in, const fs::path& out_dir) {
  nlohmann::json& cj = in.config_json;
  const char* dtype_key = cj.contains("dtype") && !cj.contains("torch_dtype") ? "dtype" : "torch_dtype";
  if (o.format == MergeFormat::kNF4) {
    cj["quantization_config"] = io::bnb_quantization_config(in.qtype, in.qdouble, in.compute_dtype);
  } else {
    cj.erase("quantization_config");
    cj[dtype_key] = io::torch_dtype_name(in.out16);
  }
  write_file_atomic(out_dir / "config.json", cj.dump(2) + "\n");
  for (const auto& entry : fs::directory_iterator(o.base_dir)) {
    const std::string fname = entry.path().filename().string();
    if (entry.is_regular_file() && is_copied_side_file(fname)) fs::copy_file(entry.path(), out_dir / fname);
  }
}

void summarize_requant(MergeReport& report) {
  if (report.requant.empty()) return;
  double sum = 0.0;
  for (const auto& e : report.requant) {
    sum += e.mean_rel;
    report.requant_max_rel = std::max(report.requant_max_rel, e.max_rel);
    spdlog::info("requant {}{}: mean rel err {:.4e}, max rel err {:.4e}", e.module, e.merged ? " (merged)" : "",
                 e.mean_rel, e.max_rel);
  }
  report.requant_mean_rel = sum / static_cast<double>(report.requant.size());
}

}  // namespace

MergeReport merge_adapter(const MergeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  MergeReport report;
  report.out_dir = o.out_dir;
  report.format = o.format;
  MergeInputs in = prepare_merge(o, report);
  spdlog::info("merge: base {} ({}, {} tensors, {}), adapter {} ({} modules) -> {} [{}]", o.base_dir.string(),
               report.base_was_4bit ? "bnb-4bit" : "16-bit", in.names.size(), format_bytes(in.ckpt.total_bytes()),
               o.adapter_dir.string(), in.adapter.modules.size(), o.out_dir.string(), merge_format_name(o.format));

  AtomicDir out(o.out_dir, o.overwrite);
  io::ShardedWriter writer(out.path(), o.max_shard_bytes);
  TensorMerger merger(o, in, writer, report);
  Progress progress("merge", static_cast<double>(in.ckpt.total_bytes()) / (1 << 20), "MiB");
  for (const auto& name : in.names) {
    if (stop_requested()) throw Interrupted("merge stopped before committing; nothing was written");
    const uint64_t nbytes = in.ckpt.info(name).nbytes();
    report.bytes_read += nbytes;
    if (!in.bnb_aux.count(name)) merger.merge(name);  // bnb side tensors are written with their P.weight
    progress.advance(static_cast<double>(nbytes) / (1 << 20), fmt::format("{} merged", report.modules_merged));
  }
  TORCH_CHECK(report.modules_merged == static_cast<int64_t>(in.adapter.modules.size()), "merge: merged ",
              report.modules_merged, " of ", in.adapter.modules.size(), " adapter modules");
  writer.finish();

  write_merged_config(o, in, out.path());
  for (const auto& entry : fs::directory_iterator(out.path())) report.files.push_back(entry.path().filename().string());
  std::sort(report.files.begin(), report.files.end());
  out.commit();
  progress.finish();
  summarize_requant(report);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace qlora::lora
