// The one way a JSON file is read: a nesting depth bounded while parsing (a hostile file nested 200k deep is an
// error, not a stack overflow) and error excerpts that never serialize a whole document.
// Every JSON file the project reads (config.json, safetensors headers, tokenizer.json, tokenizer_config.json,
// adapter_config.json, bnb quant states, trainer_state.json, cursors, data records) goes through read_json_file or
// parse_json; messages shown to the user quote values through json_excerpt, never through json::dump.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace qlora {

// Deeper than any real file (HF tokenizer.json: about 6; chat records: about 5), shallow enough that every
// recursive walk over a parsed document (dump, comparison, our own readers) stays far from the stack's end.
inline constexpr int kJsonMaxDepth = 64;
// How much of a value an error message quotes.
inline constexpr size_t kJsonExcerptChars = 120;

// Parses `text`; `source` names it in errors ("path" or "path: key"). Throws qlora::Error on invalid JSON or on
// arrays/objects nested deeper than `max_depth`, the check made during parsing, before the deep part is built.
nlohmann::json parse_json(std::string_view text, const std::string& source, int max_depth = kJsonMaxDepth);

// parse_json for callers that keep the file's key order (chat templates see keys as Python's json.load gives them).
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& source,
                                          int max_depth = kJsonMaxDepth);

// The same parse for callers that report a problem in their own words (a bad data line): nullopt on failure, with
// the reason (no file name, no hint) in *why.
std::optional<nlohmann::json> try_parse_json(std::string_view text, std::string* why, int max_depth = kJsonMaxDepth);

// read_file + parse_json, naming the path.
nlohmann::json read_json_file(const std::filesystem::path& path, int max_depth = kJsonMaxDepth);

// `v` as an int64_t: a JSON integer (an unsigned one only up to INT64_MAX), else nlohmann's type_error 302, which
// the readers already turn into a message naming their file. Never a float converted: get<int64_t>() of 1e21 is
// undefined behaviour (found by fuzz_trainer_state).
int64_t json_int64(const nlohmann::json& v);

// A compact JSON rendering of `j` cut to about `max_chars` characters ("..." marks the cut); walks at most a few
// levels deep and never more than it prints, so it is safe on any document, however large or deep.
std::string json_excerpt(const nlohmann::json& j, size_t max_chars = kJsonExcerptChars);
std::string json_excerpt(const nlohmann::ordered_json& j, size_t max_chars = kJsonExcerptChars);

}  // namespace qlora
