// load_model: a saved random model loads back exactly; malformed checkpoints give one error listing every
// problem; the tiny model loads dense and NF4 (quantization error reported and bounded).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "io/bnb_format.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/llama_test_util.h"
#include "model/loader.h"
#include "test_util.h"

namespace qlora::test {
namespace {

io::NamedTensors model_tensors(model::LlamaModelImpl& m) {
  io::NamedTensors out;
  for (auto& [n, t] : m.named_dense_tensors()) out.emplace_back(n, t.detach().clone());
  for (auto& [n, lin] : m.named_linears()) {
    if (n != "lm_head") out.emplace_back(n + ".weight", lin->dense_weight(torch::kFloat32));
  }
  return out;
}

void write_model_dir(const fs::path& dir, const io::LlamaConfig& c, const io::NamedTensors& ts) {
  fs::create_directories(dir);
  write_file_atomic(dir / "config.json", io::llama_config_to_json(c).dump(2));
  io::save_safetensors(dir / "model.safetensors", ts);
}

model::LoadOptions dense_fp32() {
  model::LoadOptions o;
  o.compute_dtype = torch::kFloat32;
  o.quant = std::nullopt;
  o.show_progress = false;
  return o;
}

TEST(Loader, SavedRandomModelLoadsBackExactly) {
  auto cfg = small_config();
  auto m = random_model(cfg);
  const fs::path dir = temp_dir() / "m";
  auto ts = model_tensors(*m);
  ts.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({4}));  // ignored
  write_model_dir(dir, cfg, ts);
  auto loaded = model::load_model(dir, dense_fp32());
  torch::NoGradGuard ng;
  torch::Tensor ids = ids_tensor({{1, 5, 9, 33, 60}});
  EXPECT_TRUE(torch::equal(loaded->forward(ids), m->forward(ids)));
  for (auto& [n, lin] : loaded->named_linears()) {
    auto f = std::dynamic_pointer_cast<model::FrozenLinearImpl>(lin);
    ASSERT_TRUE(f);
    EXPECT_FALSE(f->is_quantized()) << n;
  }
}

TEST(Loader, ShardedCheckpointAndQuantizedProjections) {
  auto cfg = small_config();
  auto m = random_model(cfg);
  const fs::path dir = temp_dir() / "m";
  fs::create_directories(dir);
  write_file_atomic(dir / "config.json", io::llama_config_to_json(cfg).dump(2));
  io::ShardedWriter w(dir, /*max_shard_bytes=*/10000);
  for (auto& [n, t] : model_tensors(*m)) w.add(n, t.to(torch::kBFloat16));
  w.finish();
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  model::LoadOptions o;
  o.show_progress = false;
  o.compute_dtype = torch::kFloat32;
  auto q = model::load_model(dir, o);  // NF4 + double quant by default
  size_t n_quant = 0;
  for (auto& [n, lin] : q->named_linears()) {
    auto f = std::dynamic_pointer_cast<model::FrozenLinearImpl>(lin);
    if (f->is_quantized()) {
      ++n_quant;
      if (n == "model.layers.0.self_attn.q_proj") {
        // Quantized from the bf16 tensor in the file.
        auto expect =
            quant::quantize_4bit(m->named_linears()[0].second->dense_weight(torch::kFloat32).to(torch::kBFloat16));
        EXPECT_TRUE(torch::equal(f->quantized_weight().packed, expect.packed));
      }
    }
  }
  EXPECT_EQ(n_quant, 14u);  // lm_head stays dense by default
}

// quantize_lm_head: lm_head becomes the same 4-bit tensor the projections' quantizer makes of its bf16 weight, and
// the logits are the final hidden state times its dequantized weight (float64 reference).
TEST(Loader, QuantizeLmHeadQuantizesItLikeTheProjections) {
  auto cfg = small_config();
  auto m = random_model(cfg);
  const fs::path dir = temp_dir() / "m";
  auto ts = model_tensors(*m);
  const torch::Tensor head = m->named_linears().back().second->dense_weight(torch::kFloat32);
  ASSERT_EQ(m->named_linears().back().first, "lm_head");  // in ts as a dense tensor
  write_model_dir(dir, cfg, ts);
  model::LoadOptions o;
  o.show_progress = false;
  o.compute_dtype = torch::kFloat32;
  o.quantize_lm_head = true;
  auto q = model::load_model(dir, o);
  size_t n_quant = 0;
  std::shared_ptr<model::FrozenLinearImpl> lm;
  for (auto& [n, lin] : q->named_linears()) {
    auto f = std::dynamic_pointer_cast<model::FrozenLinearImpl>(lin);
    n_quant += f->is_quantized();
    if (n == "lm_head") lm = f;
  }
  EXPECT_EQ(n_quant, 15u);  // 14 projections + lm_head
  ASSERT_TRUE(lm && lm->is_quantized());
  const auto expect = quant::quantize_4bit(head);  // the file holds it in fp32
  EXPECT_TRUE(torch::equal(lm->quantized_weight().packed, expect.packed));
  EXPECT_TRUE(torch::equal(lm->quantized_weight().absmax, expect.absmax));

  torch::NoGradGuard ng;
  const torch::Tensor ids = ids_tensor({{1, 5, 9, 33, 60}});
  const torch::Tensor h = q->forward_hidden(ids, {}, nullptr);
  const torch::Tensor w = quant::dequantize_4bit(expect, torch::kFloat32).to(torch::kFloat64);
  const torch::Tensor ref = torch::matmul(h.to(torch::kFloat64), w.t());
  const torch::Tensor got = q->forward(ids).to(torch::kFloat64);
  EXPECT_LT(((got - ref).norm() / ref.norm()).item<double>(), 1e-5);

  o.quant = std::nullopt;  // nothing to quantize it with
  EXPECT_THROW(model::load_model(dir, o), Error);
}

TEST(Loader, QuantizeLmHeadOfATiedModelIsAnError) {
  auto cfg = small_config(/*tied=*/true);
  auto m = random_model(cfg);
  const fs::path dir = temp_dir() / "m";
  write_model_dir(dir, cfg, model_tensors(*m));
  model::LoadOptions o;
  o.show_progress = false;
  o.quantize_lm_head = true;
  try {
    model::load_model(dir, o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_CONTAINS(std::string(e.what()), "tie_word_embeddings");
    EXPECT_CONTAINS(std::string(e.what()), "config.json");
  }
  o.quantize_lm_head = false;
  EXPECT_NO_THROW(model::load_model(dir, o));
}

TEST(Loader, MalformedCheckpointListsEveryProblem) {
  auto cfg = small_config();
  auto m = random_model(cfg);
  const fs::path dir = temp_dir() / "m";
  io::NamedTensors ts;
  for (auto& [n, t] : model_tensors(*m)) {
    if (n == "model.layers.1.mlp.up_proj.weight") continue;  // missing
    if (n == "model.layers.0.self_attn.k_proj.weight") {
      ts.emplace_back(n, torch::zeros({8, 32}));  // wrong shape (expected [16, 32])
      continue;
    }
    if (n == "model.norm.weight") {
      ts.emplace_back(n, torch::zeros({32}, torch::kInt32));  // wrong dtype
      continue;
    }
    ts.emplace_back(n, t);
  }
  ts.emplace_back("model.layers.0.self_attn.extra_thing.weight", torch::zeros({2}));  // extra
  write_model_dir(dir, cfg, ts);
  try {
    model::load_model(dir, dense_fp32());
    FAIL() << "expected qlora::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* s :
         {"missing tensor 'model.layers.1.mlp.up_proj.weight'",
          "'model.layers.0.self_attn.k_proj.weight' has shape [8, 32], expected [16, 32]",
          "'model.norm.weight' has dtype I32", "unexpected tensor 'model.layers.0.self_attn.extra_thing.weight'",
          "model.safetensors", "4 problems"}) {
      EXPECT_NE(msg.find(s), std::string::npos) << "missing '" << s << "' in:\n" << msg;
    }
  }
}

// KL(p || q) per position, averaged.
double mean_kl(const torch::Tensor& logits_p, const torch::Tensor& logits_q) {
  auto lp = torch::log_softmax(logits_p.to(torch::kFloat64), -1),
       lq = torch::log_softmax(logits_q.to(torch::kFloat64), -1);
  return (lp.exp() * (lp - lq)).sum(-1).mean().item<double>();
}

TEST(Loader, TinyModelDenseMatchesReferenceAndNf4IsClose) {
  const fs::path dir = tiny_model_dir();
  if (!fs::exists(dir / "config.json")) GTEST_SKIP() << "tiny model not generated (qlora-make-tiny fixture)";
  auto dense = model::load_model(dir, dense_fp32());
  RefDecoder ref(*dense);
  std::vector<int64_t> ids;
  for (int i = 0; i < 24; ++i) ids.push_back((i * 37 + 11) % dense->config().vocab_size);
  torch::NoGradGuard ng;
  torch::Tensor ld = dense->forward(ids_tensor({ids}));
  EXPECT_LT(rel_error(to_vec(ld), ref.causal_logits(ids)), 1e-5);

  model::LoadOptions o;
  o.show_progress = false;
  o.compute_dtype = torch::kFloat32;
  auto nf4 = model::load_model(dir, o);
  torch::Tensor lq = nf4->forward(ids_tensor({ids}));
  const double rel = ((lq - ld).norm() / ld.norm()).item<double>();
  const double kl = mean_kl(ld, lq);
  std::printf("[ info ] tiny model NF4+DQ vs fp32 dense: logits rel L2 error %.4f, mean KL %.3g nats\n", rel, kl);
  EXPECT_LT(rel, 0.25);
  EXPECT_LT(kl, 0.05);
}

}  // namespace
}  // namespace qlora::test
