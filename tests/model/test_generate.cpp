// Generation: the KV cache gives the same tokens as full recomputation (a random model, and the tiny 4-bit model,
// whose one-row decode steps take a CPU GEMV kernel: up to near ties); the cache is written in place; sampling is
// seeded; eos stops.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <thread>

#include "model/generate.h"
#include "model/llama_test_util.h"
#include "test_util.h"

namespace qlora::test {
namespace {

TEST(Generate, KvCacheMatchesFullRecomputationGreedyAndSampled) {
  auto m = random_model(small_config(), torch::kFloat32, 21, /*stddev=*/0.5);
  const std::vector<int64_t> prompt = {3, 14, 15, 9, 2};
  for (double temp : {0.0, 0.8}) {
    model::GenerateOptions o;
    o.max_new_tokens = 12;
    o.temperature = temp;
    o.top_k = temp > 0 ? 20 : 0;
    o.top_p = temp > 0 ? 0.9 : 1.0;
    o.seed = 42;
    auto cached = model::generate(*m, prompt, o);
    o.use_cache = false;
    auto full = model::generate(*m, prompt, o);
    EXPECT_EQ(cached.tokens, full.tokens) << "temperature " << temp;
    EXPECT_EQ(cached.tokens.size(), 12u);
  }
}

// The tiny model (NF4 + double quant, blocksize 64) with a prompt that ends in a sequence of near ties.
std::vector<std::vector<int64_t>> tiny_prompts() {
  return {{1, 15, 300, 7, 88}, {1, 999}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};
}

model::LlamaModel load_tiny(torch::ScalarType dtype) {
  model::LoadOptions lo;
  lo.show_progress = false;
  lo.compute_dtype = dtype;
  return model::load_model(tiny_model_dir(), lo);
}

// fp32 compute: greedy decoding with the cache (the prompt in one forward, then one row per step, the cache written
// in place) equals decoding that recomputes the whole sequence every step, token for token. With the exact CPU GEMV,
// which takes bf16 rows only, the fp32 one-row projections dequantize + multiply like the full recomputation's.
TEST(Generate, TinyModelCachedGreedyEqualsFullRecomputation) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  auto m = load_tiny(torch::kFloat32);
  for (const auto& prompt : tiny_prompts()) {
    model::GenerateOptions o;
    o.max_new_tokens = 24;
    o.cpu_gemv = quant::CpuGemv::kExact;
    const auto cached = model::generate(*m, prompt, o);
    o.use_cache = false;
    const auto full = model::generate(*m, prompt, o);
    EXPECT_EQ(cached.tokens, full.tokens) << "prompt of " << prompt.size();
    EXPECT_EQ(cached.tokens.size(), 24u);
  }
}

// Cached greedy decoding whose one-row steps take a CPU GEMV kernel against a full recomputation that runs every row
// through dequant + matmul: the two round differently and may break a near tie differently (with or without the
// GEMV: dequant + matmul on one row already rounds differently from the same row inside a longer matmul).
// Teacher-forced on the cached tokens, each must be the full recomputation's argmax or within `tie` logits of it, and
// most must be its max logit exactly (the argmax or tied with it).
void expect_cached_greedy_is_argmax_up_to_ties(torch::ScalarType dtype, quant::CpuGemv gemv, double tie) {
  auto m = load_tiny(dtype);
  int exact = 0, total = 0;
  double worst = 0.0;
  for (const auto& prompt : tiny_prompts()) {
    model::GenerateOptions o;
    o.max_new_tokens = 24;
    o.cpu_gemv = gemv;
    const auto cached = model::generate(*m, prompt, o);
    ASSERT_EQ(cached.tokens.size(), 24u);
    std::vector<int64_t> seq = prompt;
    c10::InferenceMode inference;
    for (int64_t tok : cached.tokens) {
      const torch::Tensor lg = m->forward(ids_tensor({seq})).select(1, static_cast<int64_t>(seq.size()) - 1)[0];
      const double gap = (lg.max() - lg[tok]).item<double>();
      EXPECT_LE(gap, tie) << "token " << tok << " after " << seq.size() << " tokens";
      worst = std::max(worst, gap);
      exact += gap == 0.0;  // its argmax, or tied with it exactly
      ++total;
      seq.push_back(tok);
    }
  }
  std::printf(
      "[ info ] %s, %s GEMV: cached greedy vs full recomputation: %d/%d tokens its max logit, worst gap %.4f "
      "logits\n",
      c10::toString(dtype), quant::cpu_gemv_name(gemv), exact, total, worst);
  EXPECT_GE(exact * 10, total * 9);
}

// bf16 compute, exact GEMV (fp32 products and sums, one bf16 rounding): two bf16 ulps of a logit in [4, 8), the tiny
// model's top logits.
TEST(Generate, TinyModelBf16CachedGreedyIsFullRecomputationArgmaxUpToTies) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  expect_cached_greedy_is_argmax_up_to_ties(torch::kBFloat16, quant::CpuGemv::kExact, 0.125);
}

// The default q8 GEMV (activations rounded to 8 bits per 32 values, ~1% relative error per projection), in bf16 and
// in fp32 compute: kQ8TieLogits is 4% of the tiny model's top logits.
constexpr double kQ8TieLogits = 0.25;
TEST(Generate, TinyModelQ8CachedGreedyIsFullRecomputationArgmaxUpToTies) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  expect_cached_greedy_is_argmax_up_to_ties(torch::kBFloat16, quant::CpuGemv::kQ8, kQ8TieLogits);
  expect_cached_greedy_is_argmax_up_to_ties(torch::kFloat32, quant::CpuGemv::kQ8, kQ8TieLogits);
}

// Batch-1 decode steps through model/decode_layer.h give the bits of the same steps through the layer's LibTorch ops
// (every logit and every cached key and value), on the tiny 4-bit model with a cache that grows mid-way: in bf16 with
// either CPU GEMV, in fp32 with the q8 one (the exact GEMV takes bf16 rows only).
void expect_fused_decode_gives_the_bits_of_the_ops(torch::ScalarType dtype) {
  auto m = load_tiny(dtype);
  c10::InferenceMode inference;
  const std::vector<int64_t> prompt = {1, 15, 300, 7, 88};
  model::KVCache fused, ops;
  fused.reserve(8);
  ops.reserve(8);
  ops.fused_decode = false;
  torch::Tensor tok_f = m->forward(ids_tensor({prompt}), {}, &fused).select(1, 4).argmax(-1, true);
  torch::Tensor tok_o = m->forward(ids_tensor({prompt}), {}, &ops).select(1, 4).argmax(-1, true);
  EXPECT_EQ(fused.fused_layer_steps, 0) << "the prompt (5 positions) is not a decode step";
  for (int step = 0; step < 12; ++step) {
    const torch::Tensor lf = m->forward(tok_f, {}, &fused), lo = m->forward(tok_o, {}, &ops);
    ASSERT_TRUE(torch::equal(lf, lo)) << "step " << step << ": max difference " << (lf - lo).abs().max().item<float>();
    tok_f = lf.select(1, 0).argmax(-1, true);
    tok_o = lo.select(1, 0).argmax(-1, true);
  }
  const int64_t layers = m->config().num_hidden_layers;
  EXPECT_EQ(fused.fused_layer_steps, 12 * layers);
  EXPECT_EQ(ops.fused_layer_steps, 0);
  EXPECT_EQ(fused.capacity(), ops.capacity());
  EXPECT_GE(fused.capacity(), 17) << "grew past its reservation";
  for (int64_t l = 0; l < layers; ++l) {
    EXPECT_TRUE(torch::equal(fused.k[l].narrow(2, 0, 17), ops.k[l].narrow(2, 0, 17))) << "keys of layer " << l;
    EXPECT_TRUE(torch::equal(fused.v[l].narrow(2, 0, 17), ops.v[l].narrow(2, 0, 17))) << "values of layer " << l;
  }
}

// decode_layer_cpu splits each step of a layer over a team of LibTorch's threads (rows of a projection, heads of
// attention); the team's size must not change a bit: 1 thread, 2, and 3 (uneven shares).
TEST(Generate, FusedDecodeLayersGiveTheBitsOfTheLibTorchOps) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  const int threads_before = at::get_num_threads();
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    for (auto [g, dtype] :
         {std::pair{quant::CpuGemv::kQ8, torch::kBFloat16}, std::pair{quant::CpuGemv::kExact, torch::kBFloat16},
          std::pair{quant::CpuGemv::kQ8, torch::kFloat32}}) {
      SCOPED_TRACE(std::string(quant::cpu_gemv_name(g)) + " " + c10::toString(dtype) + ", " + std::to_string(threads) +
                   " threads");
      const quant::CpuGemvScope scope(g);
      expect_fused_decode_gives_the_bits_of_the_ops(dtype);
    }
  }
  at::set_num_threads(threads_before);
}

// LoadOptions::lm_head_16bit under fp32 compute: the tiny checkpoint's bf16 lm_head stays bf16 (no fp32 copy) and a
// decoded token goes through ops::gemv_bf16. Its weights are the same values, so every decode step's logits (and
// the prompt's, converted per call) agree with the fp32 lm_head's up to fp32 summation order, and greedy tokens match.
TEST(Generate, Bf16LmHeadUnderFp32ComputeGivesTheFp32LmHeadsLogits) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  model::LoadOptions lo;
  lo.show_progress = false;
  lo.compute_dtype = torch::kFloat32;
  auto wide = model::load_model(tiny_model_dir(), lo);
  lo.lm_head_16bit = true;
  auto narrow = model::load_model(tiny_model_dir(), lo);
  auto lm_head_dtype = [](model::LlamaModelImpl& m) {
    for (const auto& [name, t] : m.named_dense_tensors()) {
      if (name == "lm_head.weight") return t.scalar_type();
    }
    return torch::kByte;  // none
  };
  ASSERT_EQ(lm_head_dtype(*wide), torch::kFloat32);
  ASSERT_EQ(lm_head_dtype(*narrow), torch::kBFloat16);
  c10::InferenceMode inference;
  const std::vector<int64_t> prompt = {1, 15, 300, 7, 88};
  model::KVCache cw, cn;
  torch::Tensor lw = wide->forward(ids_tensor({prompt}), {}, &cw).select(1, 4)[0];
  torch::Tensor ln = narrow->forward(ids_tensor({prompt}), {}, &cn).select(1, 4)[0];
  for (int step = 0; step < 12; ++step) {
    ASSERT_TRUE(torch::allclose(ln, lw, /*rtol=*/1e-5, /*atol=*/1e-5))
        << "step " << step << ": max difference " << (ln - lw).abs().max().item<float>();
    const torch::Tensor tok = lw.argmax().view({1, 1});
    lw = wide->forward(tok, {}, &cw)[0][0];
    ln = narrow->forward(tok, {}, &cn)[0][0];
  }
  model::GenerateOptions o;
  o.max_new_tokens = 24;
  for (const auto& p : tiny_prompts()) {
    EXPECT_EQ(model::generate(*narrow, p, o).tokens, model::generate(*wide, p, o).tokens) << "prompt of " << p.size();
  }
}

// Under bf16 compute a decoded token's dense bf16 lm_head goes through ops::gemv_bf16 too: LibTorch's bf16 linear of
// the same row (outside InferenceMode, so through LibTorch) sums in fp32 as well, in another order, so the two agree
// to a bf16 rounding of each logit.
TEST(Generate, Bf16LmHeadRowMatchesLibTorchsLinearToARounding) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  auto m = load_tiny(torch::kBFloat16);
  std::shared_ptr<model::FrozenLinearImpl> head;
  for (const auto& [name, lin] : m->named_linears()) {
    if (name == "lm_head") head = lin->frozen_base();
  }
  ASSERT_TRUE(head && !head->is_quantized());
  torch::manual_seed(4);
  const torch::Tensor h = torch::randn({1, 1, m->config().hidden_size}).to(torch::kBFloat16);
  torch::Tensor ours;
  {
    c10::InferenceMode inference;
    ours = head->forward(h);
  }
  const torch::Tensor theirs = torch::nn::functional::linear(h, head->dense_weight_ref());
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  ASSERT_EQ(ours.scalar_type(), torch::kBFloat16);
  const torch::Tensor o = ours.to(torch::kFloat32), t = theirs.to(torch::kFloat32);
  const torch::Tensor ulp = t.abs() * std::ldexp(1.0, -7) + 1e-6;  // a bf16 rounding step, either side
  EXPECT_TRUE(((o - t).abs() <= ulp).all().item<bool>()) << "max difference " << (o - t).abs().max().item<float>();
  EXPECT_GT((o == t).to(torch::kFloat32).mean().item<float>(), 0.9) << "most logits the same bits";
}

// Two threads generating with one model at once (each its own cache, both through the fused layers) get the tokens
// each gets alone.
TEST(Generate, TwoThreadsDecodingWithOneModelGetTheirOwnTokens) {
  if (!fs::exists(tiny_model_dir() / "config.json")) GTEST_SKIP() << "tiny model not generated (make_tiny_model)";
  auto m = load_tiny(torch::kBFloat16);
  const std::vector<std::vector<int64_t>> prompts = {{1, 15, 300, 7, 88}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};
  model::GenerateOptions o;
  o.max_new_tokens = 32;
  std::vector<std::vector<int64_t>> alone, together(2);
  for (const auto& p : prompts) alone.push_back(model::generate(*m, p, o).tokens);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 4; ++rep) together[i] = model::generate(*m, prompts[i], o).tokens;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(together[0], alone[0]);
  EXPECT_EQ(together[1], alone[1]);
  EXPECT_NE(alone[0], alone[1]);
}

TEST(Generate, KvCacheIsWrittenInPlaceWithinItsReservation) {
  auto m = random_model(small_config(), torch::kFloat32, 25, 0.5);
  c10::InferenceMode inference;
  const torch::Tensor ids = ids_tensor({{5, 9, 13, 2, 40, 41, 7, 3}});
  const torch::Tensor full = m->forward(ids);
  model::KVCache cache;
  cache.reserve(8);
  std::vector<torch::Tensor> steps = {m->forward(ids.narrow(1, 0, 3), {}, &cache)};
  ASSERT_EQ(cache.capacity(), 8);
  const void* k0 = cache.k[0].data_ptr();
  for (int64_t t = 3; t < 8; ++t) {
    steps.push_back(m->forward(ids.narrow(1, t, 1), {}, &cache));
    EXPECT_EQ(cache.k[0].data_ptr(), k0) << "reallocated at position " << t;
  }
  EXPECT_EQ(cache.length(), 8);
  EXPECT_EQ(cache.capacity(), 8);
  EXPECT_LT((torch::cat(steps, 1) - full).abs().max().item<double>(), 1e-4);
  // Past the reservation it grows (at least doubling) and keeps what it held.
  const torch::Tensor more = m->forward(ids_tensor({{11}}), {}, &cache);
  EXPECT_EQ(cache.length(), 9);
  EXPECT_GE(cache.capacity(), 16);
  const torch::Tensor all = m->forward(ids_tensor({{5, 9, 13, 2, 40, 41, 7, 3, 11}}));
  EXPECT_LT((more.select(1, 0) - all.select(1, 8)).abs().max().item<double>(), 1e-4);
}

TEST(Generate, GreedyEqualsArgmaxOfFullForward) {
  auto m = random_model(small_config(), torch::kFloat32, 22, 0.5);
  std::vector<int64_t> seq = {1, 2, 3};
  model::GenerateOptions o;
  o.max_new_tokens = 5;
  auto r = model::generate(*m, seq, o);
  torch::NoGradGuard ng;
  for (int64_t tok : r.tokens) {
    torch::Tensor lg = m->forward(torch::tensor(seq).view({1, -1}));
    EXPECT_EQ(lg[0][lg.size(1) - 1].argmax().item<int64_t>(), tok);
    seq.push_back(tok);
  }
}

TEST(Generate, SeedDeterminesSamplesAndTopKOneIsGreedy) {
  auto m = random_model(small_config(), torch::kFloat32, 23, 0.5);
  const std::vector<int64_t> prompt = {7, 8};
  model::GenerateOptions o;
  o.max_new_tokens = 16;
  o.temperature = 1.5;
  o.seed = 1;
  auto a = model::generate(*m, prompt, o);
  auto b = model::generate(*m, prompt, o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.seed = 2;
  auto c = model::generate(*m, prompt, o);
  EXPECT_NE(a.tokens, c.tokens);
  o.top_k = 1;
  auto k1 = model::generate(*m, prompt, o);
  model::GenerateOptions g;
  g.max_new_tokens = 16;
  EXPECT_EQ(k1.tokens, model::generate(*m, prompt, g).tokens);
}

TEST(Generate, TopPKeepsOnlyTheNucleus) {
  // probs ~ {0.6, 0.3, 0.1}: top_p 0.5 keeps only token 0; top_p 0.8 keeps {0, 1}.
  torch::Tensor logits = torch::log(torch::tensor({0.6f, 0.3f, 0.1f}));
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  model::GenerateOptions o;
  o.temperature = 1.0;
  o.top_p = 0.5;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(model::sample_token(logits, o, gen), 0);
  o.top_p = 0.8;
  bool saw1 = false;
  for (int i = 0; i < 200; ++i) {
    int64_t t = model::sample_token(logits, o, gen);
    EXPECT_NE(t, 2);
    saw1 = saw1 || t == 1;
  }
  EXPECT_TRUE(saw1);
}

TEST(Generate, StopsOnEosAndCallbackSeesEveryToken) {
  auto m = random_model(small_config(), torch::kFloat32, 24, 0.5);
  model::GenerateOptions o;
  o.max_new_tokens = 10;
  auto free_run = model::generate(*m, {5, 6}, o);
  ASSERT_GE(free_run.tokens.size(), 3u);
  o.eos_token_ids = {free_run.tokens[2]};
  std::vector<int64_t> seen;
  auto r = model::generate(*m, {5, 6}, o, [&](int64_t t) {
    seen.push_back(t);
    return true;
  });
  EXPECT_TRUE(r.stopped_on_eos);
  EXPECT_EQ(r.tokens, seen);
  // Stops at the first occurrence of the eos id.
  size_t first =
      std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[2]) - free_run.tokens.begin();
  EXPECT_EQ(r.tokens.size(), first + 1);
  // Returning false from the callback stops too.
  o.eos_token_ids.clear();
  auto r2 = model::generate(*m, {5, 6}, o, [](int64_t) { return false; });
  EXPECT_EQ(r2.tokens.size(), 1u);
}

}  // namespace
}  // namespace qlora::test
