#!/usr/bin/env python
"""Runs a GGUF file through real llama.cpp (llama-cpp-python's libllama, CPU) and prints one JSON line for
test_interop_gguf to compare against its own float64 reference and qlora-generate.

    .venv/bin/python tests/interop/check_gguf.py REQUEST.json

REQUEST: {"model": "m.gguf", "lora": [{"filePath": "a.gguf", "scale": 1.0}] | [],
          "prompts": [[token ids incl. BOS], ...], "n_predict": 8, "text": "string to tokenize" (optional),
          "chat": [{"role": str, "content": str}, ...] (optional)}
OUTPUT (stdout, one line): {"greedy": [[ids], ...],
                            "probs": [[p(token 0), ..., p(token V-1)] per prompt],
                            "tokenize": [ids], "n_vocab": V, "chat_text": str}

- probs: plain softmax (temperature 1, no top-k/top-p/min-p) of llama.cpp's logits for the token after the prompt,
  computed here in float64 from llama.cpp's float32 logits;
- greedy: n_predict tokens, each the argmax of llama.cpp's logits (what llama.cpp's greedy sampler picks; the
  first index wins a tie in both), EOS not special-cased;
- tokenize: llama.cpp's tokenizer on `text` (no BOS, special-token strings not parsed);
- chat_text: llama.cpp's llama_chat_apply_template with the model's embedded tokenizer.chat_template on `chat`,
  ending with the assistant prompt (llama.cpp recognizes known templates and formats them with its own code);
- the KV cache is F32 and flash attention is off, so an F32 model is computed in F32 end to end;
- LoRA adapters are loaded with llama_adapter_lora_init and applied with their scales by llama_set_adapters_lora
  (llama.cpp multiplies each scale by the adapter's alpha / rank itself).
Everything llama.cpp logs goes to stderr; stdout carries only the JSON line.
"""
import ctypes
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

try:
    import llama_cpp  # noqa: E402
    import llama_cpp_no_repack  # noqa: E402,F401  (llama.cpp's AMX repack crashes: see the module)
except ImportError as e:  # a clear message for the C++ test's failure output
    sys.exit(f"check_gguf.py: cannot import llama_cpp ({e}). HINT: `make deps-interop` installs "
             f"llama-cpp-python into {sys.prefix}")

kContextSize = 256
kThreads = 2


def load(model_path, loras):
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=kContextSize, n_batch=kContextSize, n_threads=kThreads,
                          n_threads_batch=kThreads, n_gpu_layers=0, logits_all=True, flash_attn=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, seed=1, verbose=False)
    if loras:
        # Low-level API: several adapters, each with its own scale (the high-level lora_path takes one).
        handles = []
        for a in loras:
            h = llama_cpp.llama_adapter_lora_init(llm.model, a["filePath"].encode("utf-8"))
            if h is None:
                sys.exit(f"check_gguf.py: llama.cpp could not load the LoRA adapter {a['filePath']}")
            handles.append(h)
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(handles))(*handles)
        scales = (ctypes.c_float * len(handles))(*[float(a.get("scale", 1.0)) for a in loras])
        if llama_cpp.llama_set_adapters_lora(llm.ctx, arr, len(handles), scales) != 0:
            sys.exit("check_gguf.py: llama_set_adapters_lora failed")
        llm._qlora_adapters = (handles, arr, scales)  # kept alive as long as the context
    return llm


def logits_after(llm):
    """llama.cpp's logits for the token after everything evaluated so far (float64, (V,))."""
    return np.array(llm.scores[llm.n_tokens - 1, :], dtype=np.float64)


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def apply_chat_template(llm, messages):
    """llama.cpp's chat formatting of `messages` with the GGUF's own tokenizer.chat_template."""
    tmpl = llama_cpp.llama_model_chat_template(llm.model, None)
    if not tmpl:
        sys.exit("check_gguf.py: the GGUF carries no tokenizer.chat_template")
    keep = [(m["role"].encode("utf-8"), m["content"].encode("utf-8")) for m in messages]
    arr = (llama_cpp.llama_chat_message * len(keep))(*[llama_cpp.llama_chat_message(role=r, content=c)
                                                        for r, c in keep])
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(tmpl, arr, len(keep), True, buf, size)
    if n < 0 or n > size:
        sys.exit(f"check_gguf.py: llama_chat_apply_template returned {n} (template not recognized by llama.cpp?)")
    return buf.raw[:n].decode("utf-8")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    llm = load(req["model"], req.get("lora") or [])
    n_vocab = llm.n_vocab()
    out = {"greedy": [], "probs": [], "tokenize": [], "n_vocab": n_vocab}
    for prompt in req["prompts"]:
        llm.reset()  # empty KV cache: the next eval starts at position 0
        llm.eval(prompt)
        logits = logits_after(llm)
        if logits.shape != (n_vocab,):
            sys.exit(f"check_gguf.py: logits of shape {logits.shape}, expected ({n_vocab},)")
        out["probs"].append(softmax(logits).tolist())
        # Greedy continuation, one token at a time through the KV cache.
        greedy = [int(np.argmax(logits))]
        while len(greedy) < int(req["n_predict"]):
            llm.eval([greedy[-1]])
            greedy.append(int(np.argmax(logits_after(llm))))
        out["greedy"].append(greedy)
    if req.get("chat"):
        out["chat_text"] = apply_chat_template(llm, req["chat"])
    if req.get("text") is not None:
        out["tokenize"] = llm.tokenize(req["text"].encode("utf-8"), add_bos=False, special=False)
    llm.close()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
