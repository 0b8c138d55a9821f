// qlora-generate: stream a completion from a Llama model (16-bit or bnb-4bit folder), quantizing on load.
//
//   qlora-generate --model models/tiny --prompt "Once upon a time" [--max-new-tokens 64] [--temperature 0.8]
//                  [--top-k 40] [--top-p 0.95] [--seed 1] [--quant nf4|fp4|none] [--threads N]
//   qlora-generate --model DIR --chat --prompt "Hi!" [--system "Be brief."]   (the model's own chat template)
//   qlora-generate --model DIR --chat                  (multi-turn: one user turn per line of stdin, history kept)
//   qlora-generate --model DIR --prompt-ids "1 263 273" --temperature 0 --ignore-eos --print-ids
//                  (token ids in and out, for comparing with other runtimes, e.g. llama.cpp on a GGUF export)
//   qlora-generate --model DIR --prompt-ids "1 263 273" --max-new-tokens 0 --logits-out logits.npy
//                  (fp32 logits of every prompt position, shape (T, V), as a NumPy .npy file)
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "apps/app_main.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "data/chat_template.h"
#include "lora/peft_io.h"
#include "model/compute_dtype.h"
#include "model/generate.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace {

// "1 263 273" -> ids; anything that is not an id in [0, vocab) is a qlora::Error naming it.
std::vector<int64_t> parse_token_ids(const std::string& text, int64_t vocab) {
  std::vector<int64_t> ids;
  std::istringstream in(text);
  for (std::string w; in >> w;) {
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(w, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != w.size() || id < 0 || id >= vocab) {
      throw qlora::Error("--prompt-ids: '" + w + "' is not a token id of this model (0.." + std::to_string(vocab - 1) +
                         ")");
    }
    ids.push_back(id);
  }
  if (ids.empty()) throw qlora::Error("--prompt-ids: no token ids given");
  return ids;
}

// logits (T, V) fp32 -> a NumPy .npy file (format 1.0: magic, header length, a Python dict literal padded with
// spaces so the data starts at a multiple of 64 bytes, then the raw little-endian float32 values).
void write_npy(const std::string& path, const torch::Tensor& logits) {
  const torch::Tensor t = logits.to(torch::kCPU, torch::kFloat32).contiguous();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(t.size(0)) + ", " +
                       std::to_string(t.size(1)) + "), }";
  constexpr size_t kPreamble = 10;  // "\x93NUMPY", version 1.0, uint16 header length
  header.append(63 - (kPreamble + header.size()) % 64, ' ');
  header += '\n';
  qlora::write_file_atomic(path, [&](qlora::FileWriter& f) {
    const uint16_t len = static_cast<uint16_t>(header.size());
    const char preamble[kPreamble] = {
        '\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
    f.write(preamble, kPreamble);
    f.write(header);
    f.write(t.data_ptr(), t.nbytes());
  });
}

struct Args {
  std::string model_dir, adapter, prompt, prompt_file, quant = "nf4", dtype = "auto", prompt_ids, logits_out;
  std::string gemv = "q8";
  int threads = 0;
  bool ignore_eos = false, print_ids = false, chat = false, quantize_lm_head = false;
  std::string system;
  qlora::model::GenerateOptions g;
};

void add_options(CLI::App& cli, Args& a) {
  a.g.max_new_tokens = 64;
  cli.add_option("--model", a.model_dir, "HF model folder")->required();
  cli.add_option("--adapter", a.adapter, "PEFT LoRA adapter folder");
  auto* p = cli.add_option("--prompt", a.prompt, "prompt text");
  auto* pf = cli.add_option("--prompt-file", a.prompt_file, "file holding the prompt");
  auto* pi = cli.add_option("--prompt-ids", a.prompt_ids,
                            "the prompt as space-separated token ids, used as given (include BOS yourself)");
  cli.add_flag("--chat", a.chat,
               "the prompt is a user turn, rendered with the model's chat template; without a prompt, a "
               "conversation: each line of stdin is a user turn");
  cli.add_option("--system", a.system, "with --chat: a system message before the user turn");
  cli.add_flag("--ignore-eos", a.ignore_eos, "keep generating past end-of-sequence tokens");
  cli.add_flag("--print-ids", a.print_ids, "print the generated token ids (one line, space-separated) instead of text");
  p->excludes(pf);
  pi->excludes(p);
  pi->excludes(pf);
  cli.add_option("--max-new-tokens", a.g.max_new_tokens, "tokens to generate at most")->capture_default_str();
  cli.add_option("--temperature", a.g.temperature, "0 = greedy")->check(CLI::NonNegativeNumber)->capture_default_str();
  cli.add_option("--top-k", a.g.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str();
  cli.add_option("--top-p", a.g.top_p, "nucleus sampling mass (1 = off)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cli.add_option("--seed", a.g.seed, "sampling seed")->capture_default_str();
  cli.add_option("--quant", a.quant, "base weights: 4-bit type or none (dense)")
      ->check(CLI::IsMember(qlora::quant::quant_option_names()))
      ->capture_default_str();
  cli.add_flag("--quantize-lm-head", a.quantize_lm_head,
               "quantize lm_head to the --quant type too: faster decoding (lm_head is the largest weight a token "
               "reads) at some accuracy, as llama.cpp's quantized output tensor; by default it stays 16-bit, as "
               "bitsandbytes keeps it");
  cli.add_option("--dtype", a.dtype,
                 "compute dtype; auto: bf16 where the CPU multiplies bf16 natively (AVX-512, AMX), else fp32")
      ->check(CLI::IsMember({"auto", "bf16", "fp16", "fp32"}))
      ->capture_default_str();
  cli.add_option(
         "--gemv", a.gemv,
         "CPU kernel of the 4-bit projections when decoding one token: q8 rounds the activations to 8 bits "
         "per 32 values and the codebook to 7 bits, and sums exact integer products (llama.cpp's CPU arithmetic; "
         "about 1.5% error, a sixth of 4-bit weights' own; its kernel runs ~3x the exact one on AVX2, ~2x "
         "on AVX-512, and takes fp32 rows too); exact multiplies bf16 activations in fp32, the bits the CUDA "
         "kernel gives")
      ->check(CLI::IsMember({"q8", "exact"}))
      ->capture_default_str();
  cli.add_option("--logits-out", a.logits_out,
                 "write the fp32 logits of every prompt position to this .npy file, shape (T, V)");
  cli.add_option("--threads", a.threads, "CPU threads (0 = all cores)")->capture_default_str();
}

// Streams the continuation to stdout as it is generated: decoded text (the whole continuation is decoded each
// time, so pieces that join, such as spaces and multi-byte characters, print correctly) or, with --print-ids,
// the ids on one line at the end. `echo` is printed first (the prompt text). Returns the continuation's text.
std::string stream_completion(qlora::model::LlamaModel& model, const qlora::tokenizer::Tokenizer& tok,
                              const std::vector<int64_t>& ids, const Args& a, const std::string& echo) {
  if (!a.print_ids) {
    std::printf("%s", echo.c_str());
    std::fflush(stdout);
  }
  std::vector<int32_t> out;
  std::string shown;
  auto r = qlora::model::generate(*model, ids, a.g, [&](int64_t t) {
    if (std::find(a.g.eos_token_ids.begin(), a.g.eos_token_ids.end(), t) != a.g.eos_token_ids.end()) return true;
    out.push_back(static_cast<int32_t>(t));
    if (a.print_ids) return !qlora::stop_requested();
    const std::string text = tok.decode(out);
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      std::printf("%s", text.substr(shown.size()).c_str());
      std::fflush(stdout);
      shown = text;
    }
    return !qlora::stop_requested();
  });
  if (a.print_ids) {
    for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? " " : "", out[i]);
  }
  std::printf("\n");
  std::fflush(stdout);
  const double n = static_cast<double>(r.tokens.size());
  std::fprintf(stderr, "prompt %zu tokens in %.2fs (%.1f tok/s); generated %zu tokens in %.2fs (%.1f tok/s)%s\n",
               ids.size(), r.prompt_seconds, static_cast<double>(ids.size()) / std::max(r.prompt_seconds, 1e-9),
               r.tokens.size(), r.decode_seconds, n > 1 ? (n - 1) / std::max(r.decode_seconds, 1e-9) : 0.0,
               r.stopped_on_eos ? ", stopped at eos" : "");
  return tok.decode(out);
}

// --chat without a prompt: each line of stdin is a user turn; the conversation so far (with the model's replies)
// is rendered with the model's chat template for every reply. Ends at end of input (or Ctrl-C).
void chat_from_stdin(qlora::model::LlamaModel& model, const qlora::tokenizer::Tokenizer& tok, const Args& a) {
  const auto t = qlora::data::load_model_chat_template(a.model_dir);
  std::vector<qlora::data::Message> conversation;
  if (!a.system.empty()) conversation.push_back({qlora::data::Role::kSystem, a.system});
  std::fprintf(stderr, "chat: one user turn per line, end with Ctrl-D\n");
  for (std::string line; !qlora::stop_requested() && std::getline(std::cin, line);) {
    if (line.empty()) continue;
    conversation.push_back({qlora::data::Role::kUser, line});
    std::vector<int64_t> ids;
    for (int32_t id : qlora::data::encode_chat_prompt(t, tok, conversation)) ids.push_back(id);
    conversation.push_back({qlora::data::Role::kAssistant, stream_completion(model, tok, ids, a, "")});
  }
}

int run_generate(Args& a) {
  const bool chat_stdin = a.chat && a.prompt.empty() && a.prompt_file.empty() && a.prompt_ids.empty();
  if (a.prompt.empty() && a.prompt_file.empty() && a.prompt_ids.empty() && !chat_stdin) {
    throw qlora::Error(
        "give --prompt TEXT, --prompt-file FILE or --prompt-ids \"ID ID ...\" (or --chat to read turns "
        "from stdin)");
  }
  if (chat_stdin && !a.logits_out.empty()) {
    throw qlora::Error("--logits-out needs a prompt (--prompt, --prompt-file, --prompt-ids)");
  }
  if (!a.prompt_file.empty()) a.prompt = qlora::read_file(a.prompt_file);
  qlora::configure_threads(a.threads);
  a.g.cpu_gemv = a.gemv == "exact" ? qlora::quant::CpuGemv::kExact : qlora::quant::CpuGemv::kQ8;
  qlora::model::LoadOptions lo;
  lo.compute_dtype = qlora::model::cpu_compute_dtype(a.dtype, "--dtype");
  lo.quant = qlora::quant::parse_quant_option(a.quant);
  lo.quantize_lm_head = a.quantize_lm_head;
  lo.lm_head_16bit = true;  // under fp32 compute a bf16 lm_head stays bf16: half the bytes a token reads
  auto model = qlora::model::load_model(a.model_dir, lo);
  if (!a.adapter.empty()) qlora::lora::apply_adapter(model, qlora::lora::load_adapter(a.adapter));
  model->eval();
  auto tok = qlora::tokenizer::load_tokenizer(a.model_dir);
  std::vector<int64_t> ids;
  if (!a.prompt_ids.empty()) {
    ids = parse_token_ids(a.prompt_ids, model->config().vocab_size);
  } else if (a.chat && !chat_stdin) {
    const auto t = qlora::data::load_model_chat_template(a.model_dir);
    for (int32_t id : qlora::data::encode_chat_prompt(t, *tok, a.system, a.prompt)) ids.push_back(id);
  } else {
    for (int32_t t : tok->encode(a.prompt, /*add_bos=*/true)) ids.push_back(t);
  }
  if (!a.logits_out.empty()) {
    torch::NoGradGuard no_grad;
    write_npy(a.logits_out, model->forward(torch::tensor(ids, torch::kInt64).view({1, -1})).squeeze(0));  // (T, V)
  }
  if (!a.ignore_eos) {
    a.g.eos_token_ids = model->config().eos_token_ids;
    if (tok->eos_id() >= 0) a.g.eos_token_ids.push_back(tok->eos_id());
  }
  a.g.vocab_limit = tok->vocab_size();  // models may pad their vocabulary beyond the tokenizer's
  if (chat_stdin) {
    chat_from_stdin(model, *tok, a);
    return 0;
  }
  stream_completion(model, *tok, ids, a, a.prompt);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"Generate text from a Llama model (optionally with a LoRA adapter)."};
  Args args;
  add_options(cli, args);
  return qlora::app::run(cli, argc, argv, [&] { return run_generate(args); });
}
