#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/seeds/<target>/ (small, committed).

  .venv/bin/python fuzz/make_seeds.py      (tokenizers from the project's .venv; build/testwork from a test run)

Fixtures already in the repo (tests/fixtures, configs/) are listed as seeds in fuzz/CMakeLists.txt directly; the
files here are the inputs no fixture covers: small safetensors files, model configs of each family, bnb quant
states, tokenizer.json files, chat-template variants, data records per loader variant, a trainer state with its
cursor and a checkpoint manifest.
"""
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
TESTWORK = os.path.join(ROOT, "build", "testwork")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def safetensors_bytes(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)] -> a .safetensors file (as the format's spec lays it out)."""
    header, blob = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, -7)
    put("safetensors", "two_tensors.safetensors",
        safetensors_bytes([("a", "F32", [2, 3], f32), ("b", "BF16", [4], b"\x80\x3f" * 4)], {"format": "pt"}))
    put("safetensors", "dtypes.safetensors",
        safetensors_bytes([("u8", "U8", [3], b"\x01\x02\x03"), ("i64", "I64", [1], struct.pack("<q", -5)),
                           ("f16", "F16", [2], b"\x00\x3c\x00\xc0"), ("bool", "BOOL", [2], b"\x01\x00"),
                           ("scalar", "F32", [], struct.pack("<f", 2.0)), ("empty", "F32", [0, 4], b"")]))
    put("safetensors", "unpadded.safetensors", safetensors_bytes([("x", "F32", [1], struct.pack("<f", 1))], pad=False))


def hf_config_seeds():
    found = []
    for root, _, files in os.walk(TESTWORK):
        if "config.json" in files and "/tmp/" not in root + "/" and "merged" not in root and "nf4" not in root:
            found.append(os.path.join(root, "config.json"))
    seen = set()
    for path in sorted(found):
        data = open(path, "rb").read()
        if data not in seen:  # the same family made by several tests
            seen.add(data)
            put("hf_config", os.path.relpath(os.path.dirname(path), TESTWORK).replace(os.sep, "_") + ".json", data)
    for root, _, files in os.walk(TESTWORK):  # one 4-bit model's config (quantization_config)
        if root.endswith("nf4") and "config.json" in files and "/tmp/" not in root:
            shutil.copy(os.path.join(root, "config.json"), os.path.join(SEEDS, "hf_config", "nf4.json"))
            break


def bnb_seeds():
    for flags, qt in ((0, "nf4"), (1, "fp4")):
        plain = {"quant_type": qt, "blocksize": 64, "dtype": "float32", "shape": [32, 64]}
        nested = dict(plain, nested_blocksize=256, nested_dtype="float32", nested_offset=0.4213)
        put("bnb_quant_state", qt + "_plain.bin", bytes([flags]) + json.dumps(plain).encode())
        put("bnb_quant_state", qt + "_nested.bin", bytes([flags | 2]) + json.dumps(nested).encode())


def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def bpe_seeds():
    b2u = byte_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    g = b2u[ord(" ")]
    for i, tok in enumerate(["he", "ll", "hell", "hello", g + "w", "lo"]):
        vocab[tok] = 256 + i
    tiny = {
        "version": "1.0",
        "added_tokens": [{"id": 262, "content": "<s>", "special": True}, {"id": 263, "content": "</s>", "special": True},
                         {"id": 264, "content": "[X]", "special": False, "lstrip": True, "rstrip": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [262], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "ignore_merges": False, "byte_fallback": False,
                  "merges": ["l l", "h e", "l o", "he ll", "hell o", g + " w"]},
    }
    put("bpe_tokenizer", "tiny_bytelevel.json", json.dumps(tiny, ensure_ascii=False))

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    with open(os.path.join(ROOT, "assets", "tiny_corpus.txt"), encoding="utf-8") as f:
        corpus = f.read().splitlines()[:2000]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    put("bpe_tokenizer", "trained_bytelevel.json", t.to_str())
    t = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    bytes_tokens = ["<0x%02X>" % b for b in range(256)]
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"] + bytes_tokens))
    put("bpe_tokenizer", "trained_bytefallback.json", t.to_str())


JINJA_EXTRA = {
    "features.jinja": "{%- set ns = namespace(n=0) -%}{%- macro m(x, y=2) -%}[{{ x ~ y }}]{%- endmacro -%}"
                      "{% for msg in messages if msg.role != 'tool' %}{{ loop.index }}{{ m(msg.role|upper) }}"
                      "{{ msg.content|string|trim|replace('a', 'b')|length }}{% set ns.n = ns.n + 1 %}"
                      "{% if loop.last %}{{ ns.n }}{% endif %}{% else %}none{% endfor %}"
                      "{{ tools|tojson }}{{ (messages|map(attribute='role')|list)[1:3] }}"
                      "{{ {'a': 1, 'b': [1, 2.5, none, true]}|items|list }}{{ '%d-%s'|format(3, 'x') }}"
                      "{% if add_generation_prompt %}{{ bos_token + 'gen' }}{% endif %}",
    "raise.jinja": "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
    "generation.jinja": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
                        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
    "strings.jinja": "{{ 'abc'.upper() }}{{ 'a,b'.split(',') }}{{ 'x'.startswith('x') }}{{ '  s '.strip() }}"
                     "{{ messages|length }}{{ range(3)|list }}{{ 7 // 2 }}{{ 7 % 3 }}{{ 2 ** 3 }}{{ -1 if not none }}"
                     "{% filter upper %}f{% endfilter %}{% set x %}blk{% endset %}{{ x }}{{ strftime_now('%Y') }}",
}


def template_seeds():
    for name, src in JINJA_EXTRA.items():
        put("jinja", name, src)
    tiny_cfg = os.path.join(TESTWORK, "tiny", "tokenizer_config.json")
    base = json.load(open(tiny_cfg)) if os.path.exists(tiny_cfg) else {"bos_token": "<s>", "eos_token": "</s>"}
    put("tokenizer_config", "tiny.json", json.dumps(base, indent=2))
    tdir = os.path.join(ROOT, "tests", "fixtures", "chat_templates")
    for fn in sorted(os.listdir(tdir)):
        if fn.endswith(".jinja"):
            src = open(os.path.join(tdir, fn), encoding="utf-8").read()
            put("tokenizer_config", fn.replace(".jinja", ".json"), json.dumps(dict(base, chat_template=src), indent=2))
    src = open(os.path.join(tdir, "phi3.jinja"), encoding="utf-8").read()
    listed = dict(base, chat_template=[{"name": "default", "template": src}, {"name": "tool_use", "template": "x"}],
                  added_tokens_decoder={"262": {"content": "<s>", "special": True, "lstrip": False, "rstrip": False,
                                                "normalized": False, "single_word": False},
                                        "263": {"content": "</s>", "special": True}},
                  bos_token={"content": "<s>", "__type": "AddedToken"}, add_eos_token=True, pad_token="</s>")
    put("tokenizer_config", "list_and_added.json", json.dumps(listed, indent=2))


def records_seeds():
    alpaca = [{"instruction": "What color is the sky?", "input": "", "output": "Blue."},
              {"instruction": "Add", "input": "2 and 3", "output": "5"}]
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}]},
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    completion = [{"prompt": "The capital of France is", "completion": " Paris."}]
    text = [{"text": "Once upon a time there was a tiny model."}, {"text": "caf\u00e9 \U0001F600 \u2581"}]
    jl = lambda recs: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    # Variant index = first byte (fuzz_records.cpp kVariants).
    for i, (name, body) in enumerate([("alpaca", jl(alpaca)), ("chat_llama2", jl(chat)), ("chat_chatml", jl(chat)),
                                      ("chat_llama3", jl(chat)), ("completion", jl(completion)), ("text", jl(text)),
                                      ("plain_txt", "First paragraph\nline two.\n\n  \nSecond one.\r\n\n"),
                                      ("alpaca_custom", jl(alpaca) + "\n{\"instruction\": 1}\n"),
                                      ("chat_custom_roles", jl(chat))]):
        put("records", "%d_%s.bin" % (i, name), bytes([i]) + body.encode())
    tool_chat = {"messages": [{"role": "user", "content": "What is 2+2?"},
                              {"role": "assistant", "content": "", "tool_calls": [
                                  {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
                              {"role": "tool", "content": "4"}, {"role": "assistant", "content": "It is 4."}],
                 "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]}
    for i in range(6):  # template index = first byte (the sorted tests/fixtures/chat_templates/*.jinja)
        put("chat_records", "%d_chat.bin" % i, bytes([i]) + (jl(chat) + jl([tool_chat]) + jl(alpaca[:1])).encode())


def adapter_seeds():
    cfg = json.load(open(os.path.join(ROOT, "tests", "fixtures", "lora_peft_fixture", "adapter_config.json")))
    put("adapter_config", "rslora_patterns.json",
        json.dumps(dict(cfg, use_rslora=True, target_modules="all-linear", rank_pattern={"q_proj": 4, "v_proj": 2},
                        alpha_pattern={"v_proj": 3.5}), indent=2))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def checkpoint_seeds():
    # The fixed checkpoint folder of fuzz_manifest.cpp, and its manifest as trainer/checkpoint_manifest.cpp writes it.
    files = {"trainer_state.json": b"{\"step\": 4}\n", "adapter_config.json": b"{\"peft_type\": \"LORA\"}\n",
             "effective_config.yaml": b"train:\n  max_steps: 8\n"}
    manifest = {"checksum": "crc32c",
                "files": {k: {"crc32c": "%08x" % crc32c(v), "size": len(v)} for k, v in sorted(files.items())},
                "format": "qlora.cpp checkpoint manifest v1"}
    put("manifest", "manifest.json", json.dumps(manifest, indent=2))
    ckpt = os.path.join(TESTWORK, "tmp", "TrainerRun.ResumeIsBitwiseExact", "full", "ckpt")
    for step in ("checkpoint-4", "checkpoint-8"):
        path = os.path.join(ckpt, step, "trainer_state.json")
        if os.path.exists(path):
            s = json.load(open(path))
            s["data_state"]["files"] = ["@TRAIN@"]  # fuzz_trainer_state.cpp puts its data file's path there
            for f in s.get("data_files", []):
                f["path"] = "@TRAIN@"
            put("trainer_state", step + ".json", json.dumps(s, indent=2))
    effective = os.path.join(ckpt, "checkpoint-4", "effective_config.yaml")
    if os.path.exists(effective):
        put("train_config", "effective_config.yaml", open(effective, "rb").read())


def main():
    safetensors_seeds()
    hf_config_seeds()
    bnb_seeds()
    bpe_seeds()
    template_seeds()
    records_seeds()
    adapter_seeds()
    checkpoint_seeds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
