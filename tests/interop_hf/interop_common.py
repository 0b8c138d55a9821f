"""Shared helpers of the bitsandbytes / transformers / PEFT interop checks (tests/interop_hf/check_*.py).

Every check is one ctest (label `interop`): it drives our built apps (build/bin/qlora-*) and compares what they
write with what the real Python library computes from the same files. A check never skips: a missing app, a
failing command or a comparison outside its tolerance makes it exit 1, with one line per failed comparison.
"""

import os

# No model hubs: every model here is made locally (qlora-make-tiny, or transformers from a config).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# bitsandbytes' CPU fallback wraps its dequant helper in torch.compile (a C++ compile per shape on 2 cores); eager
# runs the same code. Must be set before torch is imported.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The seven Llama projections, in HF module-name order.
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(extra=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin-dir", required=True, type=Path, help="build/bin with the qlora-* apps")
    p.add_argument("--work-dir", required=True, type=Path, help="scratch folder (emptied first)")
    p.add_argument("--tiny", type=Path, help="tiny model made by qlora-make-tiny (the ctest fixture)")
    if extra:
        extra(p)
    args = p.parse_args()
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    return args


class Checks:
    """Collects named pass/fail results; report() prints a summary and returns the exit code."""

    def __init__(self, title):
        self.title = title
        self.failed = []
        self.passed = 0
        self.t0 = time.time()

    def check(self, ok, what, detail=""):
        line = f"{'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail else "")
        print(line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(line)
        return ok

    def close(self, got, want, what, atol, scale_note=""):
        """max |got - want| <= atol (arrays of the same shape); prints the measured difference either way."""
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            return self.check(False, what, f"shape {got.shape} vs {want.shape}")
        if not (np.isfinite(got).all() and np.isfinite(want).all()):
            return self.check(False, what, "non-finite values")
        diff = np.abs(got - want)
        worst = int(diff.argmax())
        detail = (f"max abs diff {diff.max():.3e} (at {np.unravel_index(worst, diff.shape)}), "
                  f"mean {diff.mean():.3e}, tolerance {atol:.3e}{scale_note}")
        return self.check(bool(diff.max() <= atol), what, detail)

    def report(self):
        secs = time.time() - self.t0
        print(f"\n{self.title}: {self.passed} passed, {len(self.failed)} failed in {secs:.1f}s", flush=True)
        for line in self.failed:
            print("  " + line)
        return 1 if self.failed else 0


def run(cmd, env=None, cwd=None, timeout=600):
    """Runs a command; prints it; raises RuntimeError with its output when it fails."""
    cmd = [str(c) for c in cmd]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    r = subprocess.run(cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    print(f"  (exit {r.returncode} in {time.time() - t0:.1f}s)", flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"command failed with exit code {r.returncode}: {' '.join(cmd)}\n{r.stdout}")
    return r.stdout


def app(bin_dir, name):
    path = Path(bin_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing\nHINT: build it first: cmake --build build --target {name}")
    return path


def our_logits(bin_dir, model, ids, out_file, adapter=None, quant="none", dtype="fp32"):
    """fp32 logits (T, V) of every position of `ids`, from qlora-generate --logits-out."""
    cmd = [app(bin_dir, "qlora-generate"), "--model", model, "--prompt-ids", " ".join(map(str, ids)),
           "--max-new-tokens", "0", "--quant", quant, "--dtype", dtype, "--threads", "2", "--logits-out", out_file]
    if adapter is not None:
        cmd += ["--adapter", adapter]
    run(cmd)
    logits = np.load(out_file)
    assert logits.dtype == np.float32 and logits.ndim == 2 and logits.shape[0] == len(ids), \
        f"{out_file}: dtype {logits.dtype} shape {logits.shape}, expected float32 ({len(ids)}, V)"
    return logits


@torch.no_grad()
def hf_logits(model, ids):
    """fp32 logits (T, V) of a transformers / PEFT causal LM."""
    out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0].float().numpy()


def bnb_set_compute_dtype(model, dtype):
    """Makes a transformers + bitsandbytes 4-bit model compute in `dtype`; returns the number of Linear4bit layers.

    - transformers 5 keeps a bnb-4bit checkpoint's 16-bit tensors (embeddings, norms, lm_head) in the config's dtype
      whatever from_pretrained's `dtype` says: they are cast to `dtype`, as ours loads them;
    - every Linear4bit gets compute_dtype = dtype, and bitsandbytes' generic path (exact dequant, then a matmul in
      compute_dtype), which every CPU without AVX512-BF16 runs: on AVX512-BF16 CPUs Linear4bit otherwise repacks its
      weight at the first no-grad forward with a bf16 absmax and computes in bf16 whatever compute_dtype says
      (bitsandbytes functional.py _convert_weight_packed_for_cpu, nn/modules.py Linear4bit.forward)."""
    import bitsandbytes as bnb
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.compute_dtype = dtype
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def bnb_dequant_problems(model):
    """Linear4bit layers of a transformers model whose bitsandbytes CPU dequant (what its forward uses) differs from
    bitsandbytes' own pure-PyTorch reference (backends/default/ops.py _dequantize_4bit_compute). bitsandbytes
    0.50.2's native CPU kernel is wrong when a weight has several rows whose length is not a multiple of the
    blocksize (check_bnb_quant.py shows it); the models here are chosen to avoid that, and this says if they do not."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    bad = []
    for name, m in model.named_modules():
        if not isinstance(m, bnb.nn.Linear4bit):
            continue
        qs = m.weight.quant_state
        absmax = qs.absmax
        if qs.nested:
            absmax = bf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        got = bf.dequantize_4bit(m.weight.data, qs).float()
        ref = _dequantize_4bit_compute(m.weight.data.view(torch.uint8).reshape(-1), absmax.float(),
                                       bf.get_4bit_type(qs.quant_type, device="cpu"), qs.blocksize, qs.shape,
                                       qs.dtype).float()
        if not torch.equal(got, ref):
            bad.append(f"{name} {list(qs.shape)} blocksize {qs.blocksize}: {int((got != ref).sum())} values")
    return bad


def prompt_ids(vocab, n, seed):
    """A BOS plus n - 1 pseudo-random token ids below `vocab` (no tokenizer involved)."""
    g = np.random.default_rng(seed)
    return [1] + [int(t) for t in g.integers(3, vocab, size=n - 1)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def main_guard(fn):
    """Runs fn() -> exit code; an exception is a failure with its message (never a skip)."""
    try:
        code = fn()
    except Exception as e:  # noqa: BLE001 - every error must fail the ctest with its message
        import traceback
        traceback.print_exc()
        print(f"\nFAILED: {type(e).__name__}: {e}", flush=True)
        code = 1
    sys.exit(code)
