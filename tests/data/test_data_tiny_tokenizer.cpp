// Rendered examples on the real tiny sentencepiece tokenizer: the loader's ids and labels equal (1) the golden
// ids in tests/fixtures/data_golden_ids.json (made by make_data_golden.py with the Python sentencepiece module
// from hand-written segments) and (2) the concatenation of encoding each hand-written segment here.
#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "data/data_loader.h"
#include "data_test_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace qlora::data {
namespace {

using nlohmann::json;

class DataTinyTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto model = test::tiny_model_dir() / "tokenizer.model";
    if (!fs::exists(model)) GTEST_SKIP() << "no tiny model at " << model << " (run the make_tiny_model ctest fixture)";
    tok_ = tokenizer::load_tokenizer(test::tiny_model_dir());
  }
  std::unique_ptr<tokenizer::Tokenizer> tok_;
};

TEST_F(DataTinyTokenizer, LoaderMatchesGoldenIds) {
  const auto golden_file = test::fixtures_dir() / "data_golden_ids.json";
  if (!fs::exists(golden_file)) {
    GTEST_SKIP() << "no " << golden_file << "; make it with /usr/bin/python3 tests/fixtures/make_data_golden.py "
                 << (test::tiny_model_dir() / "tokenizer.model");
  }
  const json golden = json::parse(read_file(golden_file));
  ASSERT_EQ(golden["tokenizer_vocab"].get<int32_t>(), tok_->vocab_size()) << "regenerate the golden file";
  ASSERT_GE(golden["cases"].size(), 6u);
  for (const auto& [name, c] : golden["cases"].items()) {
    SCOPED_TRACE(name);
    const auto dir = test::temp_dir() / name;
    fs::create_directories(dir);
    test::write_jsonl(dir / "train.jsonl", {c["record"]});
    const DataConfig cfg = test::make_config("train: " + (dir / "train.jsonl").string() + "\n" +
                                             c["config"].get<std::string>() + "packing: false\nshuffle_buffer: 0\n");
    DataLoader dl(cfg, *tok_, Split::kTrain, 1, 1, 1);
    auto b = dl.next();
    ASSERT_TRUE(b);
    const auto ids = b->input_ids[0], labels = b->labels[0];
    const auto want_ids = c["ids"].get<std::vector<int64_t>>(), want_labels = c["labels"].get<std::vector<int64_t>>();
    ASSERT_EQ(ids.numel(), static_cast<int64_t>(want_ids.size()));
    EXPECT_TRUE(torch::equal(ids, torch::tensor(want_ids, torch::kLong)));
    EXPECT_TRUE(torch::equal(labels, torch::tensor(want_labels, torch::kLong)));

    // Independent C++ path: encode the hand-written segments one by one.
    std::vector<int64_t> cat_ids;
    for (const auto& seg : c["segments"]) {
      const std::string text = seg[0].get<std::string>();
      if (text == "<BOS>") {
        cat_ids.push_back(tok_->bos_id());
      } else if (text == "<EOS>") {
        cat_ids.push_back(tok_->eos_id());
      } else {
        for (int32_t id : tok_->encode(text)) cat_ids.push_back(id);
      }
    }
    EXPECT_EQ(cat_ids, want_ids);
  }
}

TEST_F(DataTinyTokenizer, DemoDatasetStreams) {
  const auto demo = test::source_dir() / "data" / "demo";
  const DataConfig cfg = test::make_config("train: " + (demo / "train.jsonl").string() +
                                           "\neval: " + (demo / "eval.jsonl").string() + "\nmax_seq_len: 256\n");
  DataLoader train(cfg, *tok_, Split::kTrain, 4, 1, 1);
  int64_t batches = 0;
  while (auto b = train.next()) ++batches;
  EXPECT_GE(train.stats().examples, 1500);
  EXPECT_EQ(train.stats().truncated, 0);
  EXPECT_EQ(train.stats().bad_lines_skipped, 0);
  EXPECT_GT(train.stats().label_tokens, 0);
  DataLoader eval(cfg, *tok_, Split::kEval, 4, 1, 1);
  while (eval.next()) {
  }
  EXPECT_EQ(eval.stats().examples, 100);
}

TEST_F(DataTinyTokenizer, AppPrintsStatsAndMaskedExamples) {
  const auto dir = test::temp_dir();
  const auto demo = test::source_dir() / "data" / "demo";
  write_file_atomic(dir / "cfg.yaml", "model:\n  path: " + test::tiny_model_dir().string() +
                                          "\ndata:\n  train: " + (demo / "train.jsonl").string() +
                                          "\n  eval: " + (demo / "eval.jsonl").string() + "\n");
  const auto r = test::run_app("qlora-data", (dir / "cfg.yaml").string() + " --examples 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PROMPT: <s>Below is an instruction"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("TRAINED: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("examples            1587"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("examples            100"), std::string::npos) << r.output;
  // A config error is exit code 2 with the key and line.
  write_file_atomic(dir / "bad.yaml", "model:\n  path: x\ndata:\n  train: a.jsonl\n  packing: perhaps\n");
  const auto bad = test::run_app("qlora-data", (dir / "bad.yaml").string());
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("bad.yaml:5: data.packing"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace qlora::data
