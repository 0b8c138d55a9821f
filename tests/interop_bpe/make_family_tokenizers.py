#!/usr/bin/env python
"""tokenizer.json files shaped like Qwen2/2.5/3's and Gemma's, made by transformers' own tokenizer classes, and golden
ids for them from Hugging Face `tokenizers` (the Rust library): the reference for qlora.cpp's BPE tokenizer on these
families (tokenizer/bpe_tokenizer.h; issue #19 item 4).

    .venv/bin/python tests/interop_bpe/make_family_tokenizers.py --out tests/fixtures/bpe_families
    .venv/bin/python tests/interop_bpe/make_family_tokenizers.py --out DIR --seed 7 --all   # fresh, full-size goldens

No model hub: the real files cannot be downloaded here, so each family's file is built the way transformers builds the
real one, from a vocabulary trained locally:
  qwen2/  transformers' Qwen2Tokenizer (NFC normalizer, Qwen's pre-tokenizer regex + ByteLevel, ByteLevel decoder)
          over a byte-level BPE trained by `tokenizers` on assets/tiny_corpus.txt, with Qwen's special tokens
          <|endoftext|>, <|im_start|>, <|im_end|> and its tool-call markers.
  gemma/  transformers' GemmaTokenizer converted from tests/fixtures/spm/gemma_like.model (a sentencepiece BPE trained
          with Gemma's settings): char-level BPE with byte fallback, Replace(" " -> U+2581) normalizer, Split(" ")
          pre-tokenizer, Replace/ByteFallback/Fuse decoder.
Each folder gets tokenizer.json, tokenizer_config.json and golden.jsonl: one JSON object per line,
{"text", "ids" (special tokens parsed), "ids_plain" (encode_special_tokens), "decoded" (decode(ids))}.
The strings are make_golden.py's generator (a subset unless --all) plus each family's own extras (its special tokens,
NFC-sensitive text, characters outside the vocabulary).
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import make_golden  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

SUBSET = 600  # generated strings kept in the committed goldens (FIXED and CODE always)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>"]
NFC_TEXTS = ["e\u0301", "cafe\u0301 na\u0308ive", "\u212b \u2126 \u212a", "\u1100\u1161\u11a8 \u1100\u1161",
             "a\u0328\u0301 a\u0301\u0328", "\u0041\u030a\u0301", "\u00c5\u0301", "\ufb01 \u2460 \uff21",
             "\u0915\u093c \u0958", "\u05d1\u05bc \ufb31", "\u1e9b\u0323", "q\u0307\u0323", "\u0344 \u0340\u0341",
             "\uac00\u11a8", "\u0fb2\u0f80", "x\u0303\u0303\u0303\u0303 \u01d5"]
QWEN_EXTRA = ["<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
              "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|endoftext|><|endoftext|>", "<|im_start", "im_end|>",
              "12345 67 8", "don't DON'T it's", "  \n\n  x  ", "\u4f60\u597d\uff0c\u4e16\u754c"] + NFC_TEXTS
GEMMA_EXTRA = ["<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", "<s>Hi</s>", "<pad><unk>",
               "\U0001f600 \U0001f9d1\u200d\U0001f4bb", "\u4f60\u597d", "  leading", "trailing  ", "a\tb\nc",
               "\u2581already\u2581marked", "<0x41>"] + NFC_TEXTS


def corpus_lines():
    text = (ROOT / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def make_qwen2(out):
    from transformers import Qwen2Tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus_lines(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges,
                         unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         additional_special_tokens=QWEN_SPECIALS)
    tok.add_tokens(QWEN_ADDED)
    tok.save_pretrained(str(out))


def make_gemma(out):
    from transformers import GemmaTokenizer
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(ROOT / "tests" / "fixtures" / "spm" / "gemma_like.model", pathlib.Path(d) / "tokenizer.model")
        # gemma_like.model names its specials <pad> </s> <s> <unk> (ids 0-3, Gemma's order).
        tok = GemmaTokenizer.from_pretrained(d, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                             pad_token="<pad>", mask_token=None)
        tok.save_pretrained(str(out))
    for leftover in ("tokenizer.model", "special_tokens_map.json", "chat_template.jinja"):
        (out / leftover).unlink(missing_ok=True)


def drop_local_keys(folder):
    """tokenizer_config.json without the keys that name this machine's temporary paths."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("vocab_file", "is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def strings(seed, extra, everything):
    gen = make_golden.Generator(seed).generate()
    fixed = len(make_golden.FIXED) + len(make_golden.CODE)
    if not everything:
        gen = gen[:fixed + SUBSET]
    return gen + extra


def write_golden(folder, texts):
    parsed = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain.encode_special_tokens = True
    with open(folder / "golden.jsonl", "w", encoding="utf-8", newline="") as f:
        for t in texts:
            ids = parsed.encode(t, add_special_tokens=False).ids
            rec = {"text": t, "ids": ids, "ids_plain": plain.encode(t, add_special_tokens=False).ids,
                   "decoded": parsed.decode(ids, skip_special_tokens=False)}
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder that gets qwen2/ and gemma/")
    ap.add_argument("--seed", type=int, default=make_golden.kDefaultSeed)
    ap.add_argument("--all", action="store_true", help="every generated string, not the committed subset")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    for name, make, extra in (("qwen2", make_qwen2, QWEN_EXTRA), ("gemma", make_gemma, GEMMA_EXTRA)):
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        make(folder)
        drop_local_keys(folder)
        write_golden(folder, strings(args.seed, extra, args.all))
        print(f"{folder}: {sum(1 for _ in open(folder / 'golden.jsonl', encoding='utf-8'))} golden strings")


if __name__ == "__main__":
    main()
