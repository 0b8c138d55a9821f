"""transformers (LlamaForCausalLM, from the .venv) against our forward pass, on the same token ids.

Our logits come from `qlora-generate --prompt-ids ... --max-new-tokens 0 --logits-out F.npy` (fp32, every prompt
position); transformers' from the same folder loaded with `from_pretrained` (eager attention, on the CPU), every
load checked for missing / unexpected / mismatched keys.

  fp32     a Llama made by transformers itself (LlamaConfig + random init + save_pretrained, fp32 safetensors, GQA,
           rope_theta 1000) and the qlora-make-tiny model (bf16 weights), both computed in fp32 on both sides.
           Tolerance kFp32Rel = 1e-4 of the logit scale (max |logit| of the reference): the two sides run the same
           math in fp32 in another order (matmul blocking, reductions), which moves logits by ~1e-6 relative.
  bf16     the tiny model computed in bf16 on both sides. bf16 keeps 8 significant bits (one rounding = up to
           2^-9 = 0.2% relative), and each side rounds after other ops, so the two can be as far apart as either is
           from the exact result. Tolerance: our bf16 logits are no further from the fp32 logits than
           kBf16ErrorRatio (2) x transformers' own bf16 logits are, and the two bf16 results differ by at most
           kBf16Rel (3%) of the logit scale.
  nf4/fp4  `qlora-quantize` output (bitsandbytes 4-bit layout) loaded by transformers with bitsandbytes on the CPU:
           NF4 + double quant and FP4 of the transformers-made model (blocksize 64), NF4 + double quant of the tiny
           model (blocksize 32). Both sides dequantize the same stored bytes (bitsandbytes' dequant equals ours bit for
           bit, see check_bnb_quant.py), so with fp32 compute the difference is compute order only: kFp32Rel. The
           transformers side runs bitsandbytes' generic path in fp32 (interop_common.bnb_set_compute_dtype says why),
           and each model is checked to avoid bitsandbytes 0.50.2's CPU dequant bug (rows that are not whole blocks,
           e.g. the tiny model's down_proj [128, 352] at blocksize 64: interop_common.bnb_dequant_problems). Also the
           tiny NF4 model with bf16 compute on both sides, judged like bf16.
  merge    `qlora-merge --dtype bf16` output (the tiny model + a PEFT-written adapter with non-zero B) loaded by
           transformers, fp32 compute: kFp32Rel.

Run by ctest as interop_hf_transformers_logits.
"""

import shutil
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interop_common as ic  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

kFp32Rel = 1e-4
kBf16ErrorRatio = 2.0
kBf16Rel = 0.03
kPromptLen = 40

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*kernels.*")


def load_hf(checks, folder, dtype, what, compute_dtype=None):
    """from_pretrained on the CPU with eager attention; fails the check on any missing/unexpected/mismatched key."""
    model, info = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, device_map="cpu", attn_implementation="eager",
                                                   output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                            "error_msgs")}
    checks.check(not problems, f"{what}: transformers loads {Path(folder).name} with no key problems",
                 str(problems) if problems else "")
    if compute_dtype is not None:
        n = ic.bnb_set_compute_dtype(model, compute_dtype)
        checks.check(n > 0, f"{what}: model has bitsandbytes Linear4bit layers", f"{n} layers")
        bad = ic.bnb_dequant_problems(model)
        checks.check(not bad, f"{what}: bitsandbytes' CPU dequant equals its reference on every layer",
                     "; ".join(bad[:4]))
    model.eval()
    return model


def compare_tight(checks, ours, ref, what):
    scale = float(np.abs(ref).max())
    checks.close(ours, ref, what, kFp32Rel * scale, f" (= {kFp32Rel:g} x logit scale {scale:.3g})")


def compare_bf16(checks, ours16, hf16, ref32, what):
    scale = float(np.abs(ref32).max())
    err_hf = float(np.abs(hf16.astype(np.float64) - ref32).max())
    err_ours = float(np.abs(ours16.astype(np.float64) - ref32).max())
    checks.check(err_ours <= kBf16ErrorRatio * err_hf,
                 f"{what}: our bf16 error vs fp32 within {kBf16ErrorRatio:g}x transformers' bf16 error",
                 f"ours {err_ours:.3e}, transformers {err_hf:.3e} (logit scale {scale:.3g})")
    checks.close(ours16, hf16, f"{what}: ours vs transformers, both bf16", kBf16Rel * scale,
                 f" (= {kBf16Rel:g} x logit scale {scale:.3g})")
    agree = float((ours16.argmax(-1) == hf16.argmax(-1)).mean())
    print(f"  {what}: argmax agreement {agree:.3f} over {len(ours16)} positions", flush=True)


def make_hf_model(args, tiny_cfg):
    """A Llama made by transformers itself: fp32 safetensors, GQA, non-default rope_theta; the tiny tokenizer copied in
    (qlora-generate loads a tokenizer even for --prompt-ids)."""
    out = args.work_dir / "hf-made-fp32"
    cfg = LlamaConfig(vocab_size=tiny_cfg["vocab_size"], hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_theta=1000.0, tie_word_embeddings=False, initializer_range=0.08,
                      bos_token_id=tiny_cfg.get("bos_token_id", 1), eos_token_id=tiny_cfg.get("eos_token_id", 2))
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # norms away from 1 so their weights matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(out)
    shutil.copy(args.tiny / "tokenizer.model", out / "tokenizer.model")
    return out


def make_peft_adapter(args, base):
    """A PEFT-written LoRA adapter (r 8, alpha 16, all seven projections) with non-zero B."""
    from peft import LoraConfig, get_peft_model
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu")
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ic.LLAMA_PROJECTIONS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(99)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    out = args.work_dir / "peft-adapter"
    peft_model.save_pretrained(out)
    return out


def main():
    args = ic.parse_args()
    if args.tiny is None:
        raise ValueError("--tiny is required (the qlora-make-tiny model)")
    checks = ic.Checks("transformers interop")
    bin_dir, work = args.bin_dir, args.work_dir
    tiny_cfg = ic.read_json(args.tiny / "config.json")
    ids = ic.prompt_ids(tiny_cfg["vocab_size"], kPromptLen, seed=7)

    # fp32: a transformers-made model, then the qlora-make-tiny one.
    hf_made = make_hf_model(args, tiny_cfg)
    ref = ic.hf_logits(load_hf(checks, hf_made, torch.float32, "fp32 transformers-made"), ids)
    ours = ic.our_logits(bin_dir, hf_made, ids, work / "hf_made_fp32.npy", quant="none", dtype="fp32")
    compare_tight(checks, ours, ref, "fp32 transformers-made model (rope_theta 1000, GQA 4/2)")

    tiny32 = ic.hf_logits(load_hf(checks, args.tiny, torch.float32, "fp32 tiny"), ids)
    ours = ic.our_logits(bin_dir, args.tiny, ids, work / "tiny_fp32.npy", quant="none", dtype="fp32")
    compare_tight(checks, ours, tiny32, "fp32 qlora-make-tiny model")

    # bf16 compute on both sides, judged against the fp32 logits.
    hf16 = ic.hf_logits(load_hf(checks, args.tiny, torch.bfloat16, "bf16 tiny"), ids)
    ours16 = ic.our_logits(bin_dir, args.tiny, ids, work / "tiny_bf16.npy", quant="none", dtype="bf16")
    compare_bf16(checks, ours16, hf16, tiny32, "bf16 qlora-make-tiny model")

    # 4-bit: qlora-quantize folders in transformers + bitsandbytes (CPU). Row lengths are multiples of the blocksize
    # (hf-made: 64 and 192; tiny: 128 and 352 with blocksize 32), where bitsandbytes' CPU dequant is right.
    hf32 = ref
    for base, ref16, qt, bs, dq in ((hf_made, hf32, "nf4", 64, True), (hf_made, hf32, "fp4", 64, False),
                                     (args.tiny, tiny32, "nf4", 32, True)):
        qdir = work / f"{base.name}-{qt}-bs{bs}"
        cmd = [ic.app(bin_dir, "qlora-quantize"), "--in", base, "--out", qdir, "--quant", qt, "--blocksize", bs]
        ic.run(cmd + ([] if dq else ["--no-double-quant"]))
        what = f"{base.name} {qt} (blocksize {bs}{', double quant' if dq else ''}) fp32 compute"
        ref_q = ic.hf_logits(load_hf(checks, qdir, torch.float32, what, compute_dtype=torch.float32), ids)
        ours_q = ic.our_logits(bin_dir, qdir, ids, work / f"{qdir.name}_fp32.npy", quant=qt, dtype="fp32")
        compare_tight(checks, ours_q, ref_q, f"{what}: ours vs transformers+bitsandbytes")
        # The 4-bit weights must matter: far from the 16-bit model's logits.
        drift = float(np.abs(ref_q - ref16).max())
        checks.check(drift > 100 * kFp32Rel * float(np.abs(ref16).max()), f"{what}: 4-bit logits differ from the "
                     "16-bit ones (the comparison sees the quantized weights)", f"max diff {drift:.3e}")
        if base == args.tiny:
            hf_q16 = ic.hf_logits(load_hf(checks, qdir, torch.bfloat16, f"{base.name} {qt} bf16 compute",
                                          compute_dtype=torch.bfloat16), ids)
            ours_q16 = ic.our_logits(bin_dir, qdir, ids, work / f"{qdir.name}_bf16.npy", quant=qt, dtype="bf16")
            compare_bf16(checks, ours_q16, hf_q16, ref_q, f"{base.name} {qt} bf16 compute")

    # qlora-merge --dtype bf16 of the tiny model + a PEFT-written adapter.
    adapter = make_peft_adapter(args, args.tiny)
    merged = work / "tiny-merged-bf16"
    ic.run([ic.app(bin_dir, "qlora-merge"), "--base", args.tiny, "--adapter", adapter, "--out", merged,
            "--dtype", "bf16"])
    ref_m = ic.hf_logits(load_hf(checks, merged, torch.float32, "merged bf16"), ids)
    ours_m = ic.our_logits(bin_dir, merged, ids, work / "merged_fp32.npy", quant="none", dtype="fp32")
    compare_tight(checks, ours_m, ref_m, "qlora-merge --dtype bf16 output, fp32 compute")
    drift = float(np.abs(ref_m - tiny32).max())
    checks.check(drift > 100 * kFp32Rel * float(np.abs(tiny32).max()),
                 "merged logits differ from the base model's (the adapter matters)", f"max diff {drift:.3e}")
    return checks.report()


if __name__ == "__main__":
    ic.main_guard(main)
