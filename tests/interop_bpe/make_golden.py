#!/usr/bin/env python
"""Reference token ids for qlora.cpp's byte-level BPE tokenizer (tokenizer/bpe_tokenizer.h), computed with Hugging Face
`tokenizers` (the Rust library) on Meta's Llama 3 tokenizer.json (assets/llama3-tokenizer/).

    .venv/bin/python tests/interop_bpe/make_golden.py > tests/fixtures/bpe_golden_llama3.jsonl
    .venv/bin/python tests/interop_bpe/make_golden.py --seed 7 > other.jsonl   # another set of strings
    .venv/bin/python tests/interop_bpe/make_golden.py --check FILE             # FILE's ids == the library's ids

Output: one JSON object per line: {"text": str, "ids": [...], "ids_plain": [...]}
  ids       = tokenizer.encode(text, add_special_tokens=False).ids   (special-token strings in the text are parsed)
  ids_plain = the same with tokenizer.encode_special_tokens = True   (special-token strings are plain text: the
              whole text goes through the pre-tokenizer and the BPE model)
The strings are generated deterministically: this is a line-by-line port of the former JS generator
(tests/interop_bpe/make_golden.js, same mulberry32 PRNG and draw order), so the default seed gives the strings of
the committed tests/fixtures/bpe_golden_llama3.jsonl byte for byte (run_interop.py checks that).

The JS generator left out characters where its JS port of the tokenizer differed from the Rust library (U+FEFF and
U+0085, U+017F and U+212A, lone surrogates, characters assigned after Unicode 14); the port keeps those exclusions
so the strings stay the same. --extra appends hand-picked strings with exactly those characters (valid UTF-8 only),
which the real library handles, so they are checked too.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer  # noqa: E402

kDefaultSeed = 20240418  # the checked-in golden file; --seed N makes a different set of strings
kTokenizerJson = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "llama3-tokenizer",
                              "tokenizer.json")
kMask32 = 0xFFFFFFFF


def make_rng(seed):
    """mulberry32, bit for bit as the JS version (int32 arithmetic done on uint32 masks)."""
    state = [seed & kMask32]

    def imul(a, b):
        return (a * b) & kMask32

    def rng():
        state[0] = (state[0] + 0x6D2B79F5) & kMask32
        t = state[0]
        t = imul(t ^ (t >> 15), t | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & kMask32
        return ((t ^ (t >> 14)) & kMask32) / 4294967296

    return rng


WORDS = (
    "the quick brown fox jumps over lazy dog a an of to in is it that for on with as was he she they we you "
    "training model tokenizer adapter quantization gradient learning rate batch sequence attention layer "
    "Hello World Python JavaScript README GPU CPU LoRA QLoRA NF4 don't can't won't it's I'm you're we've they'll "
    "hello HELLO Hello hElLo internationalization antidisestablishmentarianism supercalifragilistic "
    "Mr. Dr. e.g. i.e. etc. U.S.A. www.example.com user@example.org https://huggingface.co/meta-llama"
).split(" ")
PUNCT = [".", ",", "!", "?", ";", ":", "...", " -", " --", "—", "–", "(", ")", "[", "]", "\"", "'", "`", "…"]
WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \t ", "\u00a0", "\u3000",
      "\u2003", "\u2028", "\v", "\f", "    ", "\n\n\n", " \r\n  "]
ACCENTED = ["café", "naïve", "Ångström", "façade", "Žluťoučký kůň", "Müller", "Straße", "Łódź", "ça va",
            "résumé", "coöperate", "São Paulo", "Tiếng Việt", "e\u0301", "a\u0308o\u0308u\u0308", "ÆØÅ æøå",
            "İstanbul", "ıi", "Ὀδυσσεύς", "ĲSSELMEER", "ǅemal", "œuvre", "ﬁnance", "Ⅻ"]
CJK = ["你好，世界", "机器学习模型", "今天天气很好。", "日本語のテキスト", "カタカナとひらがな", "こんにちは",
       "한국어 문장입니다", "안녕하세요", "漢字", "中文English混合", "東京タワー", "（全角）", "１２３４５", "ｈｅｌｌｏ"]
SCRIPTS = ["Привет, мир!", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
           "ქართული", "Հայերեն", "বাংলা", "தமிழ்", "ᚠᛇᚻ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚", "٣٤٥", "१२३", "Ⅷ ⅷ",
           "½ ¾ ²³", "∀x∈ℝ: x²≥0", "→ ← ↔ ⇒", "© ® ™ €100 £5 ¥"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇩🇪", "🇯🇵🇺🇸", "❤️", "✨", "🤖", "👩🏻‍💻", "🧑‍🤝‍🧑", "1️⃣", "😀😀😀",
         "🐍🦀", "☕", "⚡️", "🫠"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|reserved_special_token_0|>", "<|reserved_special_token_10|>", "<|reserved_special_token_247|>",
            "<|python_tag|>", "<|finetune_right_pad_id|>"]
NEAR_SPECIALS = ["<|eot_id", "<|eot_id|", "eot_id|>", "<|EOT_ID|>", "< |eot_id|>", "<<|eot_id|>>", "<|>", "<||>",
                 "<|begin_of_text|", "|><|", "<|reserved_special_token_999|>"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Re", "'VE", "'M", "'LL", "'Ll",
                "'D", "'x", "''", "'", "’s", "’ll"]
CODE = [
    "int main(int argc, char** argv) {\n  return 0;\n}\n",
    "def f(x):\n    return x ** 2  # square\n",
    "for (size_t i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}",
    "const x = {a: 1, b: [2, 3], \"c\": null};",
    "if __name__ == \"__main__\":\n    main()\n",
    "#include <vector>\n#include \"model/llama.h\"\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "x=1;y=2;z=x+y*3-4/5%6",
    "std::unique_ptr<Tokenizer> t = load_tokenizer(dir);",
    "    \t\treturn;\r\n}",
    "<html><body class=\"main\">&nbsp;&amp;</body></html>",
    "$ ls -la | grep '.cpp' > out.txt 2>&1",
    "0x7fff 0b1010 1e-5 3.14159 -42 +7 1_000_000",
    "a->b; c::d; e.f(); g[h] = i?j:k;",
    "// TODO(me): fix\n/* block\n   comment */",
    "```python\nprint('hi')\n```",
]
# Random code points from varied blocks (all assigned in Unicode 14, no surrogates / U+FEFF / U+0085 / U+017F / U+212A).
RANGES = [(0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x17E), (0x180, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x5D0, 0x5EA), (0x621, 0x64A), (0x905, 0x939), (0xE01, 0xE30), (0x1100, 0x1112), (0x2000, 0x200A),
          (0x2010, 0x2027), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x3041, 0x3096), (0x30A1, 0x30FA),
          (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xFF01, 0xFF5E), (0x1F600, 0x1F64F), (0x1F300, 0x1F5FF),
          (0x1D400, 0x1D454), (0x0300, 0x036F), (0x9, 0xD)]
FIXED = ["", " ", "  ", "\n", "\r\n", "\t", " \n ", "a", "A", "1", "12", "123", "1234", "12345678901", "'s",
         "'S", "'LL", "I'M", "DON'T", "Hello world", " Hello world", "Hello  world", "Hello world ",
         "hello\n\nworld", "hello \n world", "   leading", "trailing   ", "\t\tx", "x\r\n\r\ny", "<|eot_id|>",
         "<|begin_of_text|>Hello", "a<|eot_id|>b", " <|eot_id|> ", "<|eot_id|><|eot_id|>", "<|eot_id",
         "👨‍👩‍👧‍👦", "🏳️‍🌈", "你好", "한국어", "é", "e\u0301", "ﬁ", "\u00a0", "\u3000x", "x\u2028y",
         "ab'cd", "it's 'quoted' text", "...", "!!!", "?!", "--", "===", "\\n", "a  \n  b"]
# --extra: the characters the JS generator had to leave out (see the module docstring), in context.
EXTRA = ["\ufeffHello", "a\ufeff b", "x\u0085y", " \u0085 \u0085\n", "ſtraße 'ſ", "'ſ 'S", "\u212a 10\u212a",
         "it'\u212a", "\u212aelvin's", "\U0001fae8 \U0001fa77", "\u0085\ufeff\u017f\u212a",
         "<|eot_id|>\ufeff<|eot_id|>", "x\u0085<|eot_id|>\u0085"]


class Generator:
    def __init__(self, seed):
        self.rng = make_rng(seed)

    def pick(self, arr):
        return arr[int(self.rng() * len(arr))]

    def randint(self, lo, hi):
        return lo + int(self.rng() * (hi - lo + 1))

    def prose(self):
        n = self.randint(1, 25)
        s = ""
        for i in range(n):
            if i > 0:
                s += " " if self.rng() < 0.85 else self.pick(WS)
            s += self.pick(WORDS)
            if self.rng() < 0.15:
                s += self.pick(PUNCT)
        return s

    def digits(self):
        s = ""
        n = self.randint(1, 6)
        for _ in range(n):
            length = self.randint(1, 14)
            d = "".join(str(self.randint(0, 9)) for _ in range(length))
            s += self.pick(["", " ", "$", "-", ".", ",", "x", "abc", " 1,000.", "%", "\n", "(", ")"]) + d
        return s

    def ws(self):
        s = ""
        n = self.randint(1, 8)
        for _ in range(n):
            s += self.pick(WS)
            if self.rng() < 0.6:
                s += self.pick(WORDS + PUNCT + ["1", "22", "333", "4444", "é", "中"])
        return s

    def contraction(self):
        s = ""
        n = self.randint(1, 6)
        for i in range(n):
            w = self.pick(["I", "YOU", "he", "She", "IT", "we", "They", "don", "CAN", "x", "", " ", "1", "中", "é"])
            sep = self.pick([" ", "", "\n"]) if i > 0 else ""
            c = self.pick(CONTRACTIONS)
            s += sep + w + c + self.pick(["", " ", ".", "s", "S", "ing"])
        return s

    def pool(self, pool, k):
        s = ""
        n = self.randint(1, k)
        for i in range(n):
            sep = self.pick([" ", "", "\n", ", "]) if i > 0 and self.rng() < 0.5 else ""
            s += sep + self.pick(pool)
        return s

    def special(self):
        s = ""
        n = self.randint(1, 6)
        for _ in range(n):
            r = self.rng()
            if r < 0.4:
                s += self.pick(SPECIALS)
            elif r < 0.55:
                s += self.pick(NEAR_SPECIALS)
            elif r < 0.75:
                s += self.pick(WS)
            else:
                s += self.prose()
        return s

    def chat(self):
        s = "<|begin_of_text|>"
        turns = self.randint(1, 3)
        for _ in range(turns):
            role = self.pick(["system", "user", "assistant"])
            s += "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + self.prose() + "<|eot_id|>"
        return s

    def soup(self):
        s = ""
        n = self.randint(1, 40)
        for _ in range(n):
            lo, hi = self.pick(RANGES)
            cp = self.randint(lo, hi)
            if cp in (0x17F, 0x85):
                cp = 0x41
            s += chr(cp)
        return s

    def mixed(self):
        parts = [self.prose, self.digits, self.ws, self.contraction, lambda: self.pool(ACCENTED, 4),
                 lambda: self.pool(CJK, 3), lambda: self.pool(SCRIPTS, 3), lambda: self.pool(EMOJI, 5),
                 lambda: self.pick(CODE), self.soup]
        s = ""
        n = self.randint(2, 5)
        for _ in range(n):
            s += self.pick(parts)()
        return s

    def generate(self):
        out = list(FIXED) + list(CODE)
        gens = [(self.prose, 700), (self.digits, 250), (self.ws, 300), (self.contraction, 250),
                (lambda: self.pool(ACCENTED, 6), 200), (lambda: self.pool(CJK, 5), 200),
                (lambda: self.pool(SCRIPTS, 5), 200), (lambda: self.pool(EMOJI, 8), 200),
                (lambda: self.pool(CODE, 3), 150), (self.special, 250), (self.chat, 100), (self.soup, 300),
                (self.mixed, 400)]
        for g, n in gens:
            out.extend(g() for _ in range(n))
        return out


class Reference:
    """The real library: ids with and without special-token parsing."""

    def __init__(self, path=kTokenizerJson):
        self.parsed = Tokenizer.from_file(path)
        self.plain = Tokenizer.from_file(path)
        self.plain.encode_special_tokens = True

    def ids(self, text):
        return self.parsed.encode(text, add_special_tokens=False).ids

    def ids_plain(self, text):
        return self.plain.encode(text, add_special_tokens=False).ids


def golden_line(ref, text):
    # Compact, non-ASCII kept, control characters as \\u00xx: the same bytes as JS's JSON.stringify.
    return json.dumps({"text": text, "ids": ref.ids(text), "ids_plain": ref.ids_plain(text)}, ensure_ascii=False,
                      separators=(",", ":"))


def check(ref, path):
    """Every line of `path` has the library's ids; returns the number of lines, exits 1 on the first 10 mismatches."""
    n, bad = 0, 0
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            rec = json.loads(line)
            n += 1
            for key, fn in (("ids", ref.ids), ("ids_plain", ref.ids_plain)):
                want = fn(rec["text"])
                if rec[key] != want:
                    bad += 1
                    if bad <= 10:
                        print(f"{path}:{lineno}: {key} {rec[key]} != tokenizers' {want} for {json.dumps(rec['text'])}")
    if bad:
        sys.exit(f"FAIL: {bad} id lists of {path} differ from tokenizers (of {2 * n})")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=kDefaultSeed)
    ap.add_argument("--extra", action="store_true", help="append the EXTRA strings (characters the JS port missed)")
    ap.add_argument("--check", metavar="FILE", help="check FILE's ids against tokenizers instead of generating")
    ap.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    args = ap.parse_args()
    ref = Reference()
    if args.check:
        n = check(ref, args.check)
        print(f"{args.check}: {n} lines, ids and ids_plain equal to tokenizers'")
        return
    texts = Generator(args.seed).generate() + (EXTRA if args.extra else [])
    data = "".join(golden_line(ref, t) + "\n" for t in texts)
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data.encode("utf-8"))


if __name__ == "__main__":
    main()
