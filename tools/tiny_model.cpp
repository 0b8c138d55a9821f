#include "tools/tiny_model.h"

#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace qlora::tools {

namespace {

constexpr const char* kCorpusName = "tiny_corpus.txt";
constexpr const char* kLlama3TokenizerAsset = "llama3-tokenizer";

fs::path exe_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

bool is_norm(const std::string& name) {
  const std::string suffix = "norm.weight";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

io::LlamaConfig tiny_model_config(const std::string& preset, int64_t tokenizer_vocab) {
  io::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "bfloat16";
  if (preset == "tiny") {
    c.vocab_size = tokenizer_vocab;
    c.hidden_size = 128;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 352;
    c.max_position_embeddings = 1024;
  } else if (preset == "bench") {
    c.vocab_size =
        std::max<int64_t>(32000, tokenizer_vocab);  // Llama-2 sized embedding; rows past the tokenizer are unused
    c.hidden_size = 768;
    c.num_hidden_layers = 12;
    c.num_attention_heads = 12;
    c.num_key_value_heads = 4;
    c.intermediate_size = 2048;
    c.max_position_embeddings = 2048;
  } else if (preset == "tiny-llama3") {
    // The tiny architecture with Meta's Llama 3 vocabulary (128,000 BPE tokens + 256 special) and rope base.
    c.vocab_size = tokenizer_vocab;
    c.hidden_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.intermediate_size = 176;
    c.max_position_embeddings = 1024;
    c.rope_theta = 500000.0;
    c.bos_token_id = 128000;     // <|begin_of_text|>
    c.eos_token_ids = {128001};  // <|end_of_text|>, as in Meta-Llama-3-8B's config.json
  } else {
    throw Error("unknown tiny-model preset '" + preset + "' (expected tiny, tiny-llama3 or bench)");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> llama_weight_shapes(const io::LlamaConfig& c) {
  const int64_t h = c.hidden_size, v = c.vocab_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {v, h}});
  const auto norms = io::layer_norms(c);
  const auto projections = io::layer_projections(c);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + norms[0].path + ".weight", {norms[0].size}});  // input_layernorm
    for (const auto& pr : projections) {
      if (pr.group != "self_attn") continue;
      out.push_back({p + pr.path() + ".weight", {pr.out, pr.in}});
      if (pr.bias) out.push_back({p + pr.path() + ".bias", {pr.out}});
    }
    for (size_t n = 1; n < norms.size(); ++n) out.push_back({p + norms[n].path + ".weight", {norms[n].size}});
    for (const auto& pr : projections) {
      if (pr.group != "mlp") continue;
      out.push_back({p + pr.path() + ".weight", {pr.out, pr.in}});
      if (pr.bias) out.push_back({p + pr.path() + ".bias", {pr.out}});
    }
  }
  out.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {v, h}});
  return out;
}

namespace {

fs::path find_asset(const std::string& name, const char* what, const char* flag) {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("QLORA_ASSETS_DIR")) candidates.push_back(fs::path(env) / name);
  const fs::path exe = exe_dir();
  if (!exe.empty()) {
    candidates.push_back(exe / ".." / "share" / "qlora" / name);
    candidates.push_back(exe / ".." / ".." / "assets" / name);
  }
  // The source tree this file was compiled from (development builds).
  candidates.push_back(fs::path(__FILE__).parent_path().parent_path() / "assets" / name);
  std::string tried;
  for (const auto& p : candidates) {
    if (fs::exists(p)) return fs::weakly_canonical(p);
    tried += "\n  " + p.string();
  }
  throw Error(std::string("cannot find the ") + what + " " + name + "; tried:" + tried + "\nHINT: pass " + flag +
              " or set QLORA_ASSETS_DIR to the repo's assets/ folder");
}

}  // namespace

fs::path find_tiny_corpus() {
  return find_asset(kCorpusName, "tokenizer corpus", "--corpus FILE");
}

fs::path find_llama3_tokenizer_dir() {
  return find_asset(kLlama3TokenizerAsset, "Llama 3 tokenizer folder", "--tokenizer-dir DIR");
}

namespace {

// Runs `spm_train` (Debian package `sentencepiece`) in `cwd` with `args`; its output goes to our stderr only
// on failure. A separate process: libsentencepiece cannot share a process with LibTorch (protobuf clash,
// see tokenizer/sentencepiece_model.h).
void run_spm_train(const fs::path& cwd, const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>("spm_train"));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("cannot start spm_train: fork failed");
  if (pid == 0) {
    if (::chdir(cwd.c_str()) != 0) ::_exit(126);
    FILE* f = std::freopen(log.c_str(), "w", stderr);
    if (f == nullptr) ::_exit(126);
    std::freopen(log.c_str(), "a", stdout);
    ::execvp("spm_train", argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code == 127) {
    throw Error("spm_train not found\nHINT: install Debian's `sentencepiece` package (scripts/install-deps.sh does)");
  }
  if (code != 0) {
    std::string tail = fs::exists(log) ? read_file(log) : "";
    if (tail.size() > 2000) tail = tail.substr(tail.size() - 2000);
    throw Error("spm_train failed with exit code " + std::to_string(code) + ":\n" + tail);
  }
}

}  // namespace

void train_tiny_tokenizer(const fs::path& corpus, const fs::path& out_file, int vocab_size) {
  if (!fs::is_regular_file(corpus)) throw_file_error(corpus.string(), "tokenizer corpus not found");
  // Train in a scratch folder under fixed relative names: spm_train stores its input path and model prefix
  // in tokenizer.model, so fixed names keep the bytes dependent on the corpus alone.
  const fs::path work = fs::absolute(out_file).parent_path() / ".spm_train";
  fs::remove_all(work);
  fs::create_directories(work);
  fs::copy_file(corpus, work / "corpus.txt");
  // Llama's tokenizer settings (BPE, byte fallback, split digits, identity normalisation, dummy prefix).
  const std::vector<std::string> args = {
      "--input=corpus.txt",
      "--model_prefix=tokenizer",
      "--model_type=bpe",
      "--vocab_size=" + std::to_string(vocab_size),
      "--character_coverage=0.99995",
      "--byte_fallback=true",
      "--split_digits=true",
      "--allow_whitespace_only_pieces=true",
      "--normalization_rule_name=identity",
      "--remove_extra_whitespaces=false",
      "--add_dummy_prefix=true",
      "--unk_id=0",
      "--bos_id=1",
      "--eos_id=2",
      "--pad_id=-1",
      "--num_threads=1",
      "--input_sentence_size=0",
      "--shuffle_input_sentence=false",
      "--max_sentence_length=16384",
      "--minloglevel=2",
  };
  run_spm_train(work, args, work / "spm_train.log");
  const fs::path model = work / "tokenizer.model";
  if (!fs::exists(model)) throw_file_error(model.string(), "spm_train produced no model");
  write_file_atomic(out_file, read_file(model));
  fs::remove_all(work);
}

double tiny_init_std(const std::string& name, int64_t hidden_size) {
  if (name == "lm_head.weight") return kTinyLmHeadLogitStd / std::sqrt(static_cast<double>(hidden_size));
  return kTinyInitStd;
}

void write_random_llama_weights(const io::LlamaConfig& c, const fs::path& file, uint64_t seed) {
  const auto shapes = llama_weight_shapes(c);
  std::vector<io::SafetensorsWriter::Entry> entries;
  double total_mib = 0;
  for (const auto& [name, shape] : shapes) {
    entries.push_back({name, torch::kBFloat16, shape});
    total_mib += static_cast<double>(c10::multiply_integers(shape)) * 2.0 / (1 << 20);
  }
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  io::SafetensorsWriter writer(file, entries);
  Progress progress("writing " + file.filename().string(), total_mib, "MiB");
  for (const auto& [name, shape] : shapes) {
    torch::Tensor t;
    if (is_norm(name)) {
      t = torch::ones(shape, torch::kBFloat16);
    } else {
      t = torch::randn(shape, torch::kFloat32).mul_(tiny_init_std(name, c.hidden_size)).to(torch::kBFloat16);
    }
    writer.write(name, t);
    progress.advance(static_cast<double>(t.numel()) * 2.0 / (1 << 20));
  }
  writer.commit();
  progress.finish();
}

namespace {

void list_files(TinyModelReport& report) {
  for (const auto& entry : fs::directory_iterator(report.dir)) {
    if (entry.is_regular_file()) report.files.emplace_back(entry.path().filename().string(), entry.file_size());
  }
  std::sort(report.files.begin(), report.files.end());
}

// tiny-llama3: Meta's tokenizer files (with their LICENSE and NOTICE) copied in, random weights over its vocabulary.
TinyModelReport make_tiny_llama3_model(const fs::path& out_dir, const TinyModelOptions& opts) {
  const fs::path src = opts.tokenizer_dir.empty() ? find_llama3_tokenizer_dir() : opts.tokenizer_dir;
  AtomicDir dir(out_dir, opts.overwrite);
  TinyModelReport report;
  report.dir = out_dir;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "LICENSE", "NOTICE"}) {
    if (!fs::is_regular_file(src / f)) {
      throw Error("the Llama 3 tokenizer folder " + src.string() + " has no " + f +
                  "\nHINT: it needs tokenizer.json, tokenizer_config.json and Meta's LICENSE and NOTICE");
    }
    fs::copy_file(src / f, dir.path() / f);
  }
  const auto tok = tokenizer::load_tokenizer(dir.path());
  report.tokenizer_vocab = tok->vocab_size();
  io::LlamaConfig c = tiny_model_config(opts.preset, report.tokenizer_vocab);
  if (tok->bos_id() != c.bos_token_id || tok->eos_id() != c.eos_token_ids[0]) {
    throw Error("the tokenizer in " + src.string() + " has bos/eos ids " + std::to_string(tok->bos_id()) + "/" +
                std::to_string(tok->eos_id()) + ", expected Llama 3's 128000/128001");
  }
  report.config = c;
  write_file_atomic(dir.path() / "config.json", io::llama_config_to_json(c).dump(2) + "\n");
  const nlohmann::json gen = {
      {"_from_model_config", true}, {"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_ids[0]}};
  write_file_atomic(dir.path() / "generation_config.json", gen.dump(2) + "\n");
  write_random_llama_weights(c, dir.path() / "model.safetensors", opts.seed);
  dir.commit();
  list_files(report);
  return report;
}

}  // namespace

TinyModelReport make_tiny_model(const fs::path& out_dir, const TinyModelOptions& opts) {
  tiny_model_config(opts.preset, kTinyTokenizerVocab);  // validates the preset before any work
  if (opts.preset == "tiny-llama3") return make_tiny_llama3_model(out_dir, opts);
  const fs::path corpus = opts.corpus.empty() ? find_tiny_corpus() : opts.corpus;
  AtomicDir dir(out_dir, opts.overwrite);
  TinyModelReport report;
  report.dir = out_dir;

  spdlog::info("training the tokenizer on {}", corpus.string());
  train_tiny_tokenizer(corpus, dir.path() / "tokenizer.model");
  const auto tok = tokenizer::load_sentencepiece_tokenizer(dir.path() / "tokenizer.model");
  report.tokenizer_vocab = tok->vocab_size();
  TORCH_CHECK(tok->unk_id() == 0 && tok->bos_id() == 1 && tok->eos_id() == 2 && tok->pad_id() == -1,
              "unexpected special token ids in the trained tokenizer");

  io::LlamaConfig c = tiny_model_config(opts.preset, report.tokenizer_vocab);
  report.config = c;
  write_file_atomic(dir.path() / "config.json", io::llama_config_to_json(c).dump(2) + "\n");
  const nlohmann::json gen = {
      {"_from_model_config", true}, {"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_ids[0]}};
  write_file_atomic(dir.path() / "generation_config.json", gen.dump(2) + "\n");
  // Lets transformers' AutoTokenizer load the folder (LlamaTokenizer over tokenizer.model).
  const nlohmann::json tok_cfg = {{"tokenizer_class", "LlamaTokenizer"},
                                  {"add_bos_token", true},
                                  {"add_eos_token", false},
                                  {"bos_token", "<s>"},
                                  {"eos_token", "</s>"},
                                  {"unk_token", "<unk>"},
                                  {"pad_token", nullptr},
                                  {"clean_up_tokenization_spaces", false},
                                  {"legacy", false},
                                  {"model_max_length", c.max_position_embeddings},
                                  {"sp_model_kwargs", nlohmann::json::object()}};
  write_file_atomic(dir.path() / "tokenizer_config.json", tok_cfg.dump(2) + "\n");
  const nlohmann::json special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
  write_file_atomic(dir.path() / "special_tokens_map.json", special.dump(2) + "\n");

  write_random_llama_weights(c, dir.path() / "model.safetensors", opts.seed);
  dir.commit();
  list_files(report);
  return report;
}

}  // namespace qlora::tools
