// DataLoader on a byte-level fake tokenizer: ids, masks, packing, shuffling, cursor resume, bad lines,
// eval splits, sharding and bounded memory. Expected token sequences are computed here from the bytes of
// the hand-written rendered text, independently of the loader.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "common/error.h"
#include "common/log.h"
#include "data/data_loader.h"
#include "data_test_util.h"
#include "test_util.h"

namespace qlora::data {
namespace {

using nlohmann::json;
using test::ByteTokenizer;
using test::make_config;
using test::temp_dir;
using test::write_jsonl;
using test::write_text_file;

constexpr int32_t kBos = 1;
constexpr int32_t kEos = 2;

std::vector<int32_t> bytes_of(const std::string& s) {
  return ByteTokenizer().encode(s);
}

// Completion records "p<i>: ..." -> "c<i>" with lengths varying with i.
std::vector<json> completion_records(int n) {
  std::vector<json> out;
  for (int i = 0; i < n; ++i) {
    // Built with append: GCC 12's C++20 `"literal" + std::string&&` trips a false -Wstringop-overflow at -O2.
    std::string prompt = "p", completion = "c";
    prompt.append(std::to_string(i)).append(": ").append(static_cast<size_t>(i * 7 % 23), 'x');
    completion.append(std::to_string(i)).append(static_cast<size_t>(i * 5 % 11), 'y');
    out.push_back({{"prompt", prompt}, {"completion", completion}});
  }
  return out;
}

// The expected (ids, labels) of one completion record: BOS prompt (masked) completion EOS (trained).
std::pair<std::vector<int32_t>, std::vector<int32_t>> expected_completion(const json& r) {
  std::vector<int32_t> ids = {kBos}, labels = {kIgnoreIndex};
  for (int32_t id : bytes_of(r["prompt"].get<std::string>())) ids.push_back(id), labels.push_back(kIgnoreIndex);
  for (int32_t id : bytes_of(r["completion"].get<std::string>())) ids.push_back(id), labels.push_back(id);
  ids.push_back(kEos);
  labels.push_back(kEos);
  return {ids, labels};
}

std::vector<int64_t> row_of(const torch::Tensor& t, int64_t r) {
  auto c = t[r].contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Every example in a batch as (ids, labels), split by segment_ids; checks the per-row invariants on the way:
// segments are contiguous and numbered 1, 2, ... from the left, padding (0) only at the end, positions restart
// at 0 per segment, the first label of each segment is -100, and padding has mask 0 and label -100.
std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> split_examples(const Batch& b) {
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> out;
  const int64_t B = b.input_ids.size(0), T = b.input_ids.size(1);
  for (int64_t r = 0; r < B; ++r) {
    const auto ids = row_of(b.input_ids, r), labels = row_of(b.labels, r), mask = row_of(b.attention_mask, r);
    const auto pos = row_of(b.position_ids, r), seg = row_of(b.segment_ids, r);
    int64_t expect_seg = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (seg[t] == 0) {
        EXPECT_EQ(mask[t], 0);
        EXPECT_EQ(labels[t], kIgnoreIndex);
        for (int64_t u = t; u < T; ++u) EXPECT_EQ(seg[u], 0) << "padding must be at the end of the row";
        break;
      }
      EXPECT_EQ(mask[t], 1);
      if (t == 0 || seg[t] != seg[t - 1]) {
        EXPECT_EQ(seg[t], ++expect_seg);
        EXPECT_EQ(pos[t], 0);
        EXPECT_EQ(labels[t], kIgnoreIndex) << "a label at a segment start would be predicted across the boundary";
        out.emplace_back();
      } else {
        EXPECT_EQ(pos[t], pos[t - 1] + 1);
      }
      out.back().first.push_back(static_cast<int32_t>(ids[t]));
      out.back().second.push_back(static_cast<int32_t>(labels[t]));
    }
  }
  return out;
}

std::vector<Batch> drain(DataLoader& dl, int64_t max_batches = 1 << 20) {
  std::vector<Batch> out;
  while (static_cast<int64_t>(out.size()) < max_batches) {
    auto b = dl.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].input_ids, b[i].input_ids)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].labels, b[i].labels)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].attention_mask, b[i].attention_mask)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].position_ids, b[i].position_ids)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].segment_ids, b[i].segment_ids)) << "batch " << i;
    EXPECT_EQ(a[i].num_tokens, b[i].num_tokens);
    EXPECT_EQ(a[i].num_label_tokens, b[i].num_label_tokens);
    EXPECT_EQ(a[i].num_examples, b[i].num_examples);
  }
}

DataConfig completion_config(const fs::path& dir, const std::string& extra = "") {
  DataConfig c =
      make_config("train: " + (dir / "train.jsonl").string() + "\nformat: completion\nmax_seq_len: 96\n" + extra);
  return c;
}

TEST(DataLoader, PaddedBatchesMatchHandComputedIds) {
  const auto dir = temp_dir();
  const auto recs = completion_records(5);
  write_jsonl(dir / "train.jsonl", recs);
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir, "packing: false\nshuffle_buffer: 0\n"), tok, Split::kTrain, 2, 1, 1);
  const auto batches = drain(dl);
  ASSERT_EQ(batches.size(), 3u);  // 2 + 2 + 1
  size_t k = 0;
  for (const auto& b : batches) {
    ASSERT_EQ(b.input_ids.dtype(), torch::kLong);
    for (const auto& [ids, labels] : split_examples(b)) {
      const auto [want_ids, want_labels] = expected_completion(recs[k++]);
      EXPECT_EQ(ids, want_ids);
      EXPECT_EQ(labels, want_labels);
    }
  }
  EXPECT_EQ(k, recs.size());
  // Pad to the longest row with EOS (the fake tokenizer has no pad id).
  const auto [ids0, l0] = expected_completion(recs[0]);
  const auto [ids1, l1] = expected_completion(recs[1]);
  EXPECT_EQ(batches[0].input_ids.size(1), static_cast<int64_t>(std::max(ids0.size(), ids1.size())));
  EXPECT_EQ(batches[0].input_ids[0][-1].item<int64_t>(), kEos);
  EXPECT_EQ(batches[0].num_tokens, static_cast<int64_t>(ids0.size() + ids1.size()));
  EXPECT_EQ(dl.stats().examples, 5);
}

TEST(DataLoader, PadToMaxSeqLenAndPadId) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(3));
  ByteTokenizer tok(/*pad=*/0);
  DataLoader dl(completion_config(dir, "packing: false\nshuffle_buffer: 0\npad_to_max_seq_len: true\n"), tok,
                Split::kTrain, 3, 1, 1);
  auto b = dl.next();
  ASSERT_TRUE(b);
  EXPECT_EQ(b->input_ids.size(1), 96);
  EXPECT_EQ(b->input_ids[0][-1].item<int64_t>(), 0);
  EXPECT_EQ(b->labels[0][-1].item<int64_t>(), kIgnoreIndex);
}

TEST(DataLoader, TrainOnPromptLabelsEverythingButTheFirstToken) {
  const auto dir = temp_dir();
  const auto recs = completion_records(1);
  write_jsonl(dir / "train.jsonl", recs);
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir, "packing: false\ntrain_on_prompt: true\n"), tok, Split::kTrain, 1, 1, 1);
  const auto ex = split_examples(*dl.next());
  const auto [ids, labels] = expected_completion(recs[0]);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].second[0], kIgnoreIndex);
  for (size_t t = 1; t < ids.size(); ++t) EXPECT_EQ(ex[0].second[t], ids[t]);
}

TEST(DataLoader, ChatMasksEveryNonAssistantTurn) {
  const auto dir = temp_dir();
  const json rec = {{"messages",
                     {{{"role", "user"}, {"content", "Hi"}},
                      {{"role", "assistant"}, {"content", "Hello"}},
                      {{"role", "user"}, {"content", "Bye"}},
                      {{"role", "assistant"}, {"content", "Ciao"}}}}};
  write_jsonl(dir / "train.jsonl", {rec});
  ByteTokenizer tok;
  DataLoader dl(make_config("train: " + (dir / "train.jsonl").string() + "\nformat: chat\ntemplate: llama2-chat\n"),
                tok, Split::kTrain, 1, 1, 1);
  const auto ex = split_examples(*dl.next());
  ASSERT_EQ(ex.size(), 1u);
  // Hand-built: <s>[INST] Hi [/INST] Hello</s><s>[INST] Bye [/INST] Ciao</s>, trained spans Hello</s> and Ciao</s>.
  std::vector<int32_t> ids, labels;
  const auto add = [&](const std::vector<int32_t>& t, bool train) {
    for (int32_t id : t) ids.push_back(id), labels.push_back(train ? id : kIgnoreIndex);
  };
  add({kBos}, false);
  add(bytes_of("[INST] Hi [/INST]"), false);
  add(bytes_of("Hello"), true);
  add({kEos}, true);
  add({kBos}, false);
  add(bytes_of("[INST] Bye [/INST]"), false);
  add(bytes_of("Ciao"), true);
  add({kEos}, true);
  EXPECT_EQ(ex[0].first, ids);
  EXPECT_EQ(ex[0].second, labels);
}

TEST(DataLoader, PackingKeepsEveryExampleWholeAndSeparate) {
  const auto dir = temp_dir();
  const auto recs = completion_records(60);
  write_jsonl(dir / "train.jsonl", recs);
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir, "shuffle_buffer: 8\n"), tok, Split::kTrain, 3, 7, 1);
  const auto batches = drain(dl);
  std::multiset<std::vector<int32_t>> got_ids, want_ids;
  int64_t label_tokens = 0, examples = 0;
  for (const auto& b : batches) {
    EXPECT_EQ(b.input_ids.size(1), 96);
    // Block-diagonal causal mask from segment_ids: attention never crosses an example.
    const auto seg = b.segment_ids;
    const auto allowed = (seg.unsqueeze(2) == seg.unsqueeze(1)) & (seg.unsqueeze(2) != 0) &
                         torch::ones({96, 96}, torch::kBool).tril().unsqueeze(0);
    for (const auto& [ids, labels] : split_examples(b)) {
      got_ids.insert(ids);
      for (size_t t = 0; t < ids.size(); ++t) {
        EXPECT_TRUE(labels[t] == kIgnoreIndex || labels[t] == ids[t]);
      }
    }
    // Each allowed (t, s) pair lies within one example: same segment id, and no boundary between s and t.
    const auto pos = b.position_ids;
    const auto same_example =
        (pos.unsqueeze(2) - pos.unsqueeze(1)) == (torch::arange(96).view({96, 1}) - torch::arange(96).view({1, 96}));
    EXPECT_TRUE(torch::equal(allowed & same_example, allowed));
    label_tokens += b.num_label_tokens;
    examples += b.num_examples;
    EXPECT_EQ(b.num_label_tokens, (b.labels != kIgnoreIndex).sum().item<int64_t>());
    EXPECT_EQ(b.num_tokens, b.attention_mask.sum().item<int64_t>());
  }
  for (const auto& r : recs) want_ids.insert(expected_completion(r).first);
  EXPECT_EQ(got_ids, want_ids);  // no token lost, none duplicated
  EXPECT_EQ(examples, 60);
  EXPECT_EQ(label_tokens, dl.stats().label_tokens);
  // Rows are filled greedily: most batches hold more examples than rows.
  EXPECT_LT(batches.size(), 60u / 3u);
}

TEST(DataLoader, TruncatesKeepingTheStartOrDrops) {
  const auto dir = temp_dir();
  const json long_rec = {{"prompt", "short"}, {"completion", std::string(200, 'z')}};
  const json prompt_only = {{"prompt", std::string(200, 'q')}, {"completion", "a"}};
  write_jsonl(dir / "train.jsonl", {long_rec, prompt_only, completion_records(1)[0]});
  ByteTokenizer tok;
  {
    DataLoader dl(completion_config(dir, "packing: false\nshuffle_buffer: 0\n"), tok, Split::kTrain, 4, 1, 1);
    const auto ex = split_examples(*dl.next());
    ASSERT_EQ(ex.size(), 2u);  // the prompt-only one lost its response: skipped
    const auto [ids, labels] = expected_completion(long_rec);
    EXPECT_EQ(ex[0].first, std::vector<int32_t>(ids.begin(), ids.begin() + 96));
    EXPECT_EQ(dl.stats().truncated, 2);
    EXPECT_EQ(dl.stats().fully_masked_skipped, 1);
  }
  {
    DataLoader dl(completion_config(dir, "packing: false\ndrop_long: true\n"), tok, Split::kTrain, 4, 1, 1);
    const auto ex = split_examples(*dl.next());
    EXPECT_EQ(ex.size(), 1u);
    EXPECT_EQ(dl.stats().dropped_long, 2);
  }
}

TEST(DataLoader, ShuffleIsDeterministicPerSeed) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(80));
  ByteTokenizer tok;
  const auto cfg = completion_config(dir, "packing: false\nshuffle_buffer: 16\n");
  const auto order = [&](uint64_t seed) {
    DataLoader dl(cfg, tok, Split::kTrain, 1, seed, 1);
    std::vector<std::vector<int32_t>> out;
    for (const auto& b : drain(dl)) out.push_back(split_examples(b)[0].first);
    return out;
  };
  const auto a = order(1), a2 = order(1), b = order(2);
  EXPECT_EQ(a, a2);
  EXPECT_NE(a, b);
  EXPECT_EQ(std::multiset<std::vector<int32_t>>(a.begin(), a.end()),
            std::multiset<std::vector<int32_t>>(b.begin(), b.end()));
  // Not the file order.
  std::vector<std::vector<int32_t>> file_order;
  for (const auto& r : completion_records(80)) file_order.push_back(expected_completion(r).first);
  EXPECT_NE(a, file_order);
  EXPECT_EQ(a.size(), 80u);
}

TEST(DataLoader, EpochsRepeatTheDataInANewOrder) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(20));
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir, "packing: false\nshuffle_buffer: 8\n"), tok, Split::kTrain, 5, 3, 2);
  const auto batches = drain(dl);
  ASSERT_EQ(batches.size(), 8u);
  EXPECT_EQ(dl.epoch(), 2);
  EXPECT_FALSE(dl.next());
  std::vector<std::vector<int32_t>> e0, e1;
  for (size_t i = 0; i < 8; ++i) {
    for (const auto& ex : split_examples(batches[i])) (i < 4 ? e0 : e1).push_back(ex.first);
  }
  EXPECT_NE(e0, e1);
  EXPECT_EQ(std::multiset<std::vector<int32_t>>(e0.begin(), e0.end()),
            std::multiset<std::vector<int32_t>>(e1.begin(), e1.end()));
}

// Resume: run k batches, save the cursor (through a JSON text round trip), restore into a fresh loader and
// compare every remaining batch with the uninterrupted run.
void check_resume(const DataConfig& cfg, int64_t batch, int64_t epochs, const std::vector<int64_t>& cut_points) {
  ByteTokenizer tok;
  DataLoader ref(cfg, tok, Split::kTrain, batch, 42, epochs);
  const auto all = drain(ref);
  ASSERT_GT(all.size(), 4u);
  for (int64_t k : cut_points) {
    SCOPED_TRACE("cut after batch " + std::to_string(k));
    ASSERT_LT(k, static_cast<int64_t>(all.size()));
    DataLoader first(cfg, tok, Split::kTrain, batch, 42, epochs);
    drain(first, k);
    const std::string saved = first.state().dump();
    DataLoader resumed(cfg, tok, Split::kTrain, batch, 42, epochs);
    resumed.restore(json::parse(saved));
    EXPECT_EQ(resumed.stats().examples, first.stats().examples);
    const auto rest = drain(resumed);
    expect_same_batches(rest, std::vector<Batch>(all.begin() + k, all.end()));
    EXPECT_EQ(resumed.epoch(), ref.epoch());
    EXPECT_EQ(resumed.stats().examples, ref.stats().examples);
  }
}

TEST(DataLoader, ResumeMidEpochAndAcrossEpochBoundaryPacked) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(50));
  // 50 examples of ~10-45 tokens in rows of 96, 2 rows per batch: ~5 batches per epoch, 3 epochs.
  check_resume(completion_config(dir, "shuffle_buffer: 12\n"), 2, 3, {0, 1, 3, 5, 6, 9, 11});
}

TEST(DataLoader, ResumePaddedAcrossFilesAndEpochs) {
  const auto dir = temp_dir();
  const auto recs = completion_records(40);
  write_jsonl(dir / "a.jsonl", std::vector<json>(recs.begin(), recs.begin() + 15));
  write_jsonl(dir / "b.jsonl", std::vector<json>(recs.begin() + 15, recs.end()));
  const DataConfig cfg =
      make_config("train: " + (dir / "*.jsonl").string() + "\nformat: completion\npacking: false\nshuffle_buffer: 7\n");
  check_resume(cfg, 3, 2, {1, 4, 5, 13, 14, 26});
}

TEST(DataLoader, RestoreRejectsAnotherDataset) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(10));
  write_jsonl(dir / "other.jsonl", completion_records(10));
  ByteTokenizer tok;
  DataLoader a(completion_config(dir), tok, Split::kTrain, 1, 1, 1);
  a.next();
  DataLoader b(make_config("train: " + (dir / "other.jsonl").string() + "\nformat: completion\n"), tok, Split::kTrain,
               1, 1, 1);
  EXPECT_THROW(b.restore(a.state()), Error);
  DataLoader c(completion_config(dir), tok, Split::kTrain, 2, 1, 1);
  EXPECT_THROW(c.restore(a.state()), Error);
  EXPECT_THROW(c.restore(json{{"version", 1}}), Error);
}

TEST(DataLoader, ResetStartsOver) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(30));
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir), tok, Split::kTrain, 2, 5, 1);
  const auto a = drain(dl);
  dl.reset();
  expect_same_batches(drain(dl), a);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(DataLoader, BadLineFailsWithFileAndLine) {
  const auto dir = temp_dir();
  const auto p = dir / "train.jsonl";
  ByteTokenizer tok;
  const auto first_error = [&](const std::string& contents, const std::string& extra = "") {
    write_text_file(p, contents);
    return error_of([&] {
      DataLoader dl(completion_config(dir, "shuffle_buffer: 0\n" + extra), tok, Split::kTrain, 1, 1, 1);
      drain(dl);
    });
  };
  const std::string good = R"({"prompt": "a", "completion": "b"})";
  std::string msg = first_error(good + "\n\n" + R"({"prompt": "a", "completion": )" + "\n" + good + "\n");
  EXPECT_NE(msg.find(p.string() + ":3: bad completion record: malformed JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("on_bad_line: skip"), std::string::npos) << msg;
  msg = first_error(good + "\n" + R"({"prompt": "a"})" + "\n");
  EXPECT_NE(msg.find(":2: bad completion record: missing field \"completion\""), std::string::npos) << msg;
  msg = first_error(good + "\n" + good + "\n" + R"({"prompt": "a", "completion": 5})" + "\n");
  EXPECT_NE(msg.find(":3: bad completion record: field \"completion\" must be a string, got number"), std::string::npos)
      << msg;
  msg = first_error(R"({"prompt": "a", "completion": ""})" + std::string("\n"), "add_eos: false\n");
  EXPECT_NE(msg.find(":1: bad completion record: no trained tokens"), std::string::npos) << msg;
  msg = first_error("");
  EXPECT_NE(msg.find("no usable examples in " + p.string()), std::string::npos) << msg;
  msg = first_error("\n  \n");
  EXPECT_NE(msg.find("no usable examples"), std::string::npos) << msg;
}

TEST(DataLoader, BadLinesSkippedAndCounted) {
  const auto dir = temp_dir();
  std::string contents;
  for (int i = 0; i < 10; ++i) {
    contents += i % 3 == 0 ? std::string("{not json\n") : R"({"prompt": "a", "completion": "b"})" + std::string("\n");
  }
  write_text_file(dir / "train.jsonl", contents);
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir, "on_bad_line: skip\npacking: false\n"), tok, Split::kTrain, 1, 1, 1);
  EXPECT_EQ(drain(dl).size(), 6u);
  EXPECT_EQ(dl.stats().bad_lines_skipped, 4);
  EXPECT_EQ(dl.stats().records_read, 10);
  // Over max_bad_lines: an error.
  DataLoader strict(completion_config(dir, "on_bad_line: skip\nmax_bad_lines: 3\n"), tok, Split::kTrain, 1, 1, 1);
  const std::string msg = error_of([&] { drain(strict); });
  EXPECT_NE(msg.find("max_bad_lines = 3"), std::string::npos) << msg;
}

TEST(DataLoader, MissingFilesAndNoEvalSplit) {
  const auto dir = temp_dir();
  ByteTokenizer tok;
  std::string msg = error_of([&] { DataLoader(completion_config(dir), tok, Split::kTrain, 1, 1, 1); });
  EXPECT_NE(msg.find("data.train: no data file found"), std::string::npos) << msg;
  write_jsonl(dir / "train.jsonl", completion_records(3));
  msg = error_of([&] { DataLoader(completion_config(dir), tok, Split::kEval, 1, 1, 1); });
  EXPECT_NE(msg.find("no eval split"), std::string::npos) << msg;
}

std::set<std::string> completions_seen(DataLoader& dl) {
  std::set<std::string> out;
  ByteTokenizer tok;
  for (const auto& b : drain(dl)) {
    for (const auto& [ids, labels] : split_examples(b)) {
      std::vector<int32_t> trained;
      for (int32_t l : labels) {
        if (l != kIgnoreIndex && l != kEos) trained.push_back(l);
      }
      out.insert(tok.decode(trained));
    }
  }
  return out;
}

TEST(DataLoader, EvalFractionSplitIsDisjointAndComplete) {
  const auto dir = temp_dir();
  const auto recs = completion_records(200);
  write_jsonl(dir / "train.jsonl", recs);
  ByteTokenizer tok;
  const auto cfg = completion_config(dir, "eval_fraction: 0.25\n");
  DataLoader train(cfg, tok, Split::kTrain, 4, 1, 1);
  DataLoader eval(cfg, tok, Split::kEval, 4, 1, 1);
  const auto a = completions_seen(train), b = completions_seen(eval);
  std::set<std::string> all;
  for (const auto& r : recs) all.insert(r["completion"].get<std::string>());
  for (const auto& s : b) EXPECT_EQ(a.count(s), 0u) << s;
  std::set<std::string> both = a;
  both.insert(b.begin(), b.end());
  EXPECT_EQ(both, all);
  EXPECT_GT(b.size(), 25u);  // ~50 expected
  EXPECT_LT(b.size(), 80u);
}

TEST(DataLoader, EvalFileSplit) {
  const auto dir = temp_dir();
  const auto recs = completion_records(30);
  write_jsonl(dir / "train.jsonl", std::vector<json>(recs.begin(), recs.begin() + 20));
  write_jsonl(dir / "eval.jsonl", std::vector<json>(recs.begin() + 20, recs.end()));
  ByteTokenizer tok;
  const auto cfg = completion_config(dir, "eval: " + (dir / "eval.jsonl").string() + "\n");
  DataLoader train(cfg, tok, Split::kTrain, 4, 1, 1);
  DataLoader eval(cfg, tok, Split::kEval, 4, 1, 1);
  const auto a = completions_seen(train), b = completions_seen(eval);
  EXPECT_EQ(a.size(), 20u);
  EXPECT_EQ(b.size(), 10u);
  for (const auto& s : b) EXPECT_EQ(a.count(s), 0u);
}

TEST(DataLoader, RanksTakeDisjointShares) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", completion_records(41));
  ByteTokenizer tok;
  const auto cfg = completion_config(dir);
  std::set<std::string> all;
  size_t total = 0;
  for (int r = 0; r < 3; ++r) {
    DataLoader dl(cfg, tok, Split::kTrain, 2, 1, 1, r, 3);
    const auto s = completions_seen(dl);
    total += s.size();
    all.insert(s.begin(), s.end());
  }
  EXPECT_EQ(total, 41u);
  EXPECT_EQ(all.size(), 41u);
}

TEST(DataLoader, PlainTextParagraphsAndDirectories) {
  const auto dir = temp_dir();
  fs::create_directories(dir / "corpus");
  write_text_file(dir / "corpus" / "a.txt", "first line\nsecond line\n\n\nnext para\r\n");
  write_text_file(dir / "corpus" / "b.txt", "  \nlast one");
  ByteTokenizer tok;
  DataLoader dl(
      make_config("train: " + (dir / "corpus").string() + "\nformat: text\npacking: false\nshuffle_buffer: 0\n"), tok,
      Split::kTrain, 8, 1, 1);
  const auto ex = split_examples(*dl.next());
  ASSERT_EQ(ex.size(), 3u);
  const auto doc = [&](const std::string& s) {
    std::vector<int32_t> ids = {kBos};
    for (int32_t id : bytes_of(s)) ids.push_back(id);
    ids.push_back(kEos);
    return ids;
  };
  EXPECT_EQ(ex[0].first, doc("first line\nsecond line"));
  EXPECT_EQ(ex[1].first, doc("next para"));
  EXPECT_EQ(ex[2].first, doc("last one"));
  // Text is trained everywhere but the first token.
  EXPECT_EQ(std::count(ex[0].second.begin(), ex[0].second.end(), kIgnoreIndex), 1);
}

TEST(DataLoader, PreviewAndMaskedView) {
  const auto dir = temp_dir();
  write_jsonl(dir / "train.jsonl", {json{{"prompt", "Q?"}, {"completion", "A."}}});
  ByteTokenizer tok;
  DataLoader dl(completion_config(dir), tok, Split::kTrain, 1, 1, 1);
  const auto ex = dl.preview(5);
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(format_masked(ex[0], tok), "[[<s>]][[Q?]]A.</s>");
  EXPECT_EQ(format_prompt_trained(ex[0], tok), "PROMPT: <s>Q?\nTRAINED: A.</s>");
  EXPECT_EQ(dl.stats().examples, 0);
}

TEST(DataLoader, StreamingKeepsMemoryBounded) {
  const auto dir = temp_dir();
  const auto p = dir / "big.jsonl";
  {
    std::ofstream out(p, std::ios::binary);
    const std::string pad(200, 'w');
    for (int i = 0; i < 150000; ++i) {  // ~40 MB
      out << R"({"prompt": "question )" << i << " " << pad << R"(", "completion": "answer )" << i << "\"}\n";
    }
  }
  ASSERT_GT(fs::file_size(p), 35u << 20);
  ByteTokenizer tok;
  DataLoader dl(make_config("train: " + p.string() + "\nformat: completion\nmax_seq_len: 512\nshuffle_buffer: 1000\n"),
                tok, Split::kTrain, 4, 1, 1);
  const size_t before = current_rss_bytes();
  size_t peak_growth = 0;
  int64_t examples = 0;
  while (auto b = dl.next()) {
    examples += b->num_examples;
    const size_t now = current_rss_bytes();
    peak_growth = std::max(peak_growth, now > before ? now - before : 0);
  }
  EXPECT_EQ(examples, 150000);
  if (test::kUnderAddressSanitizer) GTEST_SKIP() << "RSS bound not asserted under ASan (quarantine, shadow memory)";
  constexpr size_t kMaxGrowth = 24u << 20;  // the file is 40 MB; the buffer holds 1000 examples (~2 MB)
  EXPECT_LT(peak_growth, kMaxGrowth) << format_bytes(static_cast<double>(peak_growth));
}

}  // namespace
}  // namespace qlora::data
