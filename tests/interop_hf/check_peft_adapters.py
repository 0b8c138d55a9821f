"""PEFT (from the .venv) against our LoRA adapters, both ways, on the same token ids.

Ours -> PEFT: `qlora-train` trains the tiny model briefly (NF4 base, LoRA r 8 on all linear layers, fp32), once plain
  and once with rsLoRA (`--set lora.rslora=true`). `PeftModel.from_pretrained(LlamaForCausalLM(tiny), adapter)` must
  load every lora_A / lora_B tensor unchanged and give the logits of `qlora-generate --model tiny --adapter DIR
  --logits-out` (16-bit base, fp32 compute); also on the 4-bit base: transformers + bitsandbytes loading
  `qlora-quantize` output, PEFT on top, against `qlora-generate --model <that folder> --adapter DIR`.
PEFT -> ours: `get_peft_model(model, LoraConfig(r=8, lora_alpha=16, all seven projections, use_rslora=...))` with B
  set non-zero, `save_pretrained`; `qlora-generate --adapter` must give PEFT's logits, and `qlora-merge --dtype bf16`
  must give PEFT's `merge_and_unload()` weights (cast to bf16) and logits.

Tolerance kFp32Rel = 1e-4 of the logit scale for fp32 logits (same math, other order). Every comparison is guarded
against being vacuous: the adapter must move the logits by more than 100x the tolerance, and for rsLoRA the
logits with the other scaling (alpha / r instead of alpha / sqrt(r)) must be far from ours. Merged weights: each bf16
value within kMergeUlps (1) bf16 ulp of PEFT's merged weight (the fp32 sums B @ A may round differently).

Run by ctest as interop_hf_peft.
"""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interop_common as ic  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

kFp32Rel = 1e-4
kMergeUlps = 1
kPromptLen = 40
kTrainSteps = 8

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*kernels.*")


def base_model(folder, checks=None, bnb_fp32=False):
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                             attn_implementation="eager")
    if bnb_fp32:  # 4-bit base: exact dequant + fp32 matmul (see interop_common.bnb_set_compute_dtype)
        n = ic.bnb_set_compute_dtype(model, torch.float32)
        bad = ic.bnb_dequant_problems(model)
        checks.check(n > 0 and not bad, f"{Path(folder).name}: {n} bitsandbytes Linear4bit layers, its CPU dequant "
                     "equal to its reference on each", "; ".join(bad[:4]))
    return model.eval()


def write_train_config(work, tiny, rslora):
    """A short QLoRA run on the tiny model (the same shape of config as tests/trainer/test_training.cpp)."""
    run = work / f"train-{'rslora' if rslora else 'lora'}"
    run.mkdir(parents=True)
    qa = [("What color is the sky?", "The sky is blue."), ("What is two plus two?", "Two plus two is four."),
          ("Name a fruit.", "An apple is a fruit."), ("What do cats say?", "Cats say meow.")]
    with open(run / "train.jsonl", "w") as f:
        for _ in range(8):
            for q, a in qa:
                f.write(f'{{"instruction": "{q}", "input": "", "output": "{a}"}}\n')
    cfg = f"""model:
  path: {tiny}
  compute_dtype: fp32
  quant: {{type: nf4, blocksize: 64, double_quant: true}}
  gradient_checkpointing: false
lora: {{r: 8, alpha: 16, dropout: 0.0, targets: all-linear, rslora: {'true' if rslora else 'false'}}}
data:
  train: {run / 'train.jsonl'}
  format: alpaca
  max_seq_len: 64
  packing: true
  shuffle_buffer: 16
train:
  seed: 7
  max_steps: {kTrainSteps}
  micro_batch_size: 2
  grad_accum: 1
  lr: 1.0e-2
  schedule: constant
  warmup_steps: 0
  max_grad_norm: 1.0
  threads: 2
eval: {{every: 0, at_end: false}}
checkpoint: {{dir: {run / 'ckpt'}, every: 0, keep: 1, resume: none}}
output_dir: {run / 'adapter'}
log: {{every: 4, metrics: {run / 'metrics.jsonl'}}}
"""
    (run / "config.yaml").write_text(cfg)
    return run


def check_peft_loads_ours(checks, model, adapter_dir, what):
    """Every lora_A / lora_B weight PEFT holds equals the file's tensor (PEFT re-inserts the adapter name)."""
    stored = load_file(str(adapter_dir / "adapter_model.safetensors"))
    held = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    missing = sorted(set(stored) - set(held))
    extra = sorted(set(held) - set(stored))
    differ = [k for k in stored if k in held and not torch.equal(held[k].float(), stored[k].float())]
    checks.check(not missing and not extra and not differ and len(stored) == 2 * 7 * 4,
                 f"{what}: PEFT holds exactly the {len(stored)} stored LoRA tensors, unchanged",
                 f"missing {missing[:3]}, extra {extra[:3]}, differ {differ[:3]}")


def compare(checks, ours, ref, what, base=None, wrong=None):
    """Tight fp32 comparison; `base` (logits without the adapter) and `wrong` (logits with another scaling) must be
    far from the reference, so that the comparison can see the adapter and its scaling."""
    scale = float(np.abs(ref).max())
    tol = kFp32Rel * scale
    checks.close(ours, ref, what, tol, f" (= {kFp32Rel:g} x logit scale {scale:.3g})")
    for other, why in ((base, "the adapter moves the logits"), (wrong, "the other LoRA scaling would be caught")):
        if other is not None:
            d = float(np.abs(other - ref).max())
            checks.check(d > 100 * tol, f"{what}: {why}", f"max diff {d:.3e} > 100 x tolerance {tol:.3e}")


def peft_logits(base_folder, adapter_dir, ids, checks=None, bnb_fp32=False, flip_rslora=False):
    model = base_model(base_folder, checks, bnb_fp32)
    kwargs = {}
    if flip_rslora:
        cfg = LoraConfig.from_pretrained(str(adapter_dir))
        cfg.use_rslora = not cfg.use_rslora
        kwargs["config"] = cfg
    peft = PeftModel.from_pretrained(model, str(adapter_dir), **kwargs).eval()
    return peft, ic.hf_logits(peft, ids)


def ours_to_peft(args, checks, ids, base32, qdir):
    """Adapters trained by qlora-train, loaded by PEFT."""
    for rslora in (False, True):
        tag = "rsLoRA" if rslora else "LoRA"
        run = write_train_config(args.work_dir, args.tiny, rslora)
        ic.run([ic.app(args.bin_dir, "qlora-train"), run / "config.yaml"], timeout=900)
        adapter = run / "adapter"
        cfg = ic.read_json(adapter / "adapter_config.json")
        checks.check(cfg.get("use_rslora") is rslora and cfg.get("r") == 8 and cfg.get("lora_alpha") == 16,
                     f"qlora-train {tag} adapter_config.json", f"r {cfg.get('r')}, lora_alpha {cfg.get('lora_alpha')}"
                     f", use_rslora {cfg.get('use_rslora')}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft, ref = peft_logits(args.tiny, adapter, ids)
        loud = [str(w.message) for w in caught if "adapter" in str(w.message).lower() or
                "key" in str(w.message).lower()]
        checks.check(not loud, f"our {tag} adapter: PEFT loads it without warnings about keys", " | ".join(loud[:3]))
        check_peft_loads_ours(checks, peft, adapter, f"our {tag} adapter")
        ours = ic.our_logits(args.bin_dir, args.tiny, ids, args.work_dir / f"ours_{tag}.npy", adapter=adapter)
        wrong = peft_logits(args.tiny, adapter, ids, flip_rslora=True)[1]
        compare(checks, ours, ref, f"our {tag} adapter on the 16-bit base: qlora-generate vs PEFT", base=base32,
                wrong=wrong)
        # The same adapter on the 4-bit base (transformers + bitsandbytes, fp32 compute).
        _, ref_q = peft_logits(qdir, adapter, ids, checks, bnb_fp32=True)
        ours_q = ic.our_logits(args.bin_dir, qdir, ids, args.work_dir / f"ours_{tag}_nf4.npy", adapter=adapter,
                               quant="nf4")
        compare(checks, ours_q, ref_q, f"our {tag} adapter on the NF4 base: qlora-generate vs PEFT + bitsandbytes")


def peft_to_ours(args, checks, ids, base32):
    """Adapters written by PEFT itself, read by qlora-generate and qlora-merge."""
    for rslora in (False, True):
        tag = "rsLoRA" if rslora else "LoRA"
        model = base_model(args.tiny)
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ic.LLAMA_PROJECTIONS,
                         use_rslora=rslora, task_type="CAUSAL_LM")
        peft = get_peft_model(model, cfg)
        torch.manual_seed(11 + rslora)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.05)
        adapter = args.work_dir / f"peft-{tag}"
        peft.save_pretrained(str(adapter))
        peft.eval()
        ref = ic.hf_logits(peft, ids)
        keys = sorted(ic.read_json(adapter / "adapter_config.json"))
        print(f"  PEFT {tag} adapter_config.json keys: {', '.join(keys)}", flush=True)

        out = ic.run([ic.app(args.bin_dir, "qlora-generate"), "--model", args.tiny, "--adapter", adapter,
                      "--prompt-ids", " ".join(map(str, ids)), "--max-new-tokens", "0", "--quant", "none",
                      "--dtype", "fp32", "--threads", "2", "--logits-out", args.work_dir / f"peft_{tag}.npy"])
        warned = [line for line in out.splitlines() if "warn" in line.lower()]
        checks.check(not warned, f"PEFT {tag} adapter: qlora-generate reads it without warnings", " | ".join(warned))
        ours = np.load(args.work_dir / f"peft_{tag}.npy")
        wrong_cfg = LoraConfig.from_pretrained(str(adapter))
        wrong_cfg.use_rslora = not rslora
        wrong = ic.hf_logits(PeftModel.from_pretrained(base_model(args.tiny), str(adapter), config=wrong_cfg).eval(),
                             ids)
        compare(checks, ours, ref, f"PEFT {tag} adapter: qlora-generate --adapter vs PEFT", base=base32, wrong=wrong)

        # qlora-merge --dtype bf16 vs PEFT's merge_and_unload() rounded to bf16.
        merged = args.work_dir / f"merged-peft-{tag}"
        ic.run([ic.app(args.bin_dir, "qlora-merge"), "--base", args.tiny, "--adapter", adapter, "--out", merged,
                "--dtype", "bf16"])
        peft_merged = peft.merge_and_unload().state_dict()
        ulps_worst, bad, n_diff, n_total = 0, [], 0, 0
        for f in sorted(merged.glob("*.safetensors")):
            with safe_open(f, framework="pt") as st:
                for k in st.keys():
                    got = st.get_tensor(k)
                    want = peft_merged[k].to(torch.bfloat16)
                    if got.dtype != torch.bfloat16 or got.shape != want.shape:
                        bad.append(f"{k}: {got.dtype} {list(got.shape)}")
                        continue
                    # Adjacent bf16 values of one sign differ by 1 in their int16 bit patterns.
                    d = (got.view(torch.int16).int() - want.view(torch.int16).int()).abs()
                    same_sign = torch.signbit(got.float()) == torch.signbit(want.float())
                    d = torch.where(same_sign | (got.float() == 0) | (want.float() == 0), d, torch.full_like(d, 99))
                    ulps_worst = max(ulps_worst, int(d.max()))
                    n_diff += int((d > 0).sum())
                    n_total += d.numel()
        checks.check(not bad and ulps_worst <= kMergeUlps and n_total > 0,
                     f"PEFT {tag} adapter: qlora-merge --dtype bf16 weights vs PEFT merge_and_unload() in bf16",
                     f"worst {ulps_worst} ulp, {n_diff} of {n_total} values differ {bad[:3]}")
        ref_m = ic.hf_logits(base_model(merged), ids)
        ours_m = ic.our_logits(args.bin_dir, merged, ids, args.work_dir / f"merged_{tag}.npy")
        compare(checks, ours_m, ref_m, f"PEFT {tag} adapter merged by qlora-merge: qlora-generate vs transformers")
        # Against the unmerged PEFT model: the merged weights are rounded to bf16, so judge the distance by what the
        # same rounding of PEFT's own merge gives (transformers on PEFT's merged weights cast to bf16 and back).
        peft_m16 = base_model(args.tiny)
        with torch.no_grad():
            for k, v in peft_m16.state_dict().items():
                v.copy_(peft_merged[k].to(torch.bfloat16).float())
        ref_m16 = ic.hf_logits(peft_m16, ids)
        rounding = float(np.abs(ref_m16 - ref).max())
        checks.close(ours_m, ref, f"PEFT {tag} adapter merged by qlora-merge vs PEFT unmerged",
                     2 * rounding + kFp32Rel * float(np.abs(ref).max()),
                     f" (= 2 x the bf16 rounding of PEFT's own merge, {rounding:.3e}, + {kFp32Rel:g} x scale)")


def main():
    args = ic.parse_args()
    if args.tiny is None:
        raise ValueError("--tiny is required (the qlora-make-tiny model)")
    checks = ic.Checks("PEFT interop")
    tiny_cfg = ic.read_json(args.tiny / "config.json")
    ids = ic.prompt_ids(tiny_cfg["vocab_size"], kPromptLen, seed=11)
    base32 = ic.hf_logits(base_model(args.tiny), ids)
    # NF4 + double quant, blocksize 32: the tiny model's rows (128, 352) are whole blocks, where bitsandbytes' CPU
    # dequant is right (see check_bnb_quant.py).
    qdir = args.work_dir / "tiny-nf4-bs32"
    ic.run([ic.app(args.bin_dir, "qlora-quantize"), "--in", args.tiny, "--out", qdir, "--blocksize", "32"])
    ours_to_peft(args, checks, ids, base32, qdir)
    peft_to_ours(args, checks, ids, base32)
    return checks.report()


if __name__ == "__main__":
    ic.main_guard(main)
