"""data.template: auto against transformers' apply_chat_template on real chat templates.

For each template in tests/fixtures/chat_templates (see its README), a small byte-level BPE tokenizer is trained here
with the `tokenizers` library on a little text, with the family's special tokens added (no hub downloads), and saved
with transformers next to the template. Over many conversations (system / no system, multi-turn, tools where the
template takes them, with and without add_generation_prompt) our rendered text must equal
apply_chat_template(tokenize=False), and our token ids (the training path: render_for_training + tokenize_rendered)
must equal apply_chat_template(tokenize=True). The trained spans are checked to cover each assistant message's
content. Conversations a template refuses (raise_exception) must be refused by ours too.
Exits 1 with one line per mismatch.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "Hello! How can I help you today? The weather in Paris is sunny, 21 degrees.",
    "def f(x):\n    return x ** 2\n\nprint(f(3))  # 9",
    "You are a helpful assistant. Answer briefly and precisely.",
    "Les élèves étudient à l'école; ünïcödé ✓ 日本語のテキスト",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
] * 20

# family: (template file, named special tokens, other special tokens, non-special added tokens, supports tools,
#          supports system)
FAMILIES = {
    "qwen3": ("qwen3.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
              ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"], True, True),
    "qwen2_5": ("qwen2_5.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<tool_call>", "</tool_call>"], True, True),
    "mistral": ("mistral_v2v3_axolotl.jinja", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], [], False, False),
    "llama3": ("llama3_3.jinja", {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|eom_id|>", "<|python_tag|>"], [], True, True),
    "gemma2": ("gemma2.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
               ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], [], False, False),
    "phi3": ("phi3.jinja", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
             ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], [],
             False, True),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather <now> & \"later\"",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]


def m(role, content, **extra):
    return dict({"role": role, "content": content}, **extra)


def conversations(family):
    _, _, _, _, tools_ok, system_ok = FAMILIES[family]
    convs = [
        ([m("user", "Hi there"), m("assistant", "Hello! How can I help?")], None),
        ([m("user", "  What's 2+2?\n"), m("assistant", " It is 4. \n"), m("user", "And 3+3?"),
          m("assistant", "6, of course.")], None),
        ([m("user", "Les élèves ✓"), m("assistant", "日本語のテキスト"), m("user", "x"), m("assistant", ""),
          m("user", "last"), m("assistant", "end\n\nwith newlines\n")], None),
        ([m("user", "code?"), m("assistant", "def f(x):\n    return x ** 2")], None),
        ([m("user", "Hi"), m("assistant", "Hello")], None),  # also rendered with a trailing user turn below
        ([m("assistant", "I start"), m("user", "odd order")], None),  # templates that require order must refuse it
    ]
    if system_ok:
        convs += [
            ([m("system", "You are terse."), m("user", "Hi"), m("assistant", "Yo.")], None),
            ([m("system", "  Be kind.  "), m("user", "q1"), m("assistant", "a1"), m("user", "q2"),
              m("assistant", "a2")], None),
        ]
    else:
        convs.append(([m("system", "Refused here"), m("user", "Hi"), m("assistant", "x")], None))
    if family in ("qwen3", "qwen2_5"):
        convs.append(([m("user", "Weather in Paris?"),
                       m("assistant", "Checking.", tool_calls=[{"type": "function", "function": {
                           "name": "get_weather", "arguments": {"city": "Paris"}}}]),
                       m("tool", "21"), m("assistant", "21 degrees.")], TOOLS))
    if family == "qwen3":
        convs += [
            ([m("user", "Think first"), m("assistant", "<think>\nsome reasoning\n</think>\n\nThe answer.")], None),
            ([m("user", "q1"), m("assistant", "<think>r1</think>a1"), m("user", "q2"), m("assistant", "a2")], None),
            ([m("user", "q"), m("assistant", "answer", reasoning_content="why")], None),
            ([m("user", "Weather in Paris?"),
              m("assistant", "", tool_calls=[{"type": "function", "function": {
                  "name": "get_weather", "arguments": {"city": "Paris"}}}]),
              m("tool", '{"temp": 21}'), m("tool", "sunny"), m("assistant", "21 and sunny.")], TOOLS),
        ]
    if tools_ok:
        convs.append(([m("user", "Weather in Paris?"), m("assistant", "Let me check.")], TOOLS))
    if family == "llama3":
        convs.append(([m("user", "Weather?"), m("assistant", None, tool_calls=[{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]), m("tool", {"temp": 21}),
                       m("assistant", "21 degrees.")], TOOLS))
    return convs


def build_tokenizer(family, out_dir):
    tmpl_file, named, specials, added, _, _ = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if added:
        tok.add_tokens(added)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.chat_template = (FIXTURES / tmpl_file).read_text(encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return PreTrainedTokenizerFast.from_pretrained(str(out_dir))


def hf_render(tok, msgs, tools, gen, tokenize):
    return tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, tokenize=tokenize, return_dict=False)


def check_family(family, args, failures):
    model_dir = args.work_dir / family
    tok = build_tokenizer(family, model_dir)
    cases, expected = [], []
    for msgs, tools in conversations(family):
        variants = [(msgs, False), (msgs, True)]
        if msgs[-1]["role"] == "assistant":
            variants.append((msgs + [m("user", "follow-up")], True))
        for conv, gen in variants:
            try:
                want_text = hf_render(tok, conv, tools, gen, False)
                want_ids = list(hf_render(tok, conv, tools, gen, True))
            except Exception as e:  # noqa: BLE001 - the template refused: ours must refuse too
                want_text, want_ids = None, f"{type(e).__name__}: {e}"
            base = {"messages": conv, "add_generation_prompt": gen}
            if tools:
                base["tools"] = tools
            cases.append(base)
            expected.append(("text", conv, gen, want_text, want_ids))
            trainable = any(x["role"] == "assistant" and isinstance(x.get("content"), str) for x in conv)
            if not gen and trainable:
                cases.append(dict(base, train=True))
                expected.append(("train", conv, gen, want_text, want_ids))
    cases_file = args.work_dir / f"{family}_cases.jsonl"
    cases_file.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    out = subprocess.run([str(args.render_chat), "chat", str(model_dir), str(cases_file)], capture_output=True,
                         text=True, check=True)
    got = [json.loads(line) for line in out.stdout.splitlines()]
    if len(got) != len(cases):
        failures.append(f"{family}: {len(got)} results for {len(cases)} cases\n{out.stderr}")
        return 0
    for (kind, conv, gen, want_text, want_ids), ours in zip(expected, got):
        where = f"{family} {kind} gen={gen} {json.dumps(conv, ensure_ascii=False)[:160]}"
        if want_text is None:
            if "error" not in ours:
                failures.append(f"{where}: transformers refused ({want_ids}), ours rendered {ours.get('text')!r}")
            continue
        if "error" in ours:
            failures.append(f"{where}: ours failed: {ours['error']}")
            continue
        if ours["text"] != want_text:
            failures.append(f"{where}: text differs\n  transformers: {want_text!r}\n  ours:         {ours['text']!r}")
        if kind == "train":
            if ours["ids"] != want_ids:
                failures.append(f"{where}: ids differ\n  transformers: {want_ids}\n  ours:         {ours['ids']}")
            check_spans(where, conv, ours, failures)
    return len(cases)


def check_spans(where, conv, ours, failures):
    """Every assistant message's (stripped) content lies inside a trained span, no user or system content does, and
    the first token is never trained."""
    text = ours["text"].encode("utf-8")
    spans = ours["spans"]
    if ours["labels"] and ours["labels"][0] != -100:
        failures.append(f"{where}: labels[0] is not -100")
    if not any(label != -100 for label in ours["labels"]) and any(
            x["role"] == "assistant" and (x.get("content") or "").strip() for x in conv):
        failures.append(f"{where}: nothing is trained")
    for x in conv:
        content = x.get("content")
        if x["role"] in ("user", "system") and isinstance(content, str) and len(content.strip()) >= 3:
            piece = content.strip().encode("utf-8")
            if any(text.find(piece, s, e) >= 0 for s, e in spans):
                failures.append(f"{where}: {x['role']} content {piece[:40]!r} is inside a trained span {spans}")
        if x["role"] != "assistant" or not isinstance(content, str):
            continue
        piece = content.split("</think>")[-1].strip().encode("utf-8")
        if not piece:
            continue
        pos = [i for i in range(len(text)) if text.startswith(piece, i)]
        if not any(s <= p and p + len(piece) <= e for p in pos for s, e in spans):
            failures.append(f"{where}: assistant content {piece[:40]!r} is not inside a trained span {spans}")


def main():
    global FIXTURES
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--render-chat", required=True, type=Path)
    p.add_argument("--fixtures", required=True, type=Path, help="tests/fixtures/chat_templates")
    p.add_argument("--work-dir", required=True, type=Path)
    args = p.parse_args()
    FIXTURES = args.fixtures
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)
    failures = []
    total = 0
    for family in FAMILIES:
        total += check_family(family, args, failures)
    for f in failures:
        print("FAIL " + f)
    print(f"{total} cases over {len(FAMILIES)} templates, {len(failures)} failures")
    sys.exit(1 if failures else 0)


FIXTURES = Path()

if __name__ == "__main__":
    main()
