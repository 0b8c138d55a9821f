#!/usr/bin/env python
"""Reference ids for qlora.cpp's `llama3` prompt template (data/prompt_template.cpp): Meta's own Llama 3
chat_template rendered and tokenized by transformers' apply_chat_template.

    .venv/bin/python tests/interop_bpe/make_chat_golden.py > tests/fixtures/llama3_chat_golden.json
    .venv/bin/python tests/interop_bpe/make_chat_golden.py --out FILE

The tokenizer is assets/llama3-tokenizer/ loaded with PreTrainedTokenizerFast; its tokenizer_config.json is the
unmodified file of Meta's original meta-llama/Meta-Llama-3-8B release (see NOTICE there) and carries Meta's
chat_template, which is used as is (the script checks it is there and is the template below, so a changed asset
cannot slip through):
    {% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' +
    message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}
    {% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}
    {{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
That template always ends with the generation prompt "<|start_header_id|>assistant<|end_header_id|>\n\n"
(4 tokens); a training example ends with the last assistant turn's <|eot_id|>, so those 4 trailing ids are removed
(and checked to be exactly that prompt).

Output: a JSON array, one {"messages": [...], "ids": [...]} per line; the first three conversations are the ones
the former JS generator (@lenml/tokenizers) used, byte for byte the same lines.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import PreTrainedTokenizerFast  # noqa: E402

kTokenizerDir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "llama3-tokenizer")
kMetaTemplate = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
kGenerationPrompt = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    # The three of the former make_chat_golden.js.
    [msg("user", "What is QLoRA?"), msg("assistant", "Low-rank adapters on a 4-bit base.")],
    [
        msg("system", "You are terse."),
        msg("user", "  Spaces around  "),
        msg("assistant", "Trimmed.\n"),
        msg("user", "Zähle: 1 2 3 — and 日本語?"),
        msg("assistant", "4 5 6 🎉"),
    ],
    [msg("user", "Code:\n```\nint main() { return 0; }\n```"), msg("assistant", "It returns 0.")],
    # System prompt, one turn.
    [msg("system", "You are a helpful assistant that answers in one sentence."),
     msg("user", "Why is the sky blue?"),
     msg("assistant", "Sunlight scatters off air molecules, and blue light scatters the most.")],
    # No system prompt, three turns, contractions and numbers.
    [msg("user", "I'm testing: what's 12345 + 678?"), msg("assistant", "It's 13023."),
     msg("user", "And they'll double it?"), msg("assistant", "That'd be 26046."),
     msg("user", "OK, thanks!!"), msg("assistant", "You're welcome :)")],
    # Unicode: scripts, combining marks, ZWJ emoji, full-width forms, RTL.
    [msg("system", "Réponds en français, s’il te plaît."),
     msg("user", "Ὀδυσσεύς, Привет, مرحبا, 你好，世界, 안녕하세요, e\u0301 ﬁ １２３"),
     msg("assistant", "👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 — ça va très bien, merci ! ½ ∀x∈ℝ")],
    # Empty contents: system, user and assistant (the assistant's empty turn still trains its <|eot_id|>).
    [msg("system", ""), msg("user", ""), msg("assistant", "")],
    [msg("user", "Say nothing."), msg("assistant", ""), msg("user", "   \n\t "), msg("assistant", "Fine.")],
    # Leading / trailing ASCII whitespace of every kind Jinja's trim removes, and whitespace kept inside.
    [msg("system", "\n\n  Be brief.\t \n"),
     msg("user", " \r\n  two  spaces  inside \n\nand a blank line\t\t"),
     msg("assistant", "\t\vline one\n\n  line two  \f\r\n")],
    # Unicode whitespace around the contents: Jinja's trim is Python's str.strip(), which removes every character
    # for which str.isspace() holds (NBSP, ideographic space, em space, line separator, NEL, U+001C..U+001F, ...).
    [msg("user", "\u00a0\u3000Non-breaking and ideographic spaces\u2003\u2028"),
     msg("assistant", "\x1cSeparators\x1f\u0085\u205f\u202f and NEL \u0085inside\u2029\u1680")],
    # Code with indentation and a trailing newline (trimmed), and a question mark run.
    [msg("user", "def f(x):\n    return x ** 2\n\nWhat does f(3) give???\n"),
     msg("assistant", "```python\n>>> f(3)\n9\n```\n")],
]


def load_tokenizer():
    tok = PreTrainedTokenizerFast.from_pretrained(kTokenizerDir)
    if tok.chat_template != kMetaTemplate:
        sys.exit(f"FAIL: {kTokenizerDir}/tokenizer_config.json's chat_template is not Meta's Llama 3 template:\n"
                 f"{tok.chat_template!r}")
    return tok


def reference_ids(tok, messages):
    ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=False))
    prompt = tok.encode(kGenerationPrompt, add_special_tokens=False)
    if len(prompt) != 4 or ids[-len(prompt):] != prompt:
        sys.exit(f"FAIL: unexpected template tail {ids[-len(prompt):]} (want {prompt}) for {messages}")
    return ids[:-len(prompt)]


def golden_text(tok):
    lines = [json.dumps({"messages": m, "ids": reference_ids(tok, m)}, ensure_ascii=False, separators=(",", ":"))
             for m in CONVERSATIONS]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    args = ap.parse_args()
    text = golden_text(load_tokenizer())
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))


if __name__ == "__main__":
    main()
