#!/usr/bin/env python
"""K-quant GGUF exports (qlora-export-gguf --outtype q4_k_m | q5_k_m | q6_k) against real llama.cpp's quantizer.

    .venv/bin/python tests/interop/check_kquants.py --bin-dir build/bin --work-dir build/testwork/interop_kquants \\
        --tiny build/testwork/tiny [--dump-dir DIR]

For each model below: export F16 with our tool, quantize that file with llama.cpp's llama_model_quantize (the
llama-quantize tool's library call; llama-cpp-python 0.3.36, no imatrix, 2 threads) to each of Q4_K_M, Q5_K_M and
Q6_K, export the same types with our tool, and require for every tensor the same name, shape, ggml type and data
bytes (gguf-py's GGUFReader), and the same general.file_type / general.quantization_version.
  - llama256:      a Llama whose rows are all multiples of 256 (hidden 256, intermediate 768, 8 layers, so
                   use_more_bits picks layers 0, 3, 6, 7), with hand-made edge-case rows in its weights (zeros,
                   constants, a huge outlier, negative-only, tiny values whose scales are fp16 subnormals);
  - llama256-tied: tied embeddings (token_embd takes output.weight's Q6_K);
  - tiny:          the qlora-make-tiny fixture (hidden 128, intermediate 352): the Q5_0 / Q5_1 / Q8_0 fallbacks;
  - odd:           intermediate 200 (not a multiple of 32): the F16 fallback;
  - phi3, gemma2, qwen2, qwen3: the other exported architectures (fused attn_qkv, tied embeddings, q/k/v biases,
                   q/k norms).
Then llama.cpp loads our Q4_K_M file of llama256 and generates from it (greedy ids equal to those of llama.cpp's
own Q4_K_M file, which has the same bytes). With --dump-dir, every Q4_K / Q5_K / Q6_K / Q5_0 / Q5_1 tensor of our
llama256 and tiny exports is written there as raw blocks plus gguf-py's dequantization (float32), listed in
index.json, for test_interop_gguf to compare with our dequantize_row_* (an independent decoder).
Exit 0 when every check passes; one PASS / FAIL line per check.
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import llama_cpp  # noqa: E402
    import llama_cpp_no_repack  # noqa: E402,F401  (llama.cpp's AMX repack crashes: see the module)
    import transformers  # noqa: E402
    from gguf import GGUFReader  # noqa: E402
    from gguf.constants import GGMLQuantizationType  # noqa: E402
    from gguf.quants import dequantize  # noqa: E402
except ImportError as e:
    sys.exit(f"check_kquants.py: {e}. HINT: `make deps-interop` installs the interop packages into {sys.prefix}")

torch.set_num_threads(2)

# llama_ftype ids (llama.h) and our --outtype names.
MIXES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
DUMP_TYPES = {"Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"}
kThreads = 2
kGreedyTokens = 8


class Checks:
    def __init__(self):
        self.failed = []
        self.passed = 0

    def check(self, ok, what, detail=""):
        line = f"{'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail else "")
        print(line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(line)
        return ok


def run(cmd):
    cmd = [str(c) for c in cmd]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n{r.stdout}")
    return r.stdout


def edge_case_rows(w, gen):
    """Overwrites some rows (and 256-weight super-blocks) of a 2-D weight with cases that stress the scale search."""
    rows, cols = w.shape
    blk = 256 if cols % 256 == 0 else 32
    w[0].zero_()                                        # all-zero row
    w[1].fill_(0.0371)                                  # constant positive
    w[2].fill_(-0.0213)                                 # constant negative
    w[3] = -w[3].abs() - 0.01                           # negative-only
    w[4, 5] = 3.0                                       # one huge outlier
    w[5] = torch.randn(cols, generator=gen) * 1e-4      # tiny: fp16-subnormal super-block scales
    w[6, :blk] = 0.0                                    # one zero block in a normal row
    w[6, (blk + 7) % cols] = -2.5                       # a negative outlier
    w[7] = torch.round(w[7] * 50) / 50                  # few distinct values (ties in the fits)
    if rows > 8:
        w[8, ::2] = 0.0                                 # half zeros
    return w


def make_hf_model(work, name, tiny, cfg_name, model_name, edge_cases, **kw):
    tiny_cfg = json.loads((tiny / "config.json").read_text())
    base = dict(vocab_size=tiny_cfg["vocab_size"], max_position_embeddings=256, rms_norm_eps=1e-5,
                initializer_range=0.05, bos_token_id=tiny_cfg.get("bos_token_id", 1),
                eos_token_id=tiny_cfg.get("eos_token_id", 2))
    base.update(kw)
    cfg = getattr(transformers, cfg_name)(**base)
    torch.manual_seed(4321)
    model = getattr(transformers, model_name)(cfg).float()
    gen = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
            elif edge_cases and p.dim() == 2:
                edge_case_rows(p.data, gen)
    out = work / name / "hf"
    model.save_pretrained(out)
    shutil.copy(tiny / "tokenizer.model", out / "tokenizer.model")
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, out / f)
    return out


def export(bin_dir, model, out, outtype):
    run([bin_dir / "qlora-export-gguf", "--model", model, "--out", out, "--outtype", outtype, "--overwrite"])


def llama_quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = kThreads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, ftype {ftype}) returned {rc}")


def field_u32(reader, key):
    f = reader.get_field(key)
    return None if f is None else int(f.parts[f.data[0]][0])


def tensors(path):
    r = GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def compare(checks, what, ours_path, ref_path):
    ours_r, ours = tensors(ours_path)
    ref_r, ref = tensors(ref_path)
    checks.check(sorted(ours) == sorted(ref), f"{what}: same tensor names",
                 f"only ours {sorted(set(ours) - set(ref))[:4]}, only llama.cpp {sorted(set(ref) - set(ours))[:4]}")
    for key in ("general.file_type", "general.quantization_version"):
        a, b = field_u32(ours_r, key), field_u32(ref_r, key)
        checks.check(a == b, f"{what}: {key} {a} (llama.cpp {b})")
    bad, by_type = [], {}
    for name in sorted(set(ours) & set(ref)):
        a, b = ours[name], ref[name]
        if a.tensor_type != b.tensor_type or list(a.shape) != list(b.shape):
            bad.append(f"{name}: ours {a.tensor_type.name} {list(a.shape)}, llama.cpp {b.tensor_type.name} "
                       f"{list(b.shape)}")
            continue
        da, db = np.asarray(a.data).tobytes(), np.asarray(b.data).tobytes()
        if da != db:
            diff = next(i for i in range(min(len(da), len(db))) if da[i] != db[i]) if len(da) == len(db) else -1
            bad.append(f"{name} ({a.tensor_type.name}): bytes differ (first at byte {diff} of {len(da)})")
            continue
        by_type[a.tensor_type.name] = by_type.get(a.tensor_type.name, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(by_type.items()))
    checks.check(not bad, f"{what}: every tensor's type and bytes equal llama.cpp's ({summary})", "; ".join(bad[:6]))
    return ours


def dump(dump_dir, tag, ours, index):
    for name, t in ours.items():
        tname = t.tensor_type.name
        if tname not in DUMP_TYPES:
            continue
        raw = np.ascontiguousarray(np.asarray(t.data)).view(np.uint8)
        vals = dequantize(raw, t.tensor_type).astype(np.float32).reshape(-1)
        stem = f"{tag}.{name}"
        (dump_dir / f"{stem}.blocks").write_bytes(raw.tobytes())
        (dump_dir / f"{stem}.f32").write_bytes(vals.tobytes())
        index.append({"name": stem, "type": tname, "n": int(vals.size), "blocks": f"{stem}.blocks",
                      "values": f"{stem}.f32"})


def greedy(path, prompt):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=kThreads, n_threads_batch=kThreads,
                          n_gpu_layers=0, logits_all=True, seed=1, verbose=False)
    out = []
    llm.eval(prompt)
    for _ in range(kGreedyTokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin-dir", required=True, type=Path)
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--tiny", required=True, type=Path)
    p.add_argument("--dump-dir", type=Path)
    args = p.parse_args()
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    if args.dump_dir:
        shutil.rmtree(args.dump_dir, ignore_errors=True)
        args.dump_dir.mkdir(parents=True)
    t0 = time.time()
    checks = Checks()
    w = args.work_dir
    llama = dict(num_attention_heads=4, num_key_value_heads=2)
    models = {
        "llama256": make_hf_model(w, "llama256", args.tiny, "LlamaConfig", "LlamaForCausalLM", True, hidden_size=256,
                                  intermediate_size=768, num_hidden_layers=8, **llama),
        "llama256-tied": make_hf_model(w, "llama256-tied", args.tiny, "LlamaConfig", "LlamaForCausalLM", True,
                                       hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                       tie_word_embeddings=True, **llama),
        "tiny": args.tiny,
        "odd": make_hf_model(w, "odd", args.tiny, "LlamaConfig", "LlamaForCausalLM", True, hidden_size=64,
                             intermediate_size=200, num_hidden_layers=2, **llama),
        "phi3": make_hf_model(w, "phi3", args.tiny, "Phi3Config", "Phi3ForCausalLM", False, hidden_size=256,
                              intermediate_size=512, num_hidden_layers=3, pad_token_id=0, **llama),
        "gemma2": make_hf_model(w, "gemma2", args.tiny, "Gemma2Config", "Gemma2ForCausalLM", False, hidden_size=256,
                                intermediate_size=512, num_hidden_layers=3, head_dim=64, query_pre_attn_scalar=64,
                                sliding_window=32, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                **llama),
        "qwen2": make_hf_model(w, "qwen2", args.tiny, "Qwen2Config", "Qwen2ForCausalLM", False, hidden_size=256,
                               intermediate_size=512, num_hidden_layers=3, tie_word_embeddings=True, **llama),
        "qwen3": make_hf_model(w, "qwen3", args.tiny, "Qwen3Config", "Qwen3ForCausalLM", False, hidden_size=256,
                               intermediate_size=768, num_hidden_layers=3, head_dim=64, tie_word_embeddings=False,
                               **llama),
    }
    index = []
    for name, folder in models.items():
        (w / name).mkdir(parents=True, exist_ok=True)
        f16 = w / name / "f16.gguf"
        export(args.bin_dir, folder, f16, "f16")
        for mix, ftype in MIXES.items():
            ref = w / name / f"llama-{mix}.gguf"
            ours = w / name / f"ours-{mix}.gguf"
            llama_quantize(f16, ref, ftype)
            export(args.bin_dir, folder, ours, mix)
            tensors_ours = compare(checks, f"{name} {mix}", ours, ref)
            if args.dump_dir and name in ("llama256", "tiny"):
                dump(args.dump_dir, f"{name}.{mix}", tensors_ours, index)
    if args.dump_dir:
        (args.dump_dir / "index.json").write_text(json.dumps(index, indent=1))
        checks.check(len(index) > 0, f"{len(index)} quantized tensors dumped for the dequantization check")

    prompt = [1, 15, 27, 300, 42]
    ours_ids = greedy(w / "llama256" / "ours-q4_k_m.gguf", prompt)
    ref_ids = greedy(w / "llama256" / "llama-q4_k_m.gguf", prompt)
    checks.check(len(ours_ids) == kGreedyTokens and ours_ids == ref_ids,
                 "llama.cpp loads our Q4_K_M file and generates the same greedy ids as from its own",
                 f"ours {ours_ids}, llama.cpp's file {ref_ids}")

    print(f"\ncheck_kquants: {checks.passed} passed, {len(checks.failed)} failed in {time.time() - t0:.1f}s")
    for line in checks.failed:
        print("  " + line)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
