#include "model/loader.h"

#include <spdlog/spdlog.h>

#include <set>

#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "io/bnb_format.h"
#include "io/safetensors.h"
#include "model/llama.h"

namespace qlora::model {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// "model.layers.0.self_attn.q_proj.weight" -> "model.layers.0.self_attn.q_proj".
std::string module_of(const std::string& tensor_name) {
  return tensor_name.substr(0, tensor_name.rfind('.'));
}

std::string shard_of(const io::Checkpoint& ckpt, const std::string& name) {
  for (const auto& s : ckpt.shards()) {
    if (s->contains(name)) return s->path().filename().string();
  }
  return "?";
}

// The bias tensor of projection `module` (undefined if it has none), carried over when the projection is replaced:
// a bias read before its weight has been copied into it already, one read after is copied into it later.
// (The new module's buffer is a detach() of it: the same storage.)
torch::Tensor projection_bias(const std::map<std::string, torch::Tensor>& dense, const std::string& module) {
  auto it = dense.find(module + ".bias");
  return it == dense.end() ? torch::Tensor() : it->second;
}

bool is_float_dtype(torch::ScalarType t) {
  return t == torch::kBFloat16 || t == torch::kFloat16 || t == torch::kFloat32;
}

}  // namespace

std::map<std::string, std::vector<int64_t>> expected_llama_tensors(const io::LlamaConfig& c) {
  std::map<std::string, std::vector<int64_t>> out;
  const int64_t h = c.hidden_size;
  out["model.embed_tokens.weight"] = {c.vocab_size, h};
  const auto projections = io::layer_projections(c);
  const auto norms = io::layer_norms(c);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const auto& n : norms) out[p + n.path + ".weight"] = {n.size};
    for (const auto& proj : projections) {
      out[p + proj.path() + ".weight"] = {proj.out, proj.in};
      if (proj.bias) out[p + proj.path() + ".bias"] = {proj.out};
    }
  }
  out["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) out["lm_head.weight"] = {c.vocab_size, h};
  return out;
}

bool is_projection_target(const std::string& tensor_name, const std::vector<std::string>& targets) {
  if (!ends_with(tensor_name, ".weight")) return false;
  const std::string mod = module_of(tensor_name);
  for (const auto& t : targets) {
    if (ends_with(mod, "." + t) || mod == t) return true;
  }
  return false;
}

namespace {

// Validates the whole checkpoint against config.json before anything is allocated, collecting every problem into
// one qlora::Error. Returns the modules stored bnb-4bit.
std::set<std::string> validate_checkpoint(const fs::path& dir, const io::LlamaConfig& config,
                                          const io::Checkpoint& ckpt,
                                          const std::map<std::string, std::vector<int64_t>>& expected) {
  std::vector<std::string> problems;
  std::set<std::string> seen;         // expected names found (dense or bnb)
  std::set<std::string> bnb_modules;  // modules stored quantized in the checkpoint
  for (const auto& name : ckpt.names()) {
    if (ends_with(name, ".rotary_emb.inv_freq")) continue;
    const auto pos = name.find(".weight.");
    if (pos != std::string::npos && expected.count(name.substr(0, pos + 7))) {
      if (name.find(".weight.quant_state.bitsandbytes__") != std::string::npos) bnb_modules.insert(name.substr(0, pos));
      continue;  // bnb side tensors are checked by bnb_read
    }
    auto it = expected.find(name);
    if (it == expected.end()) {
      if (name == "lm_head.weight" && config.tie_word_embeddings) continue;  // tied: HF ignores a stored copy
      problems.push_back("unexpected tensor '" + name + "' (" + shard_of(ckpt, name) + ")");
      continue;
    }
    seen.insert(name);
    const io::TensorInfo& info = ckpt.info(name);
    const bool quantized = ends_with(name, ".weight") && io::bnb_is_quantized(ckpt, module_of(name));
    if (quantized) continue;  // packed U8 shape checked by bnb_read
    if (!is_float_dtype(info.dtype)) {
      problems.push_back("tensor '" + name + "' has dtype " + info.dtype_name + ", expected BF16/F16/F32 (" +
                         shard_of(ckpt, name) + ")");
    }
    if (info.shape != it->second) {
      problems.push_back("tensor '" + name + "' has shape " + shape_str(info.shape) + ", expected " +
                         shape_str(it->second) + " (" + shard_of(ckpt, name) + ")");
    }
  }
  for (const auto& [name, shape] : expected) {
    if (!seen.count(name)) problems.push_back("missing tensor '" + name + "' " + shape_str(shape));
  }
  if (!problems.empty()) {
    std::string msg = dir.string() + ": checkpoint does not match config.json (" + std::to_string(problems.size()) +
                      " problem" + (problems.size() > 1 ? "s" : "") + "):";
    for (const auto& p : problems) msg += "\n  " + p;
    msg += "\nHINT: the weights and config.json must come from the same model (hidden " +
           std::to_string(config.hidden_size) + ", layers " + std::to_string(config.num_hidden_layers) + ", vocab " +
           std::to_string(config.vocab_size) + ").";
    throw Error(msg);
  }
  return bnb_modules;
}

}  // namespace

LlamaModel load_model(const fs::path& dir, const LoadOptions& options) {
  const io::LlamaConfig config = io::load_llama_config(dir / "config.json");
  if (options.quantize_lm_head && !options.quant) {
    throw Error(dir.string() +
                ": quantizing lm_head needs a 4-bit quant type, and quant is none (the projections load dense)\n"
                "HINT: qlora-generate --quantize-lm-head goes with --quant nf4 (the default) or fp4");
  }
  if (options.quantize_lm_head && config.tie_word_embeddings) {
    throw Error((dir / "config.json").string() +
                ": tie_word_embeddings is true: lm_head is the token embedding, and there is no separate lm_head to "
                "quantize");
  }
  const io::Checkpoint ckpt = io::Checkpoint::open(dir);
  const auto expected = expected_llama_tensors(config);

  const std::set<std::string> bnb_modules = validate_checkpoint(dir, config, ckpt, expected);

  // 2. Build the skeleton and stream the tensors in file order.
  LlamaModel model(config, options.compute_dtype);
  std::map<std::string, torch::Tensor> dense;
  for (auto& [name, t] : model->named_dense_tensors()) dense[name] = t;
  std::vector<std::string> targets = options.quant_targets;
  if (options.quantize_lm_head) targets.push_back("lm_head");

  torch::NoGradGuard no_grad;
  Progress progress("loading " + dir.filename().string(), static_cast<double>(expected.size()), "tensors");
  for (const auto& name : ckpt.names()) {
    if (!expected.count(name)) continue;
    const std::string mod = module_of(name);
    const bool is_linear = ends_with(name, ".weight") && name != "model.embed_tokens.weight" &&
                           name.find("norm.weight") == std::string::npos;
    const torch::Tensor bias = is_linear ? projection_bias(dense, mod) : torch::Tensor();
    if (is_linear && bnb_modules.count(mod)) {
      quant::QuantizedTensor q = io::bnb_read(ckpt, mod);
      if (options.quant && is_projection_target(name, targets)) {
        if (q.type != *options.quant) {
          spdlog::warn("{}: stored as {}, keeping it (requested {})", mod, quant::quant_type_name(q.type),
                       quant::quant_type_name(*options.quant));
        }
        model->replace_linear(mod, FrozenLinearImpl::quantized(q.to(options.device), bias));
      } else {
        torch::Tensor w = quant::dequantize_4bit(q, options.compute_dtype);
        model->replace_linear(mod, FrozenLinearImpl::dense(w.to(options.device), bias));
      }
    } else {
      torch::Tensor view = ckpt.get(name);
      if (name == "lm_head.weight" && options.lm_head_16bit && !options.quantize_lm_head &&
          options.compute_dtype == torch::kFloat32 && view.scalar_type() == torch::kBFloat16 &&
          options.device.is_cpu()) {
        model->replace_linear(mod, FrozenLinearImpl::dense(view.clone(), bias));  // a CPU model: no device copy
      } else if (dense.count(name) && !(name == "lm_head.weight" && options.quantize_lm_head && options.quant)) {
        dense[name].copy_(view);  // converts to the compute dtype
      } else if (is_linear && options.quant && is_projection_target(name, targets)) {
        model->replace_linear(
            mod,
            FrozenLinearImpl::quantized(
                quant::quantize_4bit(view, *options.quant, options.blocksize, options.double_quant).to(options.device),
                bias));
      } else {
        torch::Tensor w = view.to(options.compute_dtype).clone();
        model->replace_linear(mod, FrozenLinearImpl::dense(w.to(options.device), bias));
      }
      ckpt.release(name);
    }
    if (options.show_progress) progress.advance(1.0, "rss " + format_bytes(static_cast<double>(current_rss_bytes())));
  }
  if (options.show_progress) progress.finish("peak rss " + format_bytes(static_cast<double>(peak_rss_bytes())));
  if (options.device != torch::Device(torch::kCPU)) model->to(options.device);
  return model;
}

}  // namespace qlora::model
