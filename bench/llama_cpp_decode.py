#!/usr/bin/env python
"""llama.cpp's batch-1 decode speed on a GGUF file, for bench_decode's side-by-side (it runs this script itself).

    .venv/bin/python bench/llama_cpp_decode.py --model m.gguf --threads 2 --prompt 5,17,900 --tokens 64 --reps 3

llama.cpp from PyPI's llama-cpp-python (its libllama, CPU only), driven through the low-level context: the prompt
in one llama_decode of the whole batch, then `tokens - 1` single-token decodes, each fed the argmax of the previous
logits (greedy, no sampler chain, no EOS stop), with the same thread count for prompt and decode. Best of `reps`
after one warm-up. Two decode rates are printed:
- decode_tok_s: wall clock around the single-token loop as seen from Python (llama_decode + reading the logits
  row + argmax: the same work bench_decode's own figure includes);
- decode_tok_s_internal: llama.cpp's own counters (llama_perf_context: n_eval / t_eval_ms), as llama-cli and
  llama-bench report them; no Python in it, so it is the higher, llama.cpp-friendly figure.
weight_bytes: the bytes of every tensor a token's forward reads (all but token_embd.weight, which is gathered
one row at a time), from the GGUF's own tensor table (the `gguf` package's reader).
QLORA_LLAMA_NO_REPACK=1 turns llama.cpp's weight repacking off (needed on AMX CPUs, where the repacked kernels crash).
Output: one JSON line on stdout; llama.cpp's logging goes to stderr.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import gguf
    import llama_cpp
except ImportError as e:
    sys.exit(f"llama_cpp_decode.py: cannot import {e.name} ({e}). HINT: `make deps-interop` installs "
             f"llama-cpp-python and gguf into {sys.prefix}")


def weight_bytes(path):
    reader = gguf.GGUFReader(path)
    return int(sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight"))


def decode_batch(ctx, tokens, first_pos, want_last_logits):
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = first_pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if (want_last_logits and i == len(tokens) - 1) else 0
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"llama_cpp_decode.py: llama_decode returned {rc}")
    finally:
        llama_cpp.llama_batch_free(batch)


def argmax_last(ctx, n_vocab):
    row = llama_cpp.llama_get_logits_ith(ctx, -1)
    return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt", required=True, help="comma-separated token ids")
    ap.add_argument("--tokens", type=int, required=True, help="new tokens per generation (>= 2)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    prompt = [int(x) for x in a.prompt.split(",")]

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    # QLORA_LLAMA_NO_REPACK=1: llama.cpp's plain CPU kernels, no weight repacking. On AMX CPUs its AMX repack of
    # quantized weights segfaults on the first decode (ggml-org/llama.cpp#20824; tests/interop/llama_cpp_no_repack.py).
    if os.environ.get("QLORA_LLAMA_NO_REPACK") == "1":
        mparams.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(a.model.encode("utf-8"), mparams)
    if not model:
        sys.exit(f"llama_cpp_decode.py: llama.cpp could not load {a.model}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = len(prompt) + a.tokens + 16
    cparams.n_batch = max(len(prompt), 1)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_threads = a.threads
    cparams.n_threads_batch = a.threads
    cparams.no_perf = False
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        sys.exit("llama_cpp_decode.py: llama_init_from_model failed")

    best = {"decode_tok_s": 0.0, "decode_tok_s_internal": 0.0, "prompt_tok_s": 0.0}
    for rep in range(a.reps + 1):  # rep 0: warm-up
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        decode_batch(ctx, prompt, 0, True)
        tok = argmax_last(ctx, n_vocab)
        t1 = time.perf_counter()
        for i in range(1, a.tokens):
            decode_batch(ctx, [tok], len(prompt) + i - 1, True)
            tok = argmax_last(ctx, n_vocab)
        t2 = time.perf_counter()
        perf = llama_cpp.llama_perf_context(ctx)
        if rep == 0:
            continue
        best["prompt_tok_s"] = max(best["prompt_tok_s"], len(prompt) / (t1 - t0))
        best["decode_tok_s"] = max(best["decode_tok_s"], (a.tokens - 1) / (t2 - t1))
        if perf.n_eval > 0 and perf.t_eval_ms > 0:
            best["decode_tok_s_internal"] = max(best["decode_tok_s_internal"], perf.n_eval / (perf.t_eval_ms / 1e3))

    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    best.update({"weight_bytes": weight_bytes(a.model), "llama_cpp_python": llama_cpp.__version__,
                 "threads": a.threads, "n_vocab": n_vocab})
    print(json.dumps(best))


if __name__ == "__main__":
    main()
