// qlora-tokenize --model DIR (--text TEXT | --file F) [--special] [--bos] [--eos] [--decode]
// Encodes text with a model folder's tokenizer and prints the token ids space-separated on one line; with
// --decode, reads ids (space/comma separated) and prints the decoded text exactly (no newline added).
// Folders with tokenizer.model use sentencepiece; folders with only tokenizer.json use the byte-level BPE.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "apps/app_main.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace qlora;

std::string read_input(const std::string& text, const std::string& file) {
  if (file.empty()) return text;
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_file_error(file, "cannot read the input file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> parse_ids(const std::string& s, const std::string& source) {
  std::vector<int32_t> ids;
  std::string tok;
  auto flush = [&] {
    if (tok.empty()) return;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || v < INT32_MIN || v > INT32_MAX) {
      throw Error(source + ": \"" + tok +
                  "\" is not a token id\nHINT: --decode expects ids separated by spaces or commas");
    }
    ids.push_back(int32_t(v));
    tok.clear();
  };
  for (char c : s) {
    if (c == ' ' || c == ',' || c == '\n' || c == '\t' || c == '\r' || c == '[' || c == ']')
      flush();
    else
      tok += c;
  }
  flush();
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"Encodes text to token ids (or decodes ids with --decode) with a model folder's tokenizer."};
  std::string model_dir, text, file;
  bool special = false, decode = false, bos = false, eos = false;
  cli.add_option("--model", model_dir, "HF model folder (tokenizer.model or tokenizer.json)")->required();
  auto* text_opt = cli.add_option("--text", text, "input text (or ids with --decode)");
  auto* file_opt = cli.add_option("--file", file, "read the input from this file")->check(CLI::ExistingFile);
  text_opt->excludes(file_opt);
  cli.add_flag("--special", special,
               "parse special-token strings such as <|eot_id|> in the text (byte-level BPE only)");
  cli.add_flag("--bos", bos, "prepend the BOS id");
  cli.add_flag("--eos", eos, "append the EOS id");
  cli.add_flag("--decode", decode, "decode ids to text instead");
  return app::run(cli, argc, argv, [&] {
    if (text_opt->count() == 0 && file_opt->count() == 0) throw Error("give the input with --text or --file");
    const std::filesystem::path dir = model_dir;
    std::unique_ptr<tokenizer::Tokenizer> tok;
    const tokenizer::BpeTokenizer* bpe = nullptr;
    if (!std::filesystem::exists(dir / "tokenizer.model") && std::filesystem::exists(dir / "tokenizer.json")) {
      auto b = tokenizer::BpeTokenizer::load(dir);
      bpe = b.get();
      tok = std::move(b);
    } else {
      tok = tokenizer::load_tokenizer(dir);
    }
    const std::string input = read_input(text, file);
    if (decode) {
      const std::string out = tok->decode(parse_ids(input, file.empty() ? "--text" : file));
      std::fwrite(out.data(), 1, out.size(), stdout);
      return 0;
    }
    if (special && bpe == nullptr) spdlog::warn("--special: the sentencepiece tokenizer never parses special tokens");
    std::vector<int32_t> ids = bpe ? bpe->encode_with_specials(input, special) : tok->encode(input);
    if (bos && tok->bos_id() >= 0) ids.insert(ids.begin(), tok->bos_id());
    if (eos && tok->eos_id() >= 0) ids.push_back(tok->eos_id());
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
  });
}
