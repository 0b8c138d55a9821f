// Generation: the KV cache gives the same tokens as full recomputation; sampling is seeded; eos stops.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "model/generate.h"
#include "model/llama_test_util.h"

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
