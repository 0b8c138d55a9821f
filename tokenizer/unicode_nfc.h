// Unicode Normalization Form C (UAX #15), for tokenizer.json files whose normalizer is NFC (Qwen2/2.5/3): canonical
// decomposition, canonical ordering of combining marks, canonical composition. The data tables are generated from
// Python's unicodedata (scripts/gen-nfc-tables.py, Unicode 14.0); Hugging Face tokenizers uses the Rust
// unicode-normalization crate, whose newer Unicode versions differ only on code points assigned after 14.0.
#pragma once

#include <string>
#include <string_view>

namespace qlora::tokenizer {

// NFC of valid UTF-8 text (the tokenizer repairs invalid UTF-8 first). ASCII text is returned unchanged at once.
std::string nfc(std::string_view utf8);

// The Unicode version of the tables ("14.0.0").
const char* nfc_unicode_version();

}  // namespace qlora::tokenizer
