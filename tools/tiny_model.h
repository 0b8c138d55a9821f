// Random-initialised Llama checkpoints in real HF layout (config.json, model.safetensors, tokenizer.model,
// generation_config.json, tokenizer_config.json) for tests, the CPU demo and benchmarks. Used by qlora-make-tiny.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"

namespace qlora::tools {

namespace fs = std::filesystem;

// Size of the BPE vocabulary trained for the tiny models (incl. <unk> <s> </s> and 256 byte pieces).
constexpr int kTinyTokenizerVocab = 1024;
// Init: N(0, 0.02) like HF's initializer_range, except lm_head, whose std gives logits of std ~1.5 over a
// unit-RMS hidden state. With 0.02 a frozen random lm_head caps how peaked the output can get (max logit
// ~0.02*H), so a LoRA-only fine-tune of a random tiny model could not get its loss below ~4.4 nats.
constexpr double kTinyInitStd = 0.02;
constexpr double kTinyLmHeadLogitStd = 1.5;
// The init std of one tensor of the tiny model (norms are 1).
double tiny_init_std(const std::string& name, int64_t hidden_size);

struct TinyModelOptions {
  // "tiny" (fast tests / CPU demo) | "tiny-llama3" (tiny layers, Meta's Llama 3 tokenizer.json and 128,256-token
  // vocabulary) | "bench" (~125M params)
  std::string preset = "tiny";
  uint64_t seed = 0;       // torch::manual_seed for the weights; same seed -> same bytes
  bool overwrite = false;  // replace an existing output folder
  fs::path corpus;         // tokenizer training text; empty: find_tiny_corpus()
  fs::path tokenizer_dir;  // tiny-llama3: folder with Meta's tokenizer files; empty: find_llama3_tokenizer_dir()
};

struct TinyModelReport {
  fs::path dir;
  io::LlamaConfig config;
  int32_t tokenizer_vocab = 0;  // pieces in tokenizer.model (config.vocab_size may be larger: padding rows)
  std::vector<std::pair<std::string, uint64_t>> files;  // name, size in bytes
};

// The architecture of a preset; tokenizer_vocab is the tokenizer's vocabulary size (tiny and tiny-llama3 use it
// as vocab_size, bench pads to 32000 like Llama-2). Unknown presets throw qlora::Error.
io::LlamaConfig tiny_model_config(const std::string& preset, int64_t tokenizer_vocab);

// HF tensor names and shapes of a Llama in module order (embed, layers, norm, lm_head unless tied).
std::vector<std::pair<std::string, std::vector<int64_t>>> llama_weight_shapes(const io::LlamaConfig& c);

// assets/tiny_corpus.txt: $QLORA_ASSETS_DIR, <exe>/../share/qlora, <exe>/../../assets, then the source tree.
fs::path find_tiny_corpus();
// assets/llama3-tokenizer/ (Meta's Llama 3 tokenizer.json, tokenizer_config.json, LICENSE, NOTICE), searched alike.
fs::path find_llama3_tokenizer_dir();

// Trains a Llama-like sentencepiece BPE (byte_fallback, split_digits, <unk>=0 <s>=1 </s>=2, no pad) on `corpus`
// and writes `out_file` (tokenizer.model). Deterministic: single-threaded, no sampling or shuffling.
void train_tiny_tokenizer(const fs::path& corpus, const fs::path& out_file, int vocab_size = kTinyTokenizerVocab);

// Streams random weights into a BF16 safetensors file: norms = 1, everything else N(0, 0.02) drawn in
// llama_weight_shapes order after torch::manual_seed(seed).
void write_random_llama_weights(const io::LlamaConfig& c, const fs::path& file, uint64_t seed);

// Writes the whole model folder atomically (refuses an existing `out_dir` unless opts.overwrite).
TinyModelReport make_tiny_model(const fs::path& out_dir, const TinyModelOptions& opts);

}  // namespace qlora::tools
