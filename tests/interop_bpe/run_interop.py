#!/usr/bin/env python
"""Live comparison of qlora.cpp's Llama 3 tokenization with the real Hugging Face tools (ctest label `interop`).

    run_interop.py bpe  --test-tokenizer build/bin/test_tokenizer --work DIR
        1. every line of tests/fixtures/bpe_golden_llama3.jsonl has the ids `tokenizers` gives (ids and ids_plain);
        2. make_golden.py (default seed) regenerates that file byte for byte (the generator and the fixture agree);
        3. for two fresh seeds (plus the strings the JS generator had to leave out): the library's ids vs our
           BpeTokenizer (test_tokenizer --gtest_filter=BpeLlama3.MatchesGoldenIds with QLORA_BPE_GOLDEN=that file).
    run_interop.py chat --test-data build/bin/test_data --work DIR
        1. make_chat_golden.py (transformers' apply_chat_template with Meta's template) gives the committed ids of
           the three original conversations of tests/fixtures/llama3_chat_golden.json, and the whole file;
        2. our `llama3` template gives the same ids on every conversation (test_data
           --gtest_filter=Llama3Template.IdsEqualMetaChatTemplate with QLORA_LLAMA3_CHAT_GOLDEN=the regenerated file).
Exits non-zero on any difference, and when a tool is missing (no skip: `make test` installs them).
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

kHere = os.path.dirname(os.path.abspath(__file__))
kFixtures = os.path.join(kHere, "..", "fixtures")
kBpeGolden = os.path.join(kFixtures, "bpe_golden_llama3.jsonl")
kChatGolden = os.path.join(kFixtures, "llama3_chat_golden.json")
kFreshSeeds = (7, 1234567)
kOriginalConversations = 3  # the ones of the former JS generator

sys.path.insert(0, kHere)


def fail(msg):
    sys.exit(f"FAIL: {msg}")


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines()), 1):
        if x != y:
            return f"line {i}:\n  committed:   {x[:300]!r}\n  regenerated: {y[:300]!r}"
    return f"same lines, lengths {len(a)} vs {len(b)} bytes"


def run_gtest(exe, test, env_var, path):
    """Runs one GoogleTest with env_var=path; the test must have run and passed."""
    env = dict(os.environ, **{env_var: path})
    t0 = time.time()
    r = subprocess.run([exe, f"--gtest_filter={test}"], env=env, capture_output=True, text=True)
    print(r.stdout[-4000:], r.stderr[-4000:], sep="", end="")
    if r.returncode != 0:
        fail(f"{os.path.basename(exe)} {test} with {env_var}={path} (exit {r.returncode})")
    if "[  PASSED  ] 1 test." not in r.stdout:
        fail(f"{test} did not run (filter matched nothing?)")
    print(f"ok: {test} on {path} ({time.time() - t0:.1f} s)")


def bpe(args):
    import make_golden as mg

    ref = mg.Reference()
    n = mg.check(ref, kBpeGolden)
    print(f"ok: {n} lines of {kBpeGolden}: ids and ids_plain equal to tokenizers'")
    regen = os.path.join(args.work, "bpe_golden_regen.jsonl")
    texts = mg.Generator(mg.kDefaultSeed).generate()
    with open(regen, "w", encoding="utf-8", newline="") as f:
        f.write("".join(mg.golden_line(ref, t) + "\n" for t in texts))
    a, b = read_bytes(kBpeGolden), read_bytes(regen)
    if a != b:
        fail(f"make_golden.py regenerates a different {kBpeGolden} ({regen}): "
             f"{first_difference(a.decode('utf-8'), b.decode('utf-8'))}\n"
             "  (the generator was edited without regenerating the fixture, or tokenizers changed)")
    print(f"ok: make_golden.py regenerates {kBpeGolden} byte for byte")
    for seed in kFreshSeeds:
        path = os.path.join(args.work, f"bpe_golden_seed{seed}.jsonl")
        texts = mg.Generator(seed).generate() + mg.EXTRA
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("".join(mg.golden_line(ref, t) + "\n" for t in texts))
        print(f"seed {seed}: {len(texts)} strings ({len(mg.EXTRA)} extra)")
        run_gtest(args.test_tokenizer, "BpeLlama3.MatchesGoldenIds", "QLORA_BPE_GOLDEN", path)


def chat(args):
    import make_chat_golden as mcg

    regen = os.path.join(args.work, "llama3_chat_golden_regen.json")
    text = mcg.golden_text(mcg.load_tokenizer())
    with open(regen, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    with open(kChatGolden, encoding="utf-8") as f:
        committed = json.load(f)
    fresh = json.loads(text)
    for i in range(kOriginalConversations):
        if fresh[i]["messages"] != committed[i]["messages"]:
            fail(f"conversation {i} of make_chat_golden.py is not the committed one")
        if fresh[i]["ids"] != committed[i]["ids"]:
            fail(f"conversation {i}: transformers gives {fresh[i]['ids']}, committed {committed[i]['ids']}")
    print(f"ok: the {kOriginalConversations} original conversations have the committed ids")
    a = read_bytes(kChatGolden).decode("utf-8")
    if a != text:
        fail(f"make_chat_golden.py regenerates a different {kChatGolden} ({regen}): {first_difference(a, text)}\n"
             "  (regenerate it: .venv/bin/python tests/interop_bpe/make_chat_golden.py > "
             "tests/fixtures/llama3_chat_golden.json)")
    print(f"ok: make_chat_golden.py regenerates {kChatGolden} byte for byte ({len(fresh)} conversations)")
    run_gtest(args.test_data, "Llama3Template.IdsEqualMetaChatTemplate", "QLORA_LLAMA3_CHAT_GOLDEN", regen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["bpe", "chat"])
    ap.add_argument("--test-tokenizer", help="the test_tokenizer executable (bpe)")
    ap.add_argument("--test-data", help="the test_data executable (chat)")
    ap.add_argument("--work", required=True, help="scratch folder for the generated files")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    if args.what == "bpe":
        if not args.test_tokenizer:
            ap.error("bpe needs --test-tokenizer")
        bpe(args)
    else:
        if not args.test_data:
            ap.error("chat needs --test-data")
        chat(args)
    print(f"{args.what}: all checks passed in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
