// Config schema: every bad config names the exact key path and line; --set overrides are typed by the schema;
// effective config round trip; config hash stability; the shipped configs parse with the paper's recipe.
#include <cpuid.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "model/compute_dtype.h"
#include "test_util.h"
#include "trainer/config.h"

namespace qlora::trainer {
namespace {

// Line numbers below refer to this text (1-based).
const char* kBaseConfig =
    "model:\n"                                                                       // 1
    "  path: models/tiny\n"                                                          // 2
    "  compute_dtype: bf16\n"                                                        // 3
    "  quant: {type: nf4, blocksize: 64, double_quant: true}\n"                      // 4
    "  gradient_checkpointing: true\n"                                               // 5
    "lora: {r: 16, alpha: 32, dropout: 0.05, targets: all-linear, rslora: false}\n"  // 6
    "data:\n"                                                                        // 7
    "  train: data/demo/train.jsonl\n"                                               // 8
    "  format: alpaca\n"                                                             // 9
    "train:\n"                                                                       // 10
    "  seed: 42\n"                                                                   // 11
    "  max_steps: 200\n"                                                             // 12
    "  micro_batch_size: 4\n"                                                        // 13
    "  grad_accum: 2\n"                                                              // 14
    "  lr: 2.0e-4\n"                                                                 // 15
    "  schedule: cosine\n"                                                           // 16
    "  warmup_steps: 10\n"                                                           // 17
    "  weight_decay: 0.0\n"                                                          // 18
    "  max_grad_norm: 0.3\n"                                                         // 19
    "  optimizer: adamw\n"                                                           // 20
    "  threads: 0\n"                                                                 // 21
    "eval: {every: 50, max_batches: 20}\n"                                           // 22
    "checkpoint: {dir: runs/tiny, every: 50, keep: 3, resume: auto}\n"               // 23
    "output_dir: runs/tiny/final\n"                                                  // 24
    "log: {every: 10, metrics: runs/tiny/metrics.jsonl}\n";                          // 25

// kBaseConfig with line `line` (1-based) replaced by `text` (which may hold several lines or be empty).
std::string with_line(int line, const std::string& text) {
  std::string src = kBaseConfig, out;
  size_t pos = 0;
  for (int i = 1; pos < src.size(); ++i) {
    size_t end = src.find('\n', pos);
    std::string l = src.substr(pos, end - pos);
    if (i == line) {
      if (!text.empty()) out += text + "\n";
    } else {
      out += l + "\n";
    }
    pos = end + 1;
  }
  return out;
}

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "cfg.yaml", overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

struct BadCase {
  int line;              // line replaced in kBaseConfig
  std::string text;      // its new text
  std::string prefix;    // the error must start with this ("cfg.yaml:<line>: <key.path>: ")
  std::string contains;  // and contain this
};

// The independent reference for `compute_dtype: auto`: CPUID, read here, against LibTorch's own answer that the
// resolution uses. oneDNN multiplies bf16 from avx512_core (AVX-512 F/BW/VL/DQ) up, or with AVX-NE-CONVERT and
// AVX-VNNI (CPUID leaf 7 sub-leaf 1: EDX bit 5, EAX bit 4).
std::string expected_auto_dtype_on_this_cpu() {
#if defined(__x86_64__)
  const bool avx512_core = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool leaf = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0;
  const bool ne_convert = leaf && (edx & (1u << 5)) != 0 && (eax & (1u << 4)) != 0;
  return avx512_core || ne_convert ? "bf16" : "fp32";
#else
  return qlora::model::resolve_compute_dtype("auto", false);  // no independent reference off x86
#endif
}

TEST(TrainConfig, ComputeDtypeAutoIsWhatTheDeviceMultipliesAtSpeed) {
  const TrainConfig cpu = parse_config(kBaseConfig, "cfg.yaml", {"model.compute_dtype=auto"});
  EXPECT_EQ(cpu.model.compute_dtype, expected_auto_dtype_on_this_cpu());
  EXPECT_EQ(cpu.model.dtype(), cpu.model.compute_dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
  // Resolved before anything reads it: the effective config and the hash name the dtype that runs.
  EXPECT_NE(effective_config_yaml(cpu).find("compute_dtype: " + cpu.model.compute_dtype), std::string::npos);
  const TrainConfig same = parse_config(kBaseConfig, "cfg.yaml", {"model.compute_dtype=" + cpu.model.compute_dtype});
  EXPECT_EQ(config_hash(cpu), config_hash(same));
  EXPECT_EQ(parse_config(kBaseConfig, "cfg.yaml", {"model.compute_dtype=auto", "device=cuda"}).model.compute_dtype,
            "bf16");
  // An explicit choice is kept, whatever the CPU.
  EXPECT_EQ(parse_config(kBaseConfig, "cfg.yaml", {"model.compute_dtype=fp32"}).model.compute_dtype, "fp32");
  EXPECT_EQ(parse_config(kBaseConfig, "cfg.yaml").model.compute_dtype, "bf16");
  // The warning for an explicit bf16 exactly where auto would not pick it.
  EXPECT_EQ(qlora::model::slow_cpu_dtype_warning("bf16").empty(), expected_auto_dtype_on_this_cpu() == "bf16");
  EXPECT_TRUE(qlora::model::slow_cpu_dtype_warning("fp32").empty());
  // The default of a config that does not name it is auto.
  EXPECT_EQ(TrainConfig{}.model.compute_dtype, "auto");
}

TEST(TrainConfig, BaseConfigParses) {
  TrainConfig c = parse_config(kBaseConfig, "cfg.yaml");
  EXPECT_EQ(c.model.compute_dtype, "bf16");
  EXPECT_EQ(c.model.quant_type, "nf4");
  EXPECT_EQ(c.model.quant_blocksize, 64);
  EXPECT_TRUE(c.model.double_quant);
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_DOUBLE_EQ(c.lora.alpha, 32.0);
  EXPECT_DOUBLE_EQ(c.lora.dropout, 0.05);
  EXPECT_EQ(c.lora.targets, std::vector<std::string>{"all-linear"});
  EXPECT_EQ(c.train.max_steps, 200);
  EXPECT_EQ(c.train.grad_accum, 2);
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-4);
  EXPECT_DOUBLE_EQ(c.train.max_grad_norm, 0.3);
  EXPECT_EQ(c.eval.every, 50);
  EXPECT_EQ(c.checkpoint.keep, 3);
  EXPECT_EQ(c.checkpoint.resume, "auto");
  EXPECT_EQ(c.data_config.train, std::vector<std::string>{"data/demo/train.jsonl"});
  // Relative paths resolve against the working directory.
  EXPECT_EQ(c.model.path, (fs::current_path() / "models/tiny").lexically_normal());
  EXPECT_EQ(c.output_dir, (fs::current_path() / "runs/tiny/final").lexically_normal());
  EXPECT_EQ(c.log.metrics, (fs::current_path() / "runs/tiny/metrics.jsonl").lexically_normal());
}

// eval:, checkpoint: and log: are optional sections: leaving them out gives the defaults, not a yaml-cpp crash.
TEST(TrainConfig, OptionalSectionsMayBeOmitted) {
  std::string src = kBaseConfig;
  for (const char* section : {"eval:", "checkpoint:", "log:"}) {
    const size_t at = src.find(std::string("\n") + section);
    ASSERT_NE(at, std::string::npos) << section;
    src.erase(at + 1, src.find('\n', at + 1) - at);
  }
  const TrainConfig c = parse_config(src, "cfg.yaml");
  const TrainConfig defaults;
  EXPECT_EQ(c.eval.every, defaults.eval.every);
  EXPECT_EQ(c.checkpoint.keep, defaults.checkpoint.keep);
  EXPECT_EQ(c.log.every, defaults.log.every);
}

TEST(TrainConfig, BadValuesNameKeyPathAndLine) {
  const std::vector<BadCase> cases = {
      {15, "  lr: -1", "cfg.yaml:15: train.lr: ", "must be > 0"},
      {15, "  lr: fast", "cfg.yaml:15: train.lr: ", "expected a number, got `fast`"},
      {15, "  lrr: 2.0e-4", "cfg.yaml:15: train.lrr: ", "did you mean `train.lr`?"},
      {16, "  schedule: cosin", "cfg.yaml:16: train.schedule: ", "constant | linear | cosine"},
      {3, "  compute_dtype: fp8", "cfg.yaml:3: model.compute_dtype: ", "unknown value `fp8`"},
      {3, "  compute_dtype: fp16", "cfg.yaml:3: model.compute_dtype: ", "fp16 training is not supported"},
      {4, "  quant: {type: nf5, blocksize: 64}", "cfg.yaml:4: model.quant.type: ", "nf4 | fp4 | none"},
      {4, "  quant: {type: nf4, blocksize: 96}", "cfg.yaml:4: model.quant.blocksize: ", "power of two"},
      {5, "  gradient_checkpointing: maybe", "cfg.yaml:5: model.gradient_checkpointing: ", "true or false"},
      {6, "lora: {r: 0, alpha: 32}", "cfg.yaml:6: lora.r: ", "must be >= 1 (got 0)"},
      {6, "lora: {r: 8, dropout: 1.5}", "cfg.yaml:6: lora.dropout: ", "must be < 1"},
      {6, "lora: {r: 8, targets: {q: 1}}", "cfg.yaml:6: lora.targets: ", "list of module names"},
      {6, "lora: {r: 8, rank: 4}", "cfg.yaml:6: lora.rank: ", "unknown key"},
      {6, "lora: {r: 8, dtype: fp8}", "cfg.yaml:6: lora.dtype: ", "fp32 | bf16"},
      {19, "  optimizer_offload: yes please", "cfg.yaml:19: train.optimizer_offload: ", "true or false"},
      {13, "  micro_batch_size: 0", "cfg.yaml:13: train.micro_batch_size: ", "must be >= 1"},
      {14, "  grad_accum: 1.5", "cfg.yaml:14: train.grad_accum: ", "expected an integer, got `1.5`"},
      {17, "  warmup_steps: 10\n  warmup_ratio: 0.03", "cfg.yaml:18: train.warmup_ratio: ", "not both"},
      {12, "  max_steps: 200\n  epochs: 3", "cfg.yaml:13: train.epochs: ", "not both"},
      {20, "  optimizer: sgd", "cfg.yaml:20: train.optimizer: ", "unknown value `sgd`"},
      {22, "eval: {every: -1}", "cfg.yaml:22: eval.every: ", "must be >= 0"},
      {23, "checkpoint: {dir: runs/tiny, keep: many}", "cfg.yaml:23: checkpoint.keep: ", "expected an integer"},
      {25, "log: {every: 0}", "cfg.yaml:25: log.every: ", "must be >= 1"},
      {24, "output_dir: [a, b]", "cfg.yaml:24: output_dir: ", "expected a string, got a list"},
      {24, "lr: 0.1", "cfg.yaml:24: lr: ", "did you mean `train.lr`?"},
      {24, "device: tpu", "cfg.yaml:24: device: ", "cpu, cuda"},
      {2, "", "cfg.yaml:2: model: ", "missing `model.path`"},
      {21, "  threads:", "cfg.yaml:21: train.threads: ", "expected an integer, got nothing"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string err = error_of(with_line(c.line, c.text));
    EXPECT_EQ(err.rfind(c.prefix, 0), 0u) << err;
    EXPECT_NE(err.find(c.contains), std::string::npos) << err;
  }
}

TEST(TrainConfig, DataSectionErrorsComeFromDataParser) {
  const std::string err = error_of(with_line(9, "  format: xml"));
  EXPECT_NE(err.find("cfg.yaml:9"), std::string::npos) << err;
  EXPECT_NE(err.find("data.format"), std::string::npos) << err;
}

// data: is read by the same schema machinery: overrides are named, and keys of other sections are suggested.
TEST(TrainConfig, DataSectionSharesTheErrorStyle) {
  std::string err = error_of(kBaseConfig, {"data.max_seq_len=2"});
  EXPECT_EQ(err.rfind("cfg.yaml: data.max_seq_len (from --set data.max_seq_len=2): must be >= 8 (got 2)", 0), 0u)
      << err;
  err = error_of(with_line(9, "  seed: 3"));
  EXPECT_EQ(err.rfind("cfg.yaml:9: data.seed: unknown key\nHINT: did you mean `train.seed`?", 0), 0u) << err;
  err = error_of(with_line(24, "max_seq_len: 3"));
  EXPECT_NE(err.find("did you mean `data.max_seq_len`?"), std::string::npos) << err;
}

TEST(TrainConfig, YamlSyntaxErrorHasLine) {
  const std::string err = error_of(with_line(15, "  lr: [2.0e-4"));
  EXPECT_EQ(err.rfind("cfg.yaml:", 0), 0u) << err;
  EXPECT_NE(err.find("YAML syntax error"), std::string::npos) << err;
}

TEST(TrainConfig, MissingTrainingLength) {
  const std::string err = error_of(with_line(12, ""));
  EXPECT_EQ(err.rfind("cfg.yaml:11: train: ", 0), 0u) << err;  // the train mapping starts at its first key
  EXPECT_NE(err.find("max_steps"), std::string::npos) << err;
}

TEST(TrainConfig, OverridesAreTypedBySchema) {
  TrainConfig c = parse_config(kBaseConfig, "cfg.yaml",
                               {"train.lr=1e-4", "lora.r=32", "lora.targets=[q_proj, v_proj]", "model.quant.type=fp4",
                                "model.gradient_checkpointing=false", "data.max_seq_len=128", "eval.max_batches=0"});
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.lora.r, 32);
  EXPECT_EQ(c.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.model.quant_type, "fp4");
  EXPECT_EQ(c.model.quant_blocksize, 64);  // the rest of the flow map survives
  EXPECT_FALSE(c.model.gradient_checkpointing);
  EXPECT_EQ(c.data_config.max_seq_len, 128);
  EXPECT_EQ(c.eval.max_batches, 0);
  // A new section and a new key inside an existing one.
  TrainConfig d = parse_config(kBaseConfig, "cfg.yaml", {"device=cpu", "train.adam_beta2=0.99"});
  EXPECT_DOUBLE_EQ(d.train.adam_beta2, 0.99);
}

TEST(TrainConfig, OverrideErrorsNameTheOverride) {
  std::string err = error_of(kBaseConfig, {"train.lr=abc"});
  EXPECT_EQ(err.rfind("cfg.yaml: train.lr (from --set train.lr=abc): expected a number", 0), 0u) << err;
  err = error_of(kBaseConfig, {"lora.r=1.5"});
  EXPECT_EQ(err.rfind("cfg.yaml: lora.r (from --set lora.r=1.5): expected an integer", 0), 0u) << err;
  err = error_of(kBaseConfig, {"train.lrr=1"});
  EXPECT_EQ(err.rfind("cfg.yaml: train.lrr (from --set train.lrr=1): unknown key", 0), 0u) << err;
  EXPECT_NE(err.find("did you mean `train.lr`?"), std::string::npos) << err;
  err = error_of(kBaseConfig, {"train.lr"});
  EXPECT_NE(err.find("expected key.path=value"), std::string::npos) << err;
  err = error_of(kBaseConfig, {"train..lr=1"});
  EXPECT_NE(err.find("empty segment"), std::string::npos) << err;
  err = error_of(kBaseConfig, {"output_dir.x=1"});
  EXPECT_NE(err.find("`output_dir` is not a mapping"), std::string::npos) << err;
}

TEST(TrainConfig, EffectiveConfigRoundTrips) {
  TrainConfig c = parse_config(kBaseConfig, "cfg.yaml", {"lora.r=8"});
  const std::string text = effective_config_yaml(c);
  TrainConfig back = parse_config(text, "effective.yaml");
  EXPECT_EQ(back.lora.r, 8);
  EXPECT_EQ(back.model.path, c.model.path);
  EXPECT_EQ(back.output_dir, c.output_dir);
  EXPECT_EQ(config_hash(back), config_hash(c));
}

TEST(TrainConfig, HashCoversTrajectoryOnly) {
  const std::string h = config_hash(parse_config(kBaseConfig, "cfg.yaml"));
  EXPECT_EQ(h.size(), 16u);
  // Spelling of the same number and non-trajectory settings do not change it.
  EXPECT_EQ(config_hash(parse_config(with_line(15, "  lr: 0.0002"), "cfg.yaml")), h);
  EXPECT_EQ(config_hash(parse_config(kBaseConfig, "other.yaml",
                                     {"log.every=1", "eval.every=7", "checkpoint.keep=9", "output_dir=x",
                                      "train.threads=3", "train.optimizer_offload=true", "lora.dtype=fp32"})),
            h);
  // Trajectory fields do.
  for (const char* o : {"train.lr=1e-4", "lora.r=8", "train.seed=1", "data.max_seq_len=128", "model.quant.type=fp4",
                        "train.grad_accum=4", "train.max_steps=100", "lora.dtype=bf16"}) {
    EXPECT_NE(config_hash(parse_config(kBaseConfig, "cfg.yaml", {o})), h) << o;
  }
  const auto before = trajectory_fields(parse_config(kBaseConfig, "cfg.yaml"));
  const auto after = trajectory_fields(parse_config(kBaseConfig, "cfg.yaml", {"train.lr=1e-4"}));
  EXPECT_EQ(describe_field_changes(before, after), "train.lr: \"0.0002\" -> \"0.0001\"");
}

// Regression pin: config_hash and trajectory_fields of configs/tiny.yaml, alone and with overrides, as the code
// BEFORE the schema-table rewrite (#17, commit 9118061) computed them; the values were printed by that code and
// pasted here, not computed by the code under test. Checkpoints store this hash and refuse to resume on a mismatch,
// so it must never drift. (The independent check is that checkpoints of existing runs still resume.)
TEST(TrainConfig, HashIsPinnedForTheShippedTinyConfig) {
  const fs::path tiny = test::source_dir() / "configs" / "tiny.yaml";
  // tiny.yaml's compute_dtype is auto, resolved by the CPU (bf16 with AVX-512/AMX, fp32 on AVX2): pinned to the
  // bf16 it resolved to when the values were taken.
  const TrainConfig plain = load_config(tiny, {"model.compute_dtype=bf16"});
  const TrainConfig edited = load_config(
      tiny, {"train.lr=1e-4", "lora.r=8", "lora.dtype=bf16", "lora.targets=[q_proj, v_proj]", "model.quant=fp4",
             "model.compute_dtype=fp32", "data.max_seq_len=128", "train.adam_beta2=0.99", "train.max_grad_norm=0"});
  EXPECT_EQ(config_hash(plain), "bd7ab414dc285f14");
  EXPECT_EQ(config_hash(edited), "c70023e9814397a2");
  EXPECT_EQ(trajectory_fields(plain).dump(),
            "{\"data\":{\"eval\":\"data/demo/eval.jsonl\",\"format\":\"alpaca\",\"max_seq_len\":\"256\",\"packing"
            "\":\"true\",\"shuffle_buffer\":\"1000\",\"template\":\"alpaca\",\"train\":\"data/demo/train.jsonl\","
            "\"train_on_prompt\":\"false\"},\"lora\":{\"alpha\":\"32\",\"dropout\":\"0.05\",\"r\":16,\"rslora\":f"
            "alse,\"targets\":[\"all-linear\"]},\"model\":{\"blocksize\":64,\"compute_dtype\":\"bf16\",\"double_q"
            "uant\":true,\"quant_type\":\"nf4\"},\"train\":{\"betas\":[\"0.9\",\"0.999\"],\"epochs\":0,\"eps\":\""
            "1e-08\",\"grad_accum\":1,\"loss_chunk_tokens\":1024,\"lr\":\"0.001\",\"max_grad_norm\":\"1\",\"max_s"
            "teps\":1500,\"micro_batch_size\":4,\"optimizer\":\"adamw\",\"schedule\":\"cosine\",\"seed\":42,\"war"
            "mup_ratio\":\"0\",\"warmup_steps\":10,\"weight_decay\":\"0\"}}");
  EXPECT_EQ(trajectory_fields(edited).dump(),
            "{\"data\":{\"eval\":\"data/demo/eval.jsonl\",\"format\":\"alpaca\",\"max_seq_len\":\"128\",\"packing"
            "\":\"true\",\"shuffle_buffer\":\"1000\",\"template\":\"alpaca\",\"train\":\"data/demo/train.jsonl\","
            "\"train_on_prompt\":\"false\"},\"lora\":{\"alpha\":\"32\",\"dropout\":\"0.05\",\"dtype\":\"bf16\",\""
            "r\":8,\"rslora\":false,\"targets\":[\"q_proj\",\"v_proj\"]},\"model\":{\"blocksize\":64,\"compute_dt"
            "ype\":\"fp32\",\"double_quant\":true,\"quant_type\":\"fp4\"},\"train\":{\"betas\":[\"0.9\",\"0.99\"]"
            ",\"epochs\":0,\"eps\":\"1e-08\",\"grad_accum\":1,\"loss_chunk_tokens\":1024,\"lr\":\"0.0001\",\"max_"
            "grad_norm\":\"0\",\"max_steps\":1500,\"micro_batch_size\":4,\"optimizer\":\"adamw\",\"schedule\":\"c"
            "osine\",\"seed\":42,\"warmup_ratio\":\"0\",\"warmup_steps\":10,\"weight_decay\":\"0\"}}");
}

TEST(TrainConfig, ShippedConfigsParse) {
  const fs::path dir = test::source_dir() / "configs";
  for (const char* name :
       {"tiny", "tiny-llama3", "bench", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b"}) {
    SCOPED_TRACE(name);
    TrainConfig c = load_config(dir / (std::string(name) + ".yaml"));
    EXPECT_EQ(c.model.quant_type, "nf4");
    EXPECT_TRUE(c.model.double_quant);
    // The small-model CPU configs say auto (resolved by this CPU); the Llama ones bf16, as the QLoRA paper.
    const bool small = std::string(name).rfind("llama", 0) != 0;
    EXPECT_EQ(c.model.compute_dtype, small ? expected_auto_dtype_on_this_cpu() : "bf16");
    EXPECT_TRUE(c.model.gradient_checkpointing);
    if (std::string(name).rfind("llama", 0) != 0) continue;
    const bool large = std::string(name).find("70b") != std::string::npos;
    EXPECT_EQ(c.lora.r, 64);
    EXPECT_DOUBLE_EQ(c.lora.alpha, 16.0);
    EXPECT_DOUBLE_EQ(c.lora.dropout, large ? 0.05 : 0.1);
    EXPECT_DOUBLE_EQ(c.train.lr, large ? 1e-4 : 2e-4);
    EXPECT_EQ(c.lora.targets, std::vector<std::string>{"all-linear"});
    EXPECT_EQ(c.train.schedule, "constant");
    EXPECT_DOUBLE_EQ(c.train.warmup_ratio, 0.03);
    EXPECT_DOUBLE_EQ(c.train.max_grad_norm, 0.3);
    EXPECT_DOUBLE_EQ(c.train.adam_beta2, 0.999);
    EXPECT_EQ(c.train.micro_batch_size, 1);
    EXPECT_EQ(c.train.grad_accum, 16);
    // The 70B configs are one-GPU configs that fit 48 GB: bf16 adapters, AdamW states in host memory.
    EXPECT_EQ(c.lora.dtype, large ? "bf16" : "fp32");
    EXPECT_EQ(c.train.optimizer_offload, large);
    EXPECT_EQ(c.device, large ? "cuda" : "cpu");
  }
}

// docs/config.md is the schema's own Markdown (qlora-train --help-config prints the same text).
TEST(TrainConfig, DocsConfigMdIsCurrent) {
  const std::string md = config_reference_markdown();
  const fs::path doc = test::source_dir() / "docs" / "config.md";
  ASSERT_TRUE(fs::exists(doc)) << "regenerate: build/bin/qlora-train --help-config > docs/config.md";
  EXPECT_EQ(read_file(doc), md) << "docs/config.md is out of date; regenerate: build/bin/qlora-train --help-config > "
                                   "docs/config.md";
  // Every key of both tables has a row.
  for (const auto& k : train_config_keys()) EXPECT_NE(md.find("| `" + k.path + "` |"), std::string::npos) << k.path;
  for (const auto& k : data::data_config_keys()) {
    EXPECT_NE(md.find("| `" + k.path + "` |"), std::string::npos) << k.path;
  }
  const auto r = test::run_app("qlora-train", "--help-config");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, md);
}

TEST(TrainConfig, EditDistance) {
  EXPECT_EQ(edit_distance("lr", "lr"), 0u);
  EXPECT_EQ(edit_distance("lrr", "lr"), 1u);
  EXPECT_EQ(edit_distance("shedule", "schedule"), 1u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
}

}  // namespace
}  // namespace qlora::trainer
