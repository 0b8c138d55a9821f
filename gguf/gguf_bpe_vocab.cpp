#include "gguf/gguf_bpe_vocab.h"

#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_read.h"
#include "gguf/gguf_llama.h"

namespace qlora::gguf {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

// The split regexes llama.cpp knows by pre-tokenizer name (llama-vocab.cpp), as tokenizer.json spells them.
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string type_of(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// The pre-tokenizer's steps, flattened (Sequence unwrapped).
void flatten(const json& p, std::vector<json>* out, int depth = 0) {
  if (type_of(p) == "Sequence" && depth < 8 && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const auto& s : p["pretokenizers"]) flatten(s, out, depth + 1);
  } else if (!p.is_null()) {
    out->push_back(p);
  }
}

std::string pre_name(const json& tok, const fs::path& file) {
  std::vector<json> steps;
  flatten(tok.value("pre_tokenizer", json()), &steps);
  const bool byte_level = !steps.empty() && type_of(steps.back()) == "ByteLevel";
  if (!byte_level) {
    throw_file_error(file.string(), "GGUF export needs a byte-level BPE tokenizer.json (a ByteLevel pre-tokenizer)",
                     "char-level BPE files (Gemma, Llama 2) export their sentencepiece tokenizer.model instead");
  }
  if (steps.size() == 1) {
    if (steps[0].value("use_regex", true)) return "gpt-2";
  } else if (steps.size() == 2 && type_of(steps[0]) == "Split" && steps[0].contains("pattern") &&
             steps[0]["pattern"].contains("Regex") && !steps[1].value("use_regex", true)) {
    const std::string regex = steps[0]["pattern"]["Regex"].get<std::string>();
    if (regex == kLlama3Regex) return "llama-bpe";
    if (regex == kQwen2Regex) return "qwen2";
  }
  throw_file_error(file.string(),
                   "the pre-tokenizer " + json_excerpt(tok["pre_tokenizer"], 200) +
                       " is none that llama.cpp knows by name (Llama 3's, Qwen2's or GPT-2's split regex)",
                   "llama.cpp would split the text with another regex and tokenize differently");
}

std::string merge_string(const json& m, size_t rank, const fs::path& file) {
  if (m.is_string()) return m.get<std::string>();
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    std::string a = m[0].get<std::string>(), b = m[1].get<std::string>();
    if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos) {
      throw_file_error(file.string(), "model.merges[" + std::to_string(rank) + "] contains a space",
                       "llama.cpp's merges are \"a b\" strings; gguf-py re-encodes such spaces, which we do not");
    }
    return a + " " + b;
  }
  throw_file_error(file.string(), "model.merges[" + std::to_string(rank) + "]: expected \"a b\" or [\"a\", \"b\"]");
}

std::optional<std::string> config_token(const json& cfg, const std::string& key) {
  if (!cfg.is_object() || !cfg.contains(key)) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// add_bos / add_eos from a TemplateProcessing post-processor, as gguf-py's SpecialVocab reads it (single template
// with more than one item: a leading special token that is the BOS adds BOS, a trailing one that is the EOS adds EOS).
void template_flags(const json& tok, const std::optional<std::string>& bos, const std::optional<std::string>& eos,
                    BpeVocab* v) {
  const json& post = tok.value("post_processor", json());
  if (!post.is_object()) return;
  std::vector<json> processors;
  if (post.contains("processors") && post["processors"].is_array()) {
    for (const auto& p : post["processors"]) processors.push_back(p);
  } else {
    processors.push_back(post);
  }
  for (const auto& p : processors) {
    if (type_of(p) != "TemplateProcessing" || !p.contains("single") || !p["single"].is_array()) continue;
    const json& single = p["single"];
    if (single.size() <= 1) continue;
    auto special_id = [](const json& item) -> std::optional<std::string> {
      if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].contains("id"))
        return item["SpecialToken"]["id"].get<std::string>();
      return std::nullopt;
    };
    if (const auto first = special_id(single.front())) v->add_bos = bos && *first == *bos;
    if (const auto last = special_id(single.back())) v->add_eos = eos && *last == *eos;
  }
}

}  // namespace

bool token_looks_special(const std::string& t) {
  auto wrapped = [&](const std::string& a, const std::string& b) {
    return t.size() >= a.size() + b.size() && t.compare(0, a.size(), a) == 0 &&
           t.compare(t.size() - b.size(), b.size(), b) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") || wrapped("<unused", ">");
}

BpeVocab load_bpe_vocab(const fs::path& model_dir, int64_t vocab_size) {
  const fs::path file = model_dir / "tokenizer.json";
  if (!fs::exists(file)) {
    throw_file_error(model_dir.string(), "no tokenizer.model or tokenizer.json",
                     "GGUF export writes the model's vocabulary: copy the tokenizer files from the base model");
  }
  const json tok = read_json_file(file);
  BpeVocab v;
  try {
    v.pre = pre_name(tok, file);
    const json& model = tok.at("model");
    if (type_of(model) != "BPE" && !type_of(model).empty()) {
      throw_file_error(file.string(), "model type " + type_of(model) + " is not BPE");
    }
    std::map<int64_t, std::pair<std::string, int32_t>> by_id;  // id -> text, type
    for (const auto& [piece, id] : model.at("vocab").items()) by_id[id.get<int64_t>()] = {piece, kNormal};
    for (const auto& a : tok.value("added_tokens", json::array())) {
      const std::string content = a.at("content").get<std::string>();
      const bool control = a.value("special", false) || token_looks_special(content);
      by_id[a.at("id").get<int64_t>()] = {content, control ? kControl : kUserDefined};
    }
    const int64_t n_tok = by_id.empty() ? 0 : by_id.rbegin()->first + 1;
    const int64_t n = vocab_size > 0 ? vocab_size : n_tok;
    if (n_tok > n || by_id.begin()->first < 0) {
      throw_file_error(file.string(), "token id " + std::to_string(n_tok - 1) +
                                          " is outside config.json's vocab_size " + std::to_string(n));
    }
    v.tokens.resize(size_t(n));
    v.types.assign(size_t(n), kUnused);
    for (int64_t i = 0; i < n; ++i) v.tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";
    for (const auto& [id, entry] : by_id) {
      v.tokens[size_t(id)] = entry.first;
      v.types[size_t(id)] = entry.second;
    }
    const json& merges = model.at("merges");
    v.merges.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) v.merges.push_back(merge_string(merges[r], r, file));

    // Special ids: tokenizer_config.json's tokens among added_tokens, then config.json's *_token_id.
    const json cfg = read_json_if_exists(model_dir / "tokenizer_config.json");
    const json config = read_json_if_exists(model_dir / "config.json");
    auto special = [&](const std::string& typ) -> int32_t {
      if (const auto content = config_token(cfg, typ + "_token")) {
        for (const auto& a : tok.value("added_tokens", json::array())) {
          if (a.value("content", "") == *content) return a.at("id").get<int32_t>();
        }
      }
      const std::string key = typ + "_token_id";
      if (config.is_object() && config.contains(key) && config[key].is_number_integer()) {
        const auto id = config[key].get<int64_t>();
        if (id >= 0 && id < n) return int32_t(id);
      }
      return -1;
    };
    v.bos_id = special("bos");
    v.eos_id = special("eos");
    v.unk_id = special("unk");
    v.sep_id = special("sep");
    v.pad_id = special("pad");
    template_flags(tok, config_token(cfg, "bos_token"), config_token(cfg, "eos_token"), &v);
    if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
      v.add_bos = cfg["add_bos_token"].get<bool>();
    if (cfg.is_object() && cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean())
      v.add_eos = cfg["add_eos_token"].get<bool>();
    v.chat_template = read_chat_template(model_dir, cfg);
  } catch (const json::exception& e) {
    throw_file_error(file.string(), std::string("unexpected structure: ") + e.what());
  }
  return v;
}

void add_bpe_vocab(GgufWriter& w, const BpeVocab& v) {
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", v.pre);
  w.add_array_string("tokenizer.ggml.tokens", v.tokens);
  w.add_array_i32("tokenizer.ggml.token_type", v.types);
  w.add_array_string("tokenizer.ggml.merges", v.merges);
  auto id = [&](const char* key, int32_t value) {
    if (value >= 0) w.add_u32(key, static_cast<uint32_t>(value));
  };
  id("tokenizer.ggml.bos_token_id", v.bos_id);
  id("tokenizer.ggml.eos_token_id", v.eos_id);
  id("tokenizer.ggml.unknown_token_id", v.unk_id);
  id("tokenizer.ggml.seperator_token_id", v.sep_id);  // sic: llama.cpp's key
  id("tokenizer.ggml.padding_token_id", v.pad_id);
  if (v.add_bos) w.add_bool("tokenizer.ggml.add_bos_token", *v.add_bos);
  if (v.add_eos) w.add_bool("tokenizer.ggml.add_eos_token", *v.add_eos);
  if (!v.chat_template.empty()) w.add_string("tokenizer.chat_template", v.chat_template);
}

}  // namespace qlora::gguf
