#include "plan/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>

#include "common/error.h"
#include "plan/time_plan.h"

namespace qlora::plan {
namespace {

constexpr int64_t kFp32 = 4;
constexpr int64_t kBool = 1;

int64_t dtype_bytes(torch::ScalarType t) {
  return static_cast<int64_t>(c10::elementSize(t));
}

struct Proj {
  std::string name;
  int64_t out, in;
};

std::vector<Proj> plan_projections(const io::LlamaConfig& c) {
  std::vector<Proj> out;
  for (const auto& p : io::layer_projections(c)) out.push_back({p.name, p.out, p.in});
  return out;
}

// A CPU run: the host is the device (offloading to it saves nothing).
bool on_host(const MemoryPlanInputs& in) {
  return in.device.rfind("cpu", 0) == 0;
}
// Whether the fused CPU kernels of ops/fused_ops.h (which keep no fp32 copies) do the run's element-wise work.
bool uses_fused_cpu_ops(const MemoryPlanInputs& in) {
  return in.fused_cpu_ops && on_host(in);
}

bool is_quant_target(const MemoryPlanInputs& in, const std::string& proj) {
  return in.quant && std::find(in.quant_targets.begin(), in.quant_targets.end(), proj) != in.quant_targets.end();
}

// Whether the blocked CPU attention kernel runs the layers' attention (not Gemma 2's soft-capped eager attention).
bool blocked_attention(const MemoryPlanInputs& in) {
  return in.blocked_cpu_attention && on_host(in) && in.compute_dtype == torch::kBFloat16 &&
         in.config.traits.attn_softcap <= 0;
}

// Tokens per loss chunk (model/llama.cpp causal_lm_loss: chunk = max(1, chunk_tokens / B) positions per row).
int64_t loss_chunk_rows_tokens(const MemoryPlanInputs& in, bool* chunked) {
  const int64_t t = in.seq_len - 1;
  const int64_t per_row = std::max<int64_t>(1, in.loss_chunk_tokens / in.micro_batch);
  *chunked = per_row < t;
  return in.micro_batch * std::min(per_row, t);
}

}  // namespace

// Per layer, for N tokens, what autograd keeps when the layer runs with grad (see model/llama.cpp DecoderLayer,
// ops/attention.cpp, ops/rope.cpp, lora/lora_linear.cpp, quant/linear_4bit.cpp):
//  - rms_norm keeps x.to(fp32) (4H) twice per layer (input and post-attention norm);
//  - linear_4bit keeps only the 4-bit weight (no activation); a LoRA module keeps its input (once per distinct
//    input when dropout is off) or, with dropout on CPU (x * noise), the noise and the dropped input (2 x e x in
//    per module; CUDA's fused dropout keeps a bool mask instead of the noise), plus x·Aᵀ (e x r);
//  - rope keeps only cos/sin (shared by all layers); attention (SDPA with enable_gqa, ops/attention.h) keeps the
//    roped q (e Dq), k and v at their kv heads (e Dkv each, no per-query-head copies), its output (e Dq), an fp32
//    logsumexp per head and the additive copy of the (B, 1, T, T) mask it makes in the compute dtype (e T per
//    token: training always passes a mask, data/collate.h; the blocked CPU kernel keeps 3 int32 per token instead);
//    the output's (B, T, nH*d) reshape (a copy on CPU,
//    where the rope output is (B, nH, T, d) contiguous) is o_proj's input, kept only by its LoRA module;
//  - SwiGLU keeps gate and up (e I each; unfused also silu(gate)); their product, down_proj's input, is kept only
//    by down_proj's LoRA module (a tensor kept by several nodes is counted once).
int64_t layer_saved_activation_bytes(const MemoryPlanInputs& in) {
  const io::LlamaConfig& c = in.config;
  const int64_t e = dtype_bytes(in.compute_dtype);
  const int64_t n = in.micro_batch * in.seq_len;
  const int64_t h = c.hidden_size, dq = c.q_dim(), dkv = c.kv_dim(), im = c.intermediate_size;
  const bool dropout = in.lora_dropout > 0.0;
  const bool cuda = in.device.rfind("cuda", 0) == 0;
  const bool fused = uses_fused_cpu_ops(in);
  // Bytes per element of the saved dropout mask / noise: CUDA keeps a bool mask, LibTorch's CPU dropout the noise,
  // the fused CPU dropout only a seed.
  const int64_t per_mask = cuda ? kBool : fused ? 0 : e;
  const int64_t norm_in = fused ? e : kFp32;  // what RMSNorm keeps per element
  // Ranks of layer 0's modules (the activation count is per layer; modules of layer 0 come first).
  std::map<std::string, int64_t> rank;
  for (const auto& m : in.lora) {
    if (m.layer == 0) rank[m.proj] = m.r;
  }
  auto has = [&](const std::string& p) { return rank.count(p) > 0; };
  // Bytes per token kept for a group of LoRA modules sharing an input of width `width`.
  auto lora_input = [&](std::initializer_list<const char*> projs, int64_t width) {
    int64_t b = 0;
    bool any = false;
    for (const char* p : projs) {
      if (!has(p)) continue;
      any = true;
      b += e * rank[p];                          // x·Aᵀ, kept for B's gradient
      if (dropout) b += (e + per_mask) * width;  // dropped input + noise/mask
    }
    if (any && !dropout) b += e * width;  // the shared input itself
    return b;
  };
  int64_t per_token = 0;
  per_token += 2 * norm_in * h;  // two rms_norm inputs (fp32 copies unfused, x itself fused)
  if (c.traits.sandwich_norms) per_token += 2 * kFp32 * h + 2 * e * h;  // Gemma 2's two more norms (fp32 math)
  if (c.traits.qk_norm) per_token += norm_in * (dq + dkv);              // Qwen3's q/k norms
  per_token += lora_input({"q_proj", "k_proj", "v_proj", "qkv_proj"}, h);
  per_token += e * dq + 2 * e * dkv;                    // roped q; k and v at their kv heads
  per_token += e * dq + kFp32 * c.num_attention_heads;  // attention output and its logsumexp
  // The mask row: additive in the compute dtype (SDPA), or the blocked kernel's interval (lo, hi, own key).
  per_token += blocked_attention(in) ? 3 * 4 : e * in.seq_len;
  if (c.traits.attn_softcap > 0) {
    // Gemma 2's soft-capped eager attention keeps its (T, T) scores per head: scaled, capped, fp32 softmax, probs.
    per_token += (3 * e + kFp32) * c.num_attention_heads * in.seq_len;
  }
  per_token += lora_input({"o_proj"}, dq);  // o_proj's input (the output reshaped) if its LoRA keeps it
  per_token += lora_input({"gate_proj", "up_proj", "gate_up_proj"}, h);
  per_token += (fused ? 2 : 3) * e * im;       // gate, up (and silu(gate) unfused)
  per_token += lora_input({"down_proj"}, im);  // down's input silu(gate)*up if its LoRA keeps it
  return per_token * n;
}

namespace {

void add_item(MemoryPlan& p, const char* group, std::string name, int64_t bytes, std::string note) {
  p.items.push_back({group, std::move(name), bytes, std::move(note)});
  p.total_bytes += bytes;
}

// Frozen base: 4-bit projections by part, dense projections, embeddings, norms, lm_head. Returns the element count
// of the largest projection (its dequantized copy is a temporary).
int64_t plan_frozen(const MemoryPlanInputs& in, MemoryPlan& p) {
  const io::LlamaConfig& c = in.config;
  const int64_t e = dtype_bytes(in.compute_dtype);
  const int64_t layers = c.num_hidden_layers, h = c.hidden_size, v = c.vocab_size;
  auto add = [&](const char* group, std::string name, int64_t bytes, std::string note) {
    add_item(p, group, std::move(name), bytes, std::move(note));
  };
  int64_t codes = 0, absmax = 0, nested = 0, codebooks = 0, dense_proj = 0, largest_proj = 0, nq = 0, nd = 0;
  for (const auto& pr : plan_projections(c)) {
    const int64_t numel = pr.out * pr.in;
    largest_proj = std::max(largest_proj, numel);
    if (!is_quant_target(in, pr.name)) {
      dense_proj += layers * numel * e;
      nd += layers;
      continue;
    }
    const int64_t total = quant::QuantizedTensor::nbytes_for(numel, in.blocksize, in.double_quant);
    const int64_t nblocks = (numel + in.blocksize - 1) / in.blocksize;
    const int64_t c_codes = (numel + 1) / 2, c_book = 16 * kFp32;
    const int64_t c_absmax = in.double_quant ? nblocks : kFp32 * nblocks;
    const int64_t c_nested = total - c_codes - c_book - c_absmax;  // absmax2 + 256-entry map (double quant)
    codes += layers * c_codes;
    absmax += layers * c_absmax;
    nested += layers * c_nested;
    codebooks += layers * c_book;
    p.quantized_params += layers * numel;
    nq += layers;
    p.frozen_quantized_bytes += layers * total;
  }
  if (p.quantized_params > 0) {
    const std::string qt = quant::quant_type_name(*in.quant);
    const double bits = 8.0 * static_cast<double>(p.frozen_quantized_bytes) / static_cast<double>(p.quantized_params);
    add("frozen", qt + " codes", codes,
        fmt::format("{:.2f} G params x 4 bit ({} tensors, {:.4f} bit/param in all)", p.quantized_params / 1e9, nq,
                    bits));
    add("frozen", in.double_quant ? "absmax (uint8, double quant)" : "absmax (fp32)", absmax,
        fmt::format("1 per {} weights", in.blocksize));
    if (in.double_quant) add("frozen", "nested scales + dynamic maps", nested, "fp32 per 256 absmax + 256-entry map");
    add("frozen", "codebooks", codebooks, "16 x fp32 per tensor");
  }
  if (nd > 0) add("frozen", "dense projections", dense_proj, fmt::format("{} tensors in the compute dtype", nd));
  const int64_t embed = v * h * e;
  add("frozen", "embed_tokens", embed, fmt::format("{} x {} x {} B", v, h, e));
  // Norm weights and projection biases (Qwen2), all in the compute dtype.
  int64_t small = h;  // the final norm
  for (const auto& n : io::layer_norms(c)) small += layers * n.size;
  for (const auto& pr : io::layer_projections(c)) small += pr.bias ? layers * pr.out : 0;
  add("frozen", "norms and biases", small * e, fmt::format("{} x {} B", small, e));
  if (!c.tie_word_embeddings) add("frozen", "lm_head", embed, "dense (not quantized)");
  p.frozen_dense_bytes = dense_proj + embed + small * e + (c.tie_word_embeddings ? 0 : embed);
  p.frozen_bytes = p.frozen_quantized_bytes + p.frozen_dense_bytes;

  return largest_proj;
}

// LoRA: A/B and their gradients in the storage dtype, AdamW exp_avg + exp_avg_sq (fp32) on the device or, with
// optimizer offload on a GPU run, in host memory; compute-dtype copies cast in forward.
void plan_lora(const MemoryPlanInputs& in, MemoryPlan& p) {
  const int64_t e = dtype_bytes(in.compute_dtype);
  auto add = [&](const char* group, std::string name, int64_t bytes, std::string note) {
    add_item(p, group, std::move(name), bytes, std::move(note));
  };
  for (const auto& m : in.lora) p.lora_params += m.r * (m.in + m.out);
  const double mp = static_cast<double>(p.lora_params) / 1e6;
  const int64_t lb = dtype_bytes(in.lora_dtype);
  const std::string ln = in.lora_dtype == torch::kFloat32    ? "fp32"
                         : in.lora_dtype == torch::kBFloat16 ? "bf16"
                                                             : "fp16";
  add("lora", "adapter weights (" + ln + (ln == "fp32" ? " masters)" : ")"), lb * p.lora_params,
      fmt::format("{:.1f} M params in {} modules", mp, in.lora.size()));
  // bf16 adapters accumulate their gradients in fp32 once a step has a second micro-batch
  // (trainer::promote_grads_to_fp32), and AdamW updates fp32 masters of them beside its states.
  const bool fp32_grads = lb != kFp32 && in.grad_accum > 1;
  const int64_t gb = fp32_grads ? kFp32 : lb;
  add("lora", "adapter gradients (" + std::string(fp32_grads ? "fp32, accumulated" : ln) + ")", gb * p.lora_params, "");
  const int64_t masters = lb != kFp32 ? kFp32 * p.lora_params : 0;
  const int64_t adam = 2 * kFp32 * p.lora_params + masters;
  const std::string adam_name = masters > 0 ? "AdamW states (fp32 m, v) + fp32 masters" : "AdamW states (fp32 m, v)";
  if (in.optimizer_offload && !on_host(in)) {
    p.items.push_back({"host", adam_name, adam, "offloaded: host memory, not on the device"});
    p.host_bytes += adam;
  } else {
    add("lora", adam_name, adam, in.optimizer_offload ? "offload: the host is the device here" : "");
  }
  // forward casts A, B to the compute dtype (a no-op when they are stored in it); autograd keeps the copies until
  // backward: every layer's without checkpointing, one layer's at a time with it (the recompute makes them again).
  int64_t copies = 0;
  const bool cast = in.lora_dtype != in.compute_dtype;
  if (cast) {
    std::map<int64_t, int64_t> per_layer;
    for (const auto& m : in.lora) per_layer[m.layer] += m.r * (m.in + m.out);
    int64_t largest = 0;
    for (const auto& [l, n] : per_layer) largest = std::max(largest, n);
    copies = e * (in.gradient_checkpointing ? largest : p.lora_params);
  }
  add("lora", "adapter compute copies", copies,
      !cast                       ? "none: stored in the compute dtype"
      : in.gradient_checkpointing ? "A, B in the compute dtype, one layer at a time"
                                  : "A, B in the compute dtype, all layers");
  p.lora_state_bytes = (lb + gb) * p.lora_params + (p.host_bytes > 0 ? 0 : adam) + copies;
}

// Activations of one micro-batch, by phase. Returns what the peak phase adds to the stored activations.
int64_t plan_activations(const MemoryPlanInputs& in, MemoryPlan& p) {
  const io::LlamaConfig& c = in.config;
  const int64_t e = dtype_bytes(in.compute_dtype);
  const int64_t layers = c.num_hidden_layers, h = c.hidden_size, v = c.vocab_size;
  const int64_t n = in.micro_batch * in.seq_len;
  auto add = [&](const char* group, std::string name, int64_t bytes, std::string note) {
    add_item(p, group, std::move(name), bytes, std::move(note));
  };
  const int64_t saved_layer = layer_saved_activation_bytes(in);
  const int64_t layer_input = n * h * e;
  const int64_t mask_elems = in.micro_batch * in.seq_len * in.seq_len;
  const int64_t mask = mask_elems * kBool + 2 * n * c.head_dim * e;  // mask, cos/sin
  const bool fused = uses_fused_cpu_ops(in);
  const int64_t norm_in = fused ? e : kFp32;
  const int64_t hidden_out = n * h * (e + norm_in);  // final norm output + the input it keeps for backward
  // Live beyond the saved tensors while a layer runs forward: q/k/v/attention of the layer and the residual
  // stream, plus SDPA's conversion of the bool mask (its logical_not, and the additive copy itself when the layer
  // runs without grad under checkpointing; with grad that copy is in the saved bytes; the blocked CPU kernel
  // converts no mask and packs one copy of k and v instead). The attention kernel works
  // in (q, kv) tiles of per-thread buffers. In backward: the residual gradients; SDPA's gradients of q, k, v and
  // the contiguous copy of its output gradient (e (2 Dq + 2 Dkv) per token) are live only once the MLP's saved
  // tensors (at least 3 e I per token, I > Dq in Llama shapes) are freed, so they do not raise the peak.
  const int64_t attention_work =
      blocked_attention(in) ? 2 * n * c.kv_dim() * e : mask_elems * (kBool + (in.gradient_checkpointing ? e : 0));
  const int64_t fwd_work = n * e * (2 * h + 3 * c.q_dim()) + attention_work;
  const int64_t bwd_work = 3 * layer_input;
  bool chunked = false;
  const int64_t chunk = loss_chunk_rows_tokens(in, &chunked);
  // Loss of one chunk. Unfused: forward cast to fp32 and log_softmax (8 B/logit live); backward log_softmax output
  // + nll gradient + log_softmax gradient (12 B/logit). Fused (CPU): the logits in the compute dtype and their
  // gradient in the same dtype (2e B/logit) plus an fp32 log-sum-exp per row.
  const int64_t per_logit = fused ? 2 * e : 3 * kFp32;
  const int64_t loss_live = per_logit * chunk * v + (fused ? kFp32 * chunk : 0);
  const int64_t stored = in.gradient_checkpointing ? layers * layer_input : layers * saved_layer;
  const int64_t forward = stored + (in.gradient_checkpointing ? fwd_work : fwd_work + 0);
  const int64_t loss = stored + hidden_out + loss_live;
  const int64_t backward = stored + hidden_out + (in.gradient_checkpointing ? saved_layer : 0) + bwd_work;
  p.activation_bytes = std::max({forward, loss, backward});
  p.peak_phase = p.activation_bytes == backward ? "backward" : p.activation_bytes == loss ? "loss" : "forward";
  if (in.gradient_checkpointing) {
    add("activations", "layer inputs (checkpointed)", stored,
        fmt::format("{} layers x {} tokens x {} x {} B; the rest is recomputed in backward", layers, n, h, e));
  } else {
    add("activations", "saved activations, all layers", stored,
        fmt::format("{} layers x {} (attention: q, k, v at kv heads, output, logsumexp, {})", layers,
                    format_gib(saved_layer), blocked_attention(in) ? "mask intervals" : "additive mask"));
  }
  add("activations", "attention mask, rope tables", mask, "");
  const int64_t phase_extra = p.activation_bytes - stored;
  std::string what;
  if (p.peak_phase == "backward") {
    what = in.gradient_checkpointing ? "one layer recomputed with its graph (" + format_gib(saved_layer) +
                                           ") + residual gradients + final hidden"
                                     : "residual gradients + final hidden";
  } else if (p.peak_phase == "loss") {
    what = fmt::format("final hidden + {} logits of {} tokens x {} vocab ({}; {} B/logit)", chunked ? "chunked" : "all",
                       chunk, v, chunked ? "recomputed per chunk" : "unchunked", per_logit);
  } else {
    what = blocked_attention(in) ? "one layer's forward working set (q/k/v, attention output, packed k/v)"
                                 : "one layer's forward working set (q/k/v, attention output, mask conversion)";
  }
  add("activations", "peak phase: " + p.peak_phase, phase_extra, what);

  return phase_extra;
}

}  // namespace

MemoryPlan plan_memory(const MemoryPlanInputs& in) {
  TORCH_CHECK(in.micro_batch > 0 && in.seq_len > 1 && in.loss_chunk_tokens > 0, "plan_memory: bad batch geometry");
  MemoryPlan p;
  p.inputs = in;
  const int64_t largest_proj = plan_frozen(in, p);
  plan_lora(in, p);
  const int64_t phase_extra = plan_activations(in, p);
  const int64_t e = dtype_bytes(in.compute_dtype);
  auto add = [&](const char* group, std::string name, int64_t bytes, std::string note) {
    add_item(p, group, std::move(name), bytes, std::move(note));
  };

  // Temporaries: the dequantized weight of the largest projection (forward and backward dequantize on the fly).
  if (p.quantized_params > 0) {
    add("temporary", "dequantized largest projection", largest_proj * e,
        fmt::format("{} elements in the compute dtype", largest_proj));
  }
  const int64_t live_transient = phase_extra + (p.quantized_params > 0 ? largest_proj * e : 0);
  add("process", "allocator slack", static_cast<int64_t>(kAllocatorSlackFraction * live_transient),
      fmt::format("{:.0f}% of the transient bytes", kAllocatorSlackFraction * 100));
  add("process", "baseline (runtime, libraries)", in.baseline_bytes, "");
  if (in.baseline_bytes > 0) {
    add("process", "library code paged in by training", kCpuTrainingCodeBytes, "measured, plan/memory_plan.h");
  }
  return p;
}

std::string format_gib(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (std::abs(b) >= (1ll << 30)) return fmt::format("{:.2f} GiB", b / (1ll << 30));
  if (std::abs(b) >= (1ll << 20)) return fmt::format("{:.1f} MiB", b / (1ll << 20));
  return fmt::format("{:.1f} KiB", b / 1024.0);
}

std::string format_plan(const MemoryPlan& plan, std::optional<int64_t> budget_bytes) {
  const auto& in = plan.inputs;
  std::string s = fmt::format(
      "memory plan: {} layers, hidden {}, vocab {}; {}{}; LoRA {:.1f} M params; micro batch {} x seq {} ({} "
      "tokens); checkpointing {}; loss chunk {} tokens; device {}\n",
      in.config.num_hidden_layers, in.config.hidden_size, in.config.vocab_size,
      in.quant ? quant::quant_type_name(*in.quant) : std::string("dense"), in.quant && in.double_quant ? "+DQ" : "",
      plan.lora_params / 1e6, in.micro_batch, in.seq_len, in.micro_batch * in.seq_len,
      in.gradient_checkpointing ? "on" : "off", in.loss_chunk_tokens, in.device);
  s += fmt::format("  {:<12} {:<34} {:>12}  {}\n", "group", "item", "bytes", "how counted");
  std::string group;
  for (const auto& it : plan.items) {
    s += fmt::format("  {:<12} {:<34} {:>12}  {}\n", it.group == group ? "" : it.group, it.name, format_gib(it.bytes),
                     it.note);
    group = it.group;
  }
  s += fmt::format("  {:<12} {:<34} {:>12}  ({} bytes; frozen {}, LoRA state {}, activations {})\n", "total",
                   "per device", format_gib(plan.total_bytes), plan.total_bytes, format_gib(plan.frozen_bytes),
                   format_gib(plan.lora_state_bytes), format_gib(plan.activation_bytes));
  if (plan.host_bytes > 0) {
    s += fmt::format("  {:<12} {:<34} {:>12}  (optimizer offload; the update runs there)\n", "total", "in host memory",
                     format_gib(plan.host_bytes));
  }
  const StreamingPlan st = plan_streaming(plan);
  const double pcie_s = static_cast<double>(st.bytes_per_micro_batch) / kStreamPcieBytesPerS;
  const double gpu_s = st.flops_per_micro_batch / kStreamGpuFlopsPerS;
  s += fmt::format(
      "layer streaming (docs/layer-streaming.md): {} per layer, {} copied per micro-batch = {:.2f} s at {:.0f} GB/s "
      "vs {:.2f} s of compute at {:.0f} TFLOP/s ({}); device {}, pinned host {}\n",
      format_gib(st.layer_bytes), format_gib(st.bytes_per_micro_batch), pcie_s, kStreamPcieBytesPerS / 1e9, gpu_s,
      kStreamGpuFlopsPerS / 1e12, pcie_s < gpu_s ? "compute-bound with 1 layer of prefetch" : "PCIe-bound",
      format_gib(st.device_bytes), format_gib(st.host_bytes));
  if (budget_bytes) {
    if (plan.total_bytes <= *budget_bytes) {
      s += fmt::format("fits in {} ({} to spare)\n", format_gib(*budget_bytes),
                       format_gib(*budget_bytes - plan.total_bytes));
    } else {
      s += fmt::format("does NOT fit in {} ({} over)\n", format_gib(*budget_bytes),
                       format_gib(plan.total_bytes - *budget_bytes));
      const auto changes = cheapest_changes(plan, *budget_bytes);
      if (changes.empty()) {
        s += "  no single change below fits\n";
      }
      for (const auto& ch : changes)
        s += fmt::format("  would fit: {:<58} -> {}\n", ch.change, format_gib(ch.total_bytes));
    }
  }
  return s;
}

std::vector<PlanChange> cheapest_changes(const MemoryPlan& plan, int64_t budget_bytes) {
  std::vector<PlanChange> out;
  const MemoryPlanInputs& base = plan.inputs;
  auto try_change = [&](const std::string& what, MemoryPlanInputs in) {
    const MemoryPlan p = plan_memory(in);
    if (p.total_bytes <= budget_bytes) out.push_back({what, p.total_bytes});
    return p.total_bytes <= budget_bytes;
  };
  // In order of how little they change the run: free ones first, then shorter/fewer tokens.
  if (!base.gradient_checkpointing) {
    MemoryPlanInputs in = base;
    in.gradient_checkpointing = true;
    try_change("--set model.gradient_checkpointing=true", in);
  }
  for (int64_t chunk = base.loss_chunk_tokens / 2; chunk >= 128; chunk /= 2) {
    MemoryPlanInputs in = base;
    in.loss_chunk_tokens = chunk;
    if (try_change(fmt::format("--set train.loss_chunk_tokens={}", chunk), in)) break;
  }
  // Adapter storage and optimizer placement: same hyperparameters, bf16 rounding of the adapter weights / a
  // slower update through host memory.
  {
    MemoryPlanInputs bf16 = base, offload = base, both = base;
    bf16.lora_dtype = both.lora_dtype = torch::kBFloat16;
    offload.optimizer_offload = both.optimizer_offload = true;
    const bool can_bf16 = base.lora_dtype == torch::kFloat32;
    const bool can_offload = !base.optimizer_offload && !on_host(base);
    bool fit = can_bf16 && try_change("--set lora.dtype=bf16", bf16);
    fit = (can_offload && try_change("--set train.optimizer_offload=true", offload)) || fit;
    if (!fit && can_bf16 && can_offload) {
      try_change("--set lora.dtype=bf16 --set train.optimizer_offload=true", both);
    }
  }
  if (base.micro_batch > 1) {
    for (int64_t mb = base.micro_batch / 2; mb >= 1; mb /= 2) {
      MemoryPlanInputs in = base;
      in.micro_batch = mb;
      const int64_t accum = base.micro_batch / mb;
      if (try_change(fmt::format("--set train.micro_batch_size={} (x{} more grad_accum keeps the batch)", mb, accum),
                     in)) {
        break;
      }
    }
  }
  for (int64_t seq = base.seq_len / 2; seq >= 128; seq /= 2) {
    MemoryPlanInputs in = base;
    in.seq_len = seq;
    if (try_change(fmt::format("--set data.max_seq_len={}", seq), in)) break;
  }
  for (int64_t r = base.lora.empty() ? 0 : base.lora[0].r / 2; r >= 4; r /= 2) {
    MemoryPlanInputs in = base;
    for (auto& m : in.lora) m.r = std::max<int64_t>(1, m.r * r / base.lora[0].r);
    if (try_change(fmt::format("--set lora.r={}", r), in)) break;
  }
  const StreamingPlan st = plan_streaming(plan);
  if (st.device_bytes <= budget_bytes) {
    out.push_back(
        {"layer streaming (frozen layers + checkpoints in host RAM; docs/layer-streaming.md, not in the "
         "trainer yet)",
         st.device_bytes});
  }
  return out;
}

StreamingPlan plan_streaming(const MemoryPlan& plan) {
  const auto& in = plan.inputs;
  const io::LlamaConfig& c = in.config;
  const int64_t layers = std::max<int64_t>(1, c.num_hidden_layers);
  const int64_t e = dtype_bytes(in.compute_dtype);
  StreamingPlan s;
  int64_t decoder = 0;
  for (const auto& pr : plan_projections(c)) {
    decoder += is_quant_target(in, pr.name)
                   ? quant::QuantizedTensor::nbytes_for(pr.out * pr.in, in.blocksize, in.double_quant)
                   : pr.out * pr.in * e;
  }
  s.layer_bytes = decoder;  // norms stay resident (2 x H x e per layer)
  s.bytes_per_micro_batch = 2 * layers * decoder;
  const int64_t n = in.micro_batch * in.seq_len;
  const int64_t stored_inputs = in.gradient_checkpointing ? layers * n * c.hidden_size * e : 0;
  // On the device: everything but the decoder layers (2 in flight: the one running and the one prefetched) and the
  // checkpointed layer inputs (2 on the device: the current layer's and the next one's).
  s.device_bytes = plan.total_bytes - layers * decoder + 2 * decoder - stored_inputs +
                   (in.gradient_checkpointing ? 2 * n * c.hidden_size * e : 0) - in.baseline_bytes;
  s.host_bytes = layers * decoder + stored_inputs;
  // A streamed run recomputes each layer during backward (its inputs are all that stay): plan/time_plan.h's
  // accounting with checkpointing, recomputation included.
  MemoryPlanInputs recomputed = in;
  recomputed.gradient_checkpointing = true;
  const TokenFlops f = token_flops(recomputed);
  s.flops_per_micro_batch = (f.per_token + f.recompute) * static_cast<double>(n);
  return s;
}

int64_t parse_byte_size(const std::string& text) {
  std::string t;
  for (char ch : text) {
    if (!std::isspace(static_cast<unsigned char>(ch))) t += ch;
  }
  size_t pos = 0;
  double value = 0.0;
  try {
    value = std::stod(t, &pos);
  } catch (const std::exception&) {
    throw Error("memory size '" + text + "': expected a number with a unit, e.g. 24GiB, 80GB, 512MiB");
  }
  std::string unit = t.substr(pos);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  static const std::map<std::string, double> kUnits = {{"", 1.0},
                                                       {"b", 1.0},
                                                       {"k", 1024.0},
                                                       {"kib", 1024.0},
                                                       {"kb", 1e3},
                                                       {"m", 1 << 20},
                                                       {"mib", 1 << 20},
                                                       {"mb", 1e6},
                                                       {"g", 1 << 30},
                                                       {"gib", 1 << 30},
                                                       {"gb", 1e9},
                                                       {"t", 1099511627776.0},
                                                       {"tib", 1099511627776.0},
                                                       {"tb", 1e12}};
  auto it = kUnits.find(unit);
  if (it == kUnits.end() || value <= 0) {
    throw Error("memory size '" + text + "': unknown unit '" + unit + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  }
  return static_cast<int64_t>(std::llround(value * it->second));
}

}  // namespace qlora::plan
