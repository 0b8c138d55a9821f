"""The model families (Qwen2, Qwen3, Mistral with a sliding window, Gemma 2, Phi-3, Llama with biases) against
transformers and PEFT (from the .venv), each on a tiny random model that transformers itself makes from a config
(`<Family>ForCausalLM(config)` + `save_pretrained`, fp32 safetensors; never downloaded). The qlora-make-tiny
tokenizer is copied in (qlora-generate loads a tokenizer even for --prompt-ids); its vocabulary size is the models'.

Per family (the qwen2/qwen3 models use a byte-level BPE tokenizer.json instead, see gguf below):
  fp32     `qlora-generate --logits-out` (dense, fp32) against transformers' fp32 logits (eager attention): within
           kFp32Rel = 1e-4 of the logit scale (same math in another order). The prompt (40 tokens) is longer than the
           sliding windows (16), so the window is exercised.
  bf16     both sides in bf16, judged like check_transformers_logits.py: our error against the fp32 logits within
           kBf16ErrorRatio x transformers' own, and the two within kBf16Rel of the logit scale.
  nf4      `qlora-quantize` (NF4, double quant, blocksize 64) loaded by transformers + bitsandbytes with fp32 compute
           against ours on the same folder: kFp32Rel.
  greedy   16 greedy tokens after a 20-token prompt (past the window, through the KV cache): ids identical to
           transformers' generate.
  gguf     `qlora-export-gguf --outtype f32` run by llama.cpp (llama-cpp-python, tests/interop/check_gguf.py) for the
           families it takes (Mistral as `llama`, Phi-3, Gemma 2 with query_pre_attn_scalar = head_dim, Qwen2, Qwen3):
           8 greedy ids equal ours and next-token probabilities within kGgufProbTol, within the window (llama.cpp
           applies none to llama and phi3); the other families' export must be refused with exit 2. Qwen2/Qwen3 carry
           a Qwen-shaped byte-level BPE tokenizer.json (tests/fixtures/bpe_families/qwen2) and, GGUF only, a Llama 3
           model carries Meta's real tokenizer.json: the GGUF's tokenizer.ggml.pre is the name llama.cpp needs and
           llama.cpp tokenizes a text exactly as HF tokenizers does on the tokenizer.json.
  peft     a PEFT-written adapter (all linear layers, B non-zero) through `qlora-generate --adapter` against PEFT's
           logits; `qlora-merge --dtype bf16` output loaded by transformers against ours on it (kFp32Rel); an adapter
           trained by `qlora-train` (NF4 base, all-linear) loaded by PEFT on the fp32 base: every tensor held unchanged
           and the logits equal to ours (kFp32Rel).
Every comparison is guarded against being vacuous (the family's feature or the adapter must move the logits).

Run by ctest as interop_hf_model_families.
"""

import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interop_common as ic  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

kFp32Rel = 1e-4
kBf16ErrorRatio = 2.0
kBf16Rel = 0.03
kPromptLen = 40
kGenPrompt = 20
kGenTokens = 16
kWindow = 16
kGgufProbTol = 1e-4  # next-token probabilities of an F32 GGUF in llama.cpp vs ours (fp32 both)
# llama.cpp (llama-cpp-python 0.3.36) applies no sliding window to `llama` (Mistral) and `phi3`: prompt + generated
# tokens stay within the window (16) so that both sides compute the same thing.
kGgufPrompt = 8
kGgufTokens = 8
# Families whose GGUF export llama.cpp runs (the others are refused by name, which is checked too).
GGUF_FAMILIES = {"mistral": "llama", "gemma2-hd": "gemma2", "phi3": "phi3", "qwen2": "qwen2", "qwen3": "qwen3",
                 "llama3-bpe": "llama"}
# Families that get a byte-level BPE tokenizer.json instead of the tiny model's tokenizer.model: Qwen's shape
# (tests/fixtures/bpe_families/qwen2, made by transformers' Qwen2Tokenizer); llama3-bpe gets Meta's real Llama 3 file.
BPE_TOKENIZERS = {"qwen2": "tests/fixtures/bpe_families/qwen2", "qwen3": "tests/fixtures/bpe_families/qwen2",
                  "llama3-bpe": "assets/llama3-tokenizer"}
BPE_PRE = {"qwen2": "qwen2", "qwen3": "qwen2", "llama3-bpe": "llama-bpe"}  # tokenizer.ggml.pre llama.cpp needs
kTokenizeText = "Hello world, it's 12345 tokens!\n\n  def f(x):\n    return x ** 2  # don't\tDON'T caf\u00e9 \u4f60\u597d"
kRoot = Path(__file__).resolve().parent.parent.parent

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*kernels.*")

# name -> (config class, model class, config kwargs beyond the shared sizes)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=kWindow, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=16, num_hidden_layers=3, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                    final_logit_softcapping=3.0, sliding_window=kWindow, hidden_activation="gelu_pytorch_tanh",
                    tie_word_embeddings=True)),
    # llama.cpp scales Gemma 2 attention by head_dim^-0.5: the GGUF check needs query_pre_attn_scalar = head_dim.
    "gemma2-hd": ("Gemma2Config", "Gemma2ForCausalLM",
                  dict(head_dim=16, num_hidden_layers=3, query_pre_attn_scalar=16, attn_logit_softcapping=2.0,
                       final_logit_softcapping=3.0, sliding_window=kWindow, hidden_activation="gelu_pytorch_tanh",
                       tie_word_embeddings=True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=kWindow, pad_token_id=0)),
    "llama-bias": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True, mlp_bias=True)),
}


def make_model(args, family, tiny_cfg):
    cfg_name, model_name, extra = FAMILIES[family]
    kw = dict(vocab_size=tiny_cfg["vocab_size"], hidden_size=64, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
              initializer_range=0.08, bos_token_id=tiny_cfg.get("bos_token_id", 1),
              eos_token_id=tiny_cfg.get("eos_token_id", 2))
    kw.update(extra)
    cfg = getattr(transformers, cfg_name)(**kw)
    torch.manual_seed(1234)
    model = getattr(transformers, model_name)(cfg).float()
    with torch.no_grad():  # norms and biases away from their init so they matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    out = args.work_dir / family / "fp32"
    model.save_pretrained(out)
    if family in BPE_TOKENIZERS:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(kRoot / BPE_TOKENIZERS[family] / name, out / name)
    else:
        shutil.copy(args.tiny / "tokenizer.model", out / "tokenizer.model")
    return out, model_name


def load_hf(checks, folder, model_name, dtype, what, bnb=False):
    cls = getattr(transformers, model_name)
    model, info = cls.from_pretrained(folder, dtype=dtype, device_map="cpu", attn_implementation="eager",
                                      output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                            "error_msgs")}
    checks.check(not problems, f"{what}: transformers loads {Path(folder).name} with no key problems",
                 str(problems) if problems else "")
    if bnb:
        n = ic.bnb_set_compute_dtype(model, dtype)
        bad = ic.bnb_dequant_problems(model)
        checks.check(n > 0 and not bad, f"{what}: {n} bitsandbytes Linear4bit layers, its CPU dequant equal to its "
                     "reference on each", "; ".join(bad[:4]))
    return model.eval()


def close(checks, ours, ref, what):
    scale = float(np.abs(ref).max())
    checks.close(ours, ref, what, kFp32Rel * scale, f" (= {kFp32Rel:g} x logit scale {scale:.3g})")


def far(checks, a, b, what):
    d = float(np.abs(a - b).max())
    tol = kFp32Rel * float(np.abs(b).max())
    checks.check(d > 100 * tol, what, f"max diff {d:.3e} > 100 x tolerance {tol:.3e}")


def compare_bf16(checks, ours16, hf16, ref32, what):
    scale = float(np.abs(ref32).max())
    err_hf = float(np.abs(hf16.astype(np.float64) - ref32).max())
    err_ours = float(np.abs(ours16.astype(np.float64) - ref32).max())
    checks.check(err_ours <= kBf16ErrorRatio * max(err_hf, 1e-6 * scale),
                 f"{what}: our bf16 error vs fp32 within {kBf16ErrorRatio:g}x transformers' bf16 error",
                 f"ours {err_ours:.3e}, transformers {err_hf:.3e} (logit scale {scale:.3g})")
    checks.close(ours16, hf16, f"{what}: ours vs transformers, both bf16", kBf16Rel * scale,
                 f" (= {kBf16Rel:g} x logit scale {scale:.3g})")


def our_greedy(args, folder, ids, n):
    text = ic.run([ic.app(args.bin_dir, "qlora-generate"), "--model", folder, "--prompt-ids", " ".join(map(str, ids)),
                   "--max-new-tokens", str(n), "--ignore-eos", "--print-ids", "--quant", "none", "--dtype", "fp32",
                   "--threads", "2"])
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and all(c.isdigit() or c == " " for c in ln.strip())]
    return [int(t) for t in lines[-1].split()] if lines else []


def check_gguf(args, checks, family, folder, ids):
    """qlora-export-gguf (F32) run by llama.cpp (tests/interop/check_gguf.py): greedy ids and next-token
    probabilities against ours; families llama.cpp cannot take must be refused by name."""
    import json
    import subprocess
    from gguf import GGUFReader
    work = args.work_dir / family
    out = work / "model-f32.gguf"
    cmd = [str(ic.app(args.bin_dir, "qlora-export-gguf")), "--model", str(folder), "--out", str(out), "--outtype",
           "f32"]
    if family not in GGUF_FAMILIES:
        r = subprocess.run(cmd, capture_output=True, text=True)
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        checks.check(r.returncode == 2 and "not supported" in r.stderr,
                     f"{family} GGUF export refused with exit 2 and a reason", f"exit {r.returncode}: {last}")
        return
    # The model's chat template travels into the GGUF metadata (tokenizer.chat_template), as llama.cpp expects.
    template = "{% for m in messages %}<|" + family + "|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = ic.read_json(cfg_path) if cfg_path.exists() else {}
    tok_cfg["chat_template"] = template
    ic.write_json(cfg_path, tok_cfg)
    ic.run(cmd)
    field = GGUFReader(str(out)).get_field("tokenizer.chat_template")
    got = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    checks.check(got == template, f"{family} GGUF carries the model's chat_template", repr(got)[:80])
    req = work / "gguf-request.json"
    ic.write_json(req, {"model": str(out), "lora": [], "prompts": [ids], "n_predict": kGgufTokens,
                        "text": kTokenizeText})
    script = Path(__file__).resolve().parent.parent / "interop" / "check_gguf.py"
    res = json.loads(ic.run([sys.executable, script, req]).strip().splitlines()[-1])
    if family in BPE_TOKENIZERS:
        # The byte-level BPE vocabulary (gpt2 model, pre-tokenizer name, merges) as llama.cpp tokenizes with it.
        field = GGUFReader(str(out)).get_field("tokenizer.ggml.pre")
        pre = bytes(field.parts[field.data[0]]).decode() if field is not None else None
        checks.check(pre == BPE_PRE[family], f"{family} GGUF tokenizer.ggml.pre", f"{pre!r}")
        from tokenizers import Tokenizer
        want = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(kTokenizeText, add_special_tokens=False).ids
        checks.check(res["tokenize"] == want, f"{family} GGUF vocabulary: llama.cpp tokenizes like HF tokenizers",
                     f"llama.cpp {res['tokenize'][:12]}..., tokenizers {want[:12]}...")
    ours = our_greedy(args, folder, ids, kGgufTokens)
    checks.check(res["greedy"][0] == ours, f"{family} GGUF ({GGUF_FAMILIES[family]}) greedy ids in llama.cpp equal "
                 "qlora-generate's", f"llama.cpp {res['greedy'][0]}, ours {ours}")
    logits = ic.our_logits(args.bin_dir, folder, ids, work / "gguf-prompt.npy", quant="none", dtype="fp32")[-1]
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    d = float(np.abs(np.array(res["probs"][0]) - p).max())
    checks.check(d <= kGgufProbTol, f"{family} GGUF next-token probabilities in llama.cpp equal ours",
                 f"max diff {d:.2e} (tolerance {kGgufProbTol:g})")


def greedy(args, checks, folder, model_name, ids, what):
    model = load_hf(checks, folder, model_name, torch.float32, what)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=kGenTokens, min_new_tokens=kGenTokens,
                             do_sample=False, pad_token_id=0)
    ref = [int(t) for t in out[0, len(ids):]]
    ours = our_greedy(args, folder, ids, kGenTokens)
    checks.check(ours == ref, f"{what}: greedy ids equal transformers' generate", f"ours {ours}, transformers {ref}")


def peft_adapter(args, folder, model_name, family):
    from peft import LoraConfig, get_peft_model
    model = getattr(transformers, model_name).from_pretrained(folder, dtype=torch.float32, device_map="cpu")
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    torch.manual_seed(99)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    out = args.work_dir / family / "peft-adapter"
    pm.save_pretrained(out)
    return out


def peft_logits(checks, folder, model_name, adapter, ids, what):
    from peft import PeftModel
    model = load_hf(checks, folder, model_name, torch.float32, what)
    pm = PeftModel.from_pretrained(model, str(adapter)).eval()
    return pm, ic.hf_logits(pm, ids)


def train_adapter(args, family, folder):
    run = args.work_dir / family / "train"
    run.mkdir(parents=True)
    with open(run / "train.jsonl", "w") as f:
        for i in range(16):
            f.write(f'{{"instruction": "Count to {i}.", "input": "", "output": "{" ".join(map(str, range(i)))}"}}\n')
    (run / "config.yaml").write_text(f"""model:
  path: {folder}
  compute_dtype: fp32
  quant: {{type: nf4, blocksize: 64, double_quant: true}}
  gradient_checkpointing: true
lora: {{r: 8, alpha: 16, dropout: 0.0, targets: all-linear}}
data: {{train: {run / 'train.jsonl'}, format: alpaca, max_seq_len: 48, packing: true, shuffle_buffer: 8}}
train: {{seed: 7, max_steps: 4, micro_batch_size: 2, grad_accum: 1, lr: 1.0e-2, schedule: constant, warmup_steps: 0,
        threads: 2}}
eval: {{every: 0, at_end: false}}
checkpoint: {{dir: {run / 'ckpt'}, every: 0, keep: 1, resume: none}}
output_dir: {run / 'adapter'}
log: {{every: 2, metrics: {run / 'metrics.jsonl'}}}
""")
    ic.run([ic.app(args.bin_dir, "qlora-train"), run / "config.yaml"], timeout=900)
    return run / "adapter"


def check_family(args, checks, family, tiny_cfg):
    print(f"== {family}", flush=True)
    work = args.work_dir / family
    folder, model_name = make_model(args, family, tiny_cfg)
    ids = ic.prompt_ids(tiny_cfg["vocab_size"], kPromptLen, seed=7)

    ref32 = ic.hf_logits(load_hf(checks, folder, model_name, torch.float32, f"{family} fp32"), ids)
    ours32 = ic.our_logits(args.bin_dir, folder, ids, work / "fp32.npy", quant="none", dtype="fp32")
    close(checks, ours32, ref32, f"{family} fp32 logits")

    hf16 = ic.hf_logits(load_hf(checks, folder, model_name, torch.bfloat16, f"{family} bf16"), ids)
    ours16 = ic.our_logits(args.bin_dir, folder, ids, work / "bf16.npy", quant="none", dtype="bf16")
    compare_bf16(checks, ours16, hf16, ref32, f"{family} bf16 logits")

    qdir = work / "nf4"
    ic.run([ic.app(args.bin_dir, "qlora-quantize"), "--in", folder, "--out", qdir, "--quant", "nf4", "--blocksize",
            "64"])
    ref_q = ic.hf_logits(load_hf(checks, qdir, model_name, torch.float32, f"{family} nf4", bnb=True), ids)
    ours_q = ic.our_logits(args.bin_dir, qdir, ids, work / "nf4.npy", quant="nf4", dtype="fp32")
    close(checks, ours_q, ref_q, f"{family} nf4 (double quant, blocksize 64) fp32 compute vs transformers+bitsandbytes")
    far(checks, ref_q, ref32, f"{family} nf4: the 4-bit logits differ from the 16-bit ones")

    greedy(args, checks, folder, model_name, ids[:kGenPrompt], f"{family} greedy")
    check_gguf(args, checks, family, folder, ids[:kGgufPrompt])

    adapter = peft_adapter(args, folder, model_name, family)
    _, ref_a = peft_logits(checks, folder, model_name, adapter, ids, f"{family} peft base")
    ours_a = ic.our_logits(args.bin_dir, folder, ids, work / "adapter.npy", adapter=adapter, quant="none", dtype="fp32")
    close(checks, ours_a, ref_a, f"{family} PEFT adapter (all-linear) through qlora-generate --adapter")
    far(checks, ref_a, ref32, f"{family} PEFT adapter moves the logits")

    merged = work / "merged-bf16"
    ic.run([ic.app(args.bin_dir, "qlora-merge"), "--base", folder, "--adapter", adapter, "--out", merged, "--dtype",
            "bf16"])
    ref_m = ic.hf_logits(load_hf(checks, merged, model_name, torch.float32, f"{family} merged"), ids)
    ours_m = ic.our_logits(args.bin_dir, merged, ids, work / "merged.npy", quant="none", dtype="fp32")
    close(checks, ours_m, ref_m, f"{family} qlora-merge --dtype bf16 output in transformers")

    trained = train_adapter(args, family, folder)
    pm, ref_t = peft_logits(checks, folder, model_name, trained, ids, f"{family} trained adapter base")
    from safetensors.torch import load_file
    stored = load_file(str(trained / "adapter_model.safetensors"))
    held = {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "lora_" in k}
    differ = [k for k in stored if k not in held or not torch.equal(held[k].float(), stored[k].float())]
    checks.check(not differ and len(stored) == len(held) and len(stored) > 0,
                 f"{family} qlora-train adapter: PEFT holds the {len(stored)} stored tensors unchanged",
                 f"differ {differ[:3]}, held {len(held)}")
    ours_t = ic.our_logits(args.bin_dir, folder, ids, work / "trained.npy", adapter=trained, quant="none",
                           dtype="fp32")
    close(checks, ours_t, ref_t, f"{family} qlora-train adapter in PEFT vs qlora-generate --adapter")
    far(checks, ref_t, ref32, f"{family} trained adapter moves the logits")


def check_llama3_gguf(args, checks):
    """A Llama 3 model with Meta's real tokenizer.json (byte-level BPE, 128256 tokens) through the GGUF export:
    the vocabulary llama.cpp reads from it, and greedy ids / probabilities against qlora-generate."""
    print("== llama3-bpe (GGUF only)", flush=True)
    cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
    torch.manual_seed(1234)
    model = transformers.LlamaForCausalLM(cfg).float()
    folder = args.work_dir / "llama3-bpe" / "fp32"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(kRoot / BPE_TOKENIZERS["llama3-bpe"] / name, folder / name)
    ids = ic.prompt_ids(128000, kGgufPrompt, seed=7)
    ids[0] = 128000  # <|begin_of_text|>
    check_llama3_chat(args, checks, folder, ids)
    check_gguf(args, checks, "llama3-bpe", folder, ids)


def check_llama3_chat(args, checks, folder, ids):
    """Meta's chat template (from its tokenizer_config.json) travels into the GGUF, and llama.cpp's formatting of a
    conversation with it equals ours (render_chat: data.template auto) after the BOS text, which llama.cpp's
    tokenizer adds instead."""
    import json
    work = args.work_dir / "llama3-bpe"
    out = work / "model-chat.gguf"
    ic.run([ic.app(args.bin_dir, "qlora-export-gguf"), "--model", folder, "--out", out, "--outtype", "f16",
            "--overwrite"])
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  What is 2+2? \n"}]
    req = work / "chat-request.json"
    ic.write_json(req, {"model": str(out), "lora": [], "prompts": [ids[:2]], "n_predict": 1, "chat": chat})
    script = Path(__file__).resolve().parent.parent / "interop" / "check_gguf.py"
    theirs = json.loads(ic.run([sys.executable, script, req]).strip().splitlines()[-1])["chat_text"]
    cases = work / "chat-cases.jsonl"
    cases.write_text(json.dumps({"messages": chat, "add_generation_prompt": True}) + "\n", encoding="utf-8")
    ours = json.loads(ic.run([ic.app(args.bin_dir, "render_chat"), "chat", folder, cases]).strip().splitlines()[-1])
    checks.check(ours.get("text") == "<|begin_of_text|>" + theirs,
                 "llama3-bpe GGUF: llama.cpp formats a chat with the embedded template as we render it",
                 f"llama.cpp {theirs[:60]!r}..., ours {str(ours)[:80]!r}...")


def main():
    args = ic.parse_args(lambda p: p.add_argument("--families", default=",".join(FAMILIES)))
    if args.tiny is None:
        raise ValueError("--tiny is required (the qlora-make-tiny model)")
    checks = ic.Checks("model families against transformers and PEFT")
    tiny_cfg = ic.read_json(args.tiny / "config.json")
    for family in args.families.split(","):
        check_family(args, checks, family, tiny_cfg)
    check_llama3_gguf(args, checks)
    return checks.report()


if __name__ == "__main__":
    ic.main_guard(main)
