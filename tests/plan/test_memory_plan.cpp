// The memory planner against hand counts: Llama-2-70B frozen bytes (68.45 G linear params at NF4+DQ plus the
// 16-bit rest), LoRA parameter counts, activation bookkeeping that follows the switches it claims to, and the
// byte-size parser. (Plan vs measured peak RSS of real runs: tests/trainer/test_run_plan.cpp, bench/.)
#include <gtest/gtest.h>

#include "common/error.h"
#include "io/hf_config.h"
#include "plan/memory_plan.h"
#include "test_util.h"

namespace qlora::plan {
namespace {

// Llama-2-70B: hidden 8192, intermediate 28672, 80 layers, 64 heads, 8 kv heads (head_dim 128), vocab 32000.
constexpr int64_t kH = 8192, kI = 28672, kKv = 1024, kL = 80, kV = 32000;

MemoryPlanInputs llama2_70b_inputs(int64_t r = 64) {
  MemoryPlanInputs in;
  in.config = io::load_llama_config(test::source_dir() / "configs/models/llama-2-70b.json");
  const std::vector<std::tuple<std::string, int64_t, int64_t>> projs = {
      {"q_proj", kH, kH},    {"k_proj", kH, kKv}, {"v_proj", kH, kKv},  {"o_proj", kH, kH},
      {"gate_proj", kH, kI}, {"up_proj", kH, kI}, {"down_proj", kI, kH}};
  for (int64_t l = 0; l < kL; ++l) {
    for (const auto& [p, fan_in, fan_out] : projs) in.lora.push_back({l, p, fan_in, fan_out, r});
  }
  in.lora_dropout = 0.05;
  in.micro_batch = 1;
  in.seq_len = 2048;
  in.gradient_checkpointing = true;
  return in;
}

// Hand count of one NF4 tensor with double quant, blocksize 64: 4-bit codes, a uint8 absmax per 64 weights, an fp32
// absmax2 per 256 absmax, plus the 16-entry codebook and the 256-entry dynamic map (fp32).
int64_t hand_nf4_dq_bytes(int64_t numel) {
  const int64_t blocks = numel / 64;  // every 70B shape is a multiple of 64 * 256
  return numel / 2 + blocks + 4 * (blocks / 256) + 16 * 4 + 256 * 4;
}

TEST(MemoryPlan, Llama2_70bFrozenBytesEqualTheHandCount) {
  const MemoryPlan p = plan_memory(llama2_70b_inputs());
  const int64_t per_layer = 2 * kH * kH + 2 * kH * kKv + 3 * kH * kI;
  EXPECT_EQ(p.quantized_params, kL * per_layer);
  EXPECT_EQ(p.quantized_params, 68451041280);  // "68.45 G linear params"
  const int64_t quant =
      kL * (2 * hand_nf4_dq_bytes(kH * kH) + 2 * hand_nf4_dq_bytes(kH * kKv) + 3 * hand_nf4_dq_bytes(kH * kI));
  const int64_t rest16 = 2 * (2 * kV * kH + (2 * kL + 1) * kH);  // embed + lm_head + norms, bf16
  EXPECT_EQ(p.frozen_quantized_bytes, quant);
  EXPECT_EQ(p.frozen_dense_bytes, rest16);
  EXPECT_EQ(p.frozen_bytes, quant + rest16);
  // 4.127 bits/param is 4 + 8/64 + 32/(64*256) = 4.12695 rounded: the figure to 4 digits.
  EXPECT_NEAR(static_cast<double>(p.frozen_quantized_bytes), 68.45e9 * 4.127 / 8, 68.45e9 * 4.127 / 8 * 1e-3);
  EXPECT_NEAR(8.0 * p.frozen_quantized_bytes / p.quantized_params, 4.127, 5e-4);
}

TEST(MemoryPlan, Llama2_70bLoraStateAndTotalAgainstHandCounts) {
  const MemoryPlan p = plan_memory(llama2_70b_inputs());
  // r * (in + out) per module: q, o 2*8192; k, v 8192+1024; gate, up, down 8192+28672.
  const int64_t lora = kL * 64 * (2 * (2 * kH) + 2 * (kH + kKv) + 3 * (kH + kI));
  EXPECT_EQ(p.lora_params, lora);
  EXPECT_EQ(p.lora_params, 828375040);
  // fp32 master + fp32 grad + AdamW m, v (fp32): 16 bytes per parameter, plus the bf16 copies forward casts of
  // one layer's adapters (checkpointing: the recompute makes them layer by layer).
  EXPECT_EQ(p.lora_state_bytes, 16 * lora + 2 * (lora / kL));
  // Layer inputs kept by checkpointing: 80 x 2048 x 8192 x bf16.
  bool found = false;
  for (const auto& it : p.items) {
    if (it.name == "layer inputs (checkpointed)") {
      EXPECT_EQ(it.bytes, kL * 2048 * kH * 2);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  // With fp32 LoRA masters and fp32 AdamW states the run does NOT fit 46 GB: frozen 36.4 GB + LoRA 13.3 GB alone
  // are 49.6 GB. The plan says so, and names the changes that would fit.
  EXPECT_GT(p.frozen_bytes + p.lora_state_bytes, 46000000000);
  EXPECT_GT(p.total_bytes, 46000000000);
  const auto changes = cheapest_changes(p, 46000000000);
  ASSERT_FALSE(changes.empty());
  for (const auto& c : changes) EXPECT_LE(c.total_bytes, 46000000000) << c.change;
  // r 16 fits: the LoRA state drops 4x (hand count of the state difference).
  MemoryPlan r16 = plan_memory(llama2_70b_inputs(16));
  EXPECT_EQ(p.lora_state_bytes - r16.lora_state_bytes, 16 * (lora - lora / 4) + 2 * (lora / kL - lora / 4 / kL));
  EXPECT_LT(r16.total_bytes, 46000000000);
}

// The target: Llama-2-70B, NF4+DQ, r 64 all-linear, seq 2048, micro batch 1, checkpointing on, under 46 GB
// on one GPU. It fits with the QLoRA scripts' bf16 adapters and the AdamW states in host memory
// (train.optimizer_offload): per device 4 bytes per adapter parameter (bf16 weight + bf16 gradient) instead of 16
// (6 with fp32 gradient accumulation over several micro-batches); the host keeps m, v and the fp32 masters.
TEST(MemoryPlan, Llama2_70bWithBf16AdaptersAndOffloadFitsIn46GB) {
  const int64_t lora = 828375040;
  MemoryPlanInputs in = llama2_70b_inputs();
  in.device = "cuda";
  in.baseline_bytes = 0;
  const MemoryPlan fp32 = plan_memory(in);
  EXPECT_GT(fp32.total_bytes, 46000000000);
  in.lora_dtype = torch::kBFloat16;
  in.optimizer_offload = true;
  const MemoryPlan p = plan_memory(in);
  EXPECT_EQ(p.lora_params, lora);
  EXPECT_EQ(p.lora_state_bytes, 4 * lora);  // no compute copies: bf16 is the compute dtype
  EXPECT_EQ(p.host_bytes, 12 * lora);       // fp32 m, v and the fp32 masters of the bf16 weights
  EXPECT_EQ(fp32.total_bytes - p.total_bytes, 16 * lora + 2 * (lora / kL) - 4 * lora);
  EXPECT_LT(p.total_bytes, 46000000000) << format_plan(p);
  // The fp32 plan names these as changes that fit.
  bool offered = false;
  for (const auto& c : cheapest_changes(fp32, 46000000000)) {
    if (c.change.find("train.optimizer_offload=true") != std::string::npos) {
      offered = true;
      EXPECT_LE(c.total_bytes, 46000000000);
    }
  }
  EXPECT_TRUE(offered);
  // On a CPU run the host is the device: offloading saves nothing there.
  in.device = "cpu";
  const MemoryPlan cpu = plan_memory(in);
  EXPECT_EQ(cpu.host_bytes, 0);
  EXPECT_EQ(cpu.lora_state_bytes, 16 * lora);
  // With several micro-batches per update the bf16 gradients accumulate in fp32 (4 bytes instead of 2).
  in.device = "cuda";
  in.grad_accum = 16;
  EXPECT_EQ(plan_memory(in).lora_state_bytes, 6 * lora);
}

// What one decoder layer keeps for backward, tensor by tensor, on the CPU (fused kernels: RMSNorm keeps its bf16
// input, dropout only a seed) for Llama-2-70B shapes with LoRA r 64 and dropout on all 7 projections, seq 512.
TEST(MemoryPlan, LayerSavedBytesEqualTheHandCount) {
  MemoryPlanInputs in = llama2_70b_inputs();
  in.seq_len = 512;
  const int64_t e = 2, r = 64, heads = 64, t = 512;
  const int64_t lora_dropped = e * r + e * kH;  // x·Aᵀ and the dropped input of one module reading an H-wide input
  const int64_t per_token = 2 * e * kH          // the two RMSNorm inputs
                            + 3 * lora_dropped  // q, k, v LoRA
                            + e * kH + 2 * e * kKv  // roped q; k and v at the 8 kv heads
                            + e * kH + 4 * heads    // SDPA output + fp32 logsumexp per head
                            + e * t                 // the additive (B, 1, T, T) mask copy, one row per token
                            + lora_dropped          // o_proj LoRA (input width Dq = H)
                            + 2 * lora_dropped      // gate, up LoRA
                            + 2 * e * kI            // SwiGLU keeps gate and up
                            + e * r + e * kI;       // down_proj LoRA: x·Aᵀ and its dropped (I-wide) input
  EXPECT_EQ(layer_saved_activation_bytes(in), t * per_token);
}

// SDPA with enable_gqa keeps k and v at their kv heads (no repeat_kv copies): going from 64 to 8 kv heads saves
// exactly 2 x e x (Dq - Dkv) per token; and nothing per head grows with T: one more key per token adds only one
// element of the additive mask row (e bytes), where an eager softmax would add (4 + e) x 64 heads.
TEST(MemoryPlan, AttentionKeepsKvHeadsAndNoScores) {
  MemoryPlanInputs gqa = llama2_70b_inputs();
  gqa.seq_len = 512;
  MemoryPlanInputs mha = gqa;
  mha.config.num_key_value_heads = mha.config.num_attention_heads;
  const int64_t n = 512, e = 2;
  EXPECT_EQ(layer_saved_activation_bytes(mha) - layer_saved_activation_bytes(gqa), n * 2 * e * (kH - kKv));
  MemoryPlanInputs longer = gqa;
  longer.seq_len = 1024;
  const int64_t per_token_512 = layer_saved_activation_bytes(gqa) / 512;
  const int64_t per_token_1024 = layer_saved_activation_bytes(longer) / 1024;
  EXPECT_EQ(per_token_1024 - per_token_512, e * (1024 - 512));
}

// The blocked CPU attention (ops/flash_attention.h) keeps the mask as 3 int32 per token instead of SDPA's additive
// row of T elements, so its saved bytes do not grow with T beyond the tokens themselves; on CUDA the flag changes
// nothing (SDPA runs there).
TEST(MemoryPlan, BlockedCpuAttentionKeepsIntervalsNotTheMask) {
  MemoryPlanInputs sdpa = llama2_70b_inputs();
  sdpa.seq_len = 512;
  MemoryPlanInputs blocked = sdpa;
  blocked.blocked_cpu_attention = true;
  const int64_t n = 512, e = 2;
  EXPECT_EQ(layer_saved_activation_bytes(sdpa) - layer_saved_activation_bytes(blocked), n * (e * 512 - 12));
  MemoryPlanInputs longer = blocked;
  longer.seq_len = 1024;
  EXPECT_EQ(layer_saved_activation_bytes(longer) / 1024, layer_saved_activation_bytes(blocked) / 512);
  MemoryPlanInputs cuda = blocked;
  cuda.device = "cuda";
  MemoryPlanInputs cuda_sdpa = sdpa;
  cuda_sdpa.device = "cuda";
  EXPECT_EQ(layer_saved_activation_bytes(cuda), layer_saved_activation_bytes(cuda_sdpa));
}

TEST(MemoryPlan, CheckpointingAndChunkingChangeWhatTheyClaim) {
  MemoryPlanInputs in = llama2_70b_inputs();
  in.seq_len = 512;
  const MemoryPlan on = plan_memory(in);
  in.gradient_checkpointing = false;
  const MemoryPlan off = plan_memory(in);
  // Without checkpointing every layer keeps layer_saved_activation_bytes.
  EXPECT_GE(off.activation_bytes, kL * layer_saved_activation_bytes(in));
  EXPECT_LT(on.activation_bytes, off.activation_bytes / 10);
  EXPECT_EQ(on.frozen_bytes, off.frozen_bytes);
  // A vocab-128k model with the whole (T, V) logits unchunked: the loss phase dominates; chunking removes it.
  MemoryPlanInputs l3 = in;
  l3.config = io::load_llama_config(test::source_dir() / "configs/models/llama-3-8b.json");
  l3.lora.clear();
  l3.gradient_checkpointing = true;
  l3.seq_len = 8192;
  l3.loss_chunk_tokens = 1 << 20;  // one chunk
  // LibTorch's own ops (CUDA, or CPU without the fused kernels): 12 bytes per fp32 logit.
  l3.fused_cpu_ops = false;
  const MemoryPlan whole = plan_memory(l3);
  EXPECT_EQ(whole.peak_phase, "loss");
  l3.loss_chunk_tokens = 1024;
  const MemoryPlan chunked = plan_memory(l3);
  // The difference is 12 x (8191 - 1024) x 128256 exactly.
  EXPECT_GE(whole.activation_bytes - chunked.activation_bytes, 0);
  if (chunked.peak_phase == "loss") {
    EXPECT_EQ(whole.activation_bytes - chunked.activation_bytes, int64_t{12} * (8191 - 1024) * 128256);
  }
  EXPECT_GT(whole.activation_bytes - chunked.activation_bytes, int64_t{5} << 30);
  // The fused CPU loss (ops/fused_ops.h): bf16 logits + their bf16 gradient (4 B/logit) + an fp32 per row.
  l3.fused_cpu_ops = true;
  l3.loss_chunk_tokens = 1 << 20;
  const MemoryPlan fused_whole = plan_memory(l3);
  EXPECT_EQ(fused_whole.peak_phase, "loss");
  l3.loss_chunk_tokens = 1024;
  const MemoryPlan fused_chunked = plan_memory(l3);
  if (fused_chunked.peak_phase == "loss") {
    EXPECT_EQ(fused_whole.activation_bytes - fused_chunked.activation_bytes,
              int64_t{4} * (8191 - 1024) * 128256 + 4 * (8191 - 1024));
  }
  EXPECT_LT(fused_whole.activation_bytes, whole.activation_bytes);
}

TEST(MemoryPlan, StreamingMovesEveryLayerTwicePerMicroBatch) {
  const MemoryPlan p = plan_memory(llama2_70b_inputs());
  const StreamingPlan s = plan_streaming(p);
  EXPECT_EQ(s.layer_bytes * kL, p.frozen_quantized_bytes);
  EXPECT_EQ(s.bytes_per_micro_batch, 2 * p.frozen_quantized_bytes);
  EXPECT_LT(s.device_bytes, p.total_bytes - p.frozen_quantized_bytes + 3 * s.layer_bytes);
}

TEST(MemoryPlan, ParsesByteSizes) {
  EXPECT_EQ(parse_byte_size("24GiB"), int64_t{24} << 30);
  EXPECT_EQ(parse_byte_size("24 GB"), int64_t{24000000000});
  EXPECT_EQ(parse_byte_size("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(parse_byte_size("1.5G"), int64_t{3} << 29);
  EXPECT_THROW(parse_byte_size("lots"), Error);
  EXPECT_THROW(parse_byte_size("24 parsecs"), Error);
}

}  // namespace
}  // namespace qlora::plan
