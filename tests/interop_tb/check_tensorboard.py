"""qlora-train's TensorBoard events and loss plots, read back by TensorBoard's own readers and Python's XML parser.

A short run on the tiny model (grad accumulation, eval every 4 steps, a checkpoint every 2) finishes; then its
checkpoints after step 2 and its final adapter are deleted (a crash after step 8 that lost everything after
step 2) and the same command resumes it from step 2 with QLORA_PROGRESS=bar (the terminal bar, drawn into a pipe).
Then:
  - both TensorBoard readers (EventAccumulator, and the server's plugin_event_accumulator) see each tag of
    trainer/tensorboard.h at exactly the steps of metrics.jsonl (which the resume rewrote), with its values to float32
    rounding: the redone steps 3..8 once each, from the second events file;
  - loss.svg (beside metrics.jsonl and in output_dir) parses as XML and draws one point per record;
  - `qlora-train --plot` on edge cases (a skipped step, one point, no eval, no records) writes parseable SVGs.
Exit 1 with one line per failed check.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.util import tensor_util

# metrics.jsonl key -> (TensorBoard tag, scale): trainer/tensorboard.h's kTensorBoardTags.
TAGS = {
    "loss": ("train/loss", 1.0),
    "lr": ("train/lr", 1.0),
    "grad_norm": ("train/grad_norm", 1.0),
    "tokens_per_s": ("train/tokens_per_s", 1.0),
    "tokens": ("train/tokens", 1.0),
    "eval_loss": ("eval/loss", 1.0),
    "eval_ppl": ("eval/perplexity", 1.0),
    "rss_bytes": ("memory/rss_mib", 1.0 / (1 << 20)),
    "device_peak_bytes": ("memory/device_peak_mib", 1.0 / (1 << 20)),
}
SVG = "{http://www.w3.org/2000/svg}"

failed = []


def check(ok, what, detail=""):
    line = f"{'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail else "")
    print(line, flush=True)
    if not ok:
        failed.append(line)
    return ok


def run(cmd, env=None):
    cmd = [str(c) for c in cmd]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=500)
    out = r.stdout.decode("utf-8", "replace")  # bytes as written: a bar's \r kept
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd)}\n{out}")
    return out


def write_run(work, tiny):
    qa = [("What color is the sky?", "The sky is blue."), ("What is two plus two?", "Two plus two is four."),
          ("Name a fruit.", "An apple is a fruit."), ("What do cats say?", "Cats say meow.")]
    for split, n in (("train", 8), ("eval", 2)):
        with open(work / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                for q, a in qa:
                    f.write(json.dumps({"instruction": q, "input": "", "output": a}) + "\n")
    run_dir = work / "tb-run"
    cfg = f"""model:
  path: {tiny}
  compute_dtype: fp32
  quant: {{type: nf4, blocksize: 64, double_quant: true}}
  gradient_checkpointing: false
lora: {{r: 4, alpha: 8, dropout: 0.0, targets: all-linear}}
data:
  train: {work / 'train.jsonl'}
  eval: {work / 'eval.jsonl'}
  format: alpaca
  max_seq_len: 64
  packing: true
  shuffle_buffer: 16
train: {{seed: 3, max_steps: 8, micro_batch_size: 2, grad_accum: 2, lr: 1.0e-2, schedule: cosine, warmup_steps: 2,
        threads: 2}}
eval: {{every: 4, max_batches: 2}}
checkpoint: {{dir: {run_dir}, every: 2, keep: 0, resume: auto}}
output_dir: {run_dir / 'final'}
log: {{every: 1}}
"""
    (work / "config.yaml").write_text(cfg)
    return work / "config.yaml", run_dir


def expected_scalars(metrics_file):
    """{tag: [(step, float32 value)]} from metrics.jsonl, in file order."""
    want = {}
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        for key, (tag, scale) in TAGS.items():
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(tag, []).append((rec["step"], np.float32(v * scale)))
    return want


def compare(got, want, reader):
    check(sorted(got) == sorted(want), f"{reader}: the tags of metrics.jsonl", f"{sorted(got)} vs {sorted(want)}")
    for tag, w in want.items():
        g = got.get(tag, [])
        steps_ok = [s for s, _ in g] == [s for s, _ in w]
        check(steps_ok, f"{reader}: {tag} steps", f"{[s for s, _ in g]} vs {[s for s, _ in w]}")
        if steps_ok:
            gv = np.array([v for _, v in g], dtype=np.float32)
            wv = np.array([v for _, v in w], dtype=np.float32)
            check(np.array_equal(gv, wv), f"{reader}: {tag} values equal metrics.jsonl's as float32",
                  f"max abs diff {np.abs(gv.astype(np.float64) - wv).max():.3e}")


def check_events(tb_dir, metrics_file, first_run_end):
    files = sorted(p.name for p in tb_dir.iterdir())
    check(len(files) == 2 and all(f.startswith("events.out.tfevents.") for f in files),
          "one events file per process (fresh run, resumed run)", str(files))
    want = expected_scalars(metrics_file)
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    got = {t: [(e.step, np.float32(e.value)) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    compare(got, want, "EventAccumulator")
    # The redone steps come from the resumed process's file (written after the first run ended).
    redone = [e.wall_time for e in acc.Scalars("train/loss") if e.step >= 3]
    check(redone and min(redone) >= first_run_end, "steps 3..8 are the resumed run's",
          f"first wall time {min(redone) if redone else None} vs first run's end {first_run_end}")
    plugin = plugin_event_accumulator.EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    plugin.Reload()
    got = {t: [(e.step, np.float32(tensor_util.make_ndarray(e.tensor_proto).item())) for e in plugin.Tensors(t)]
           for t in plugin.Tags()["tensors"]}
    compare(got, want, "plugin_event_accumulator (tensorboard's server)")


def svg_points(svg_file):
    """{class: number of points drawn} of an SVG (parsed: it must be well-formed XML)."""
    root = ET.parse(svg_file).getroot()
    n = {}
    for el in root.iter():
        cls = el.get("class")
        if el.tag == SVG + "polyline":
            n[cls] = n.get(cls, 0) + len(el.get("points").split())
        elif el.tag == SVG + "circle" or (el.tag == SVG + "line" and cls == "skipped"):
            n[cls] = n.get(cls, 0) + 1
    return n


def check_plot(svg_file, metrics_file, what):
    recs = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    train = {r["step"]: r["loss"] for r in recs if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in recs if "eval_loss" in r}
    lr = {r["step"] for r in recs if "lr" in r}
    try:
        n = svg_points(svg_file)
    except (ET.ParseError, OSError) as e:
        return check(False, f"{what}: parses as XML", str(e))
    want = {"train": sum(v is not None for v in train.values()), "eval": len(evals), "lr": len(lr),
            "skipped": sum(v is None for v in train.values())}
    got = {k: n.get(k, 0) for k in want}
    return check(got == want, f"{what}: one point per record", f"{got} vs {want}")


def check_plot_edge_cases(bin_dir, work):
    cases = {
        "skipped-step": ['{"step":1,"loss":3.0,"lr":0.001}', '{"step":2,"loss":null,"lr":0.001,"skipped":true}',
                         '{"step":3,"loss":2.0,"lr":0.001,"eval_loss":2.5,"eval_ppl":12.18}'],
        "one-point": ['{"step":1,"loss":3.0,"lr":0.001}'],
        "no-eval": ['{"step":%d,"loss":%f,"lr":0.001}' % (s, 3.0 / s) for s in range(1, 30)],
        "no-records": [],
    }
    for name, lines in cases.items():
        d = work / "plots" / name
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
        out = run([bin_dir / "qlora-train", "--plot", d]).strip().splitlines()
        check(out and Path(out[-1]) == d / "loss.svg", f"--plot {name}: prints the plot's path", str(out[-1:]))
        check_plot(d / "loss.svg", d / "metrics.jsonl", f"--plot {name}")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin-dir", required=True, type=Path)
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--tiny", required=True, type=Path)
    args = p.parse_args()
    args.work_dir, args.tiny = args.work_dir.resolve(), args.tiny.resolve()  # as the config resolves them
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    train = args.bin_dir / "qlora-train"

    cfg, run_dir = write_run(args.work_dir, args.tiny)
    first = run([train, cfg], env={"QLORA_PROGRESS": "plain"})
    first_run_end = time.time()
    check("tensorboard: " + str(run_dir / "tensorboard") in first, "the summary names the events folder")
    check("loss plot:   " + str(run_dir / "loss.svg") in first, "the summary names the loss plot")
    for step in (4, 6, 8):  # a crash that lost every checkpoint after step 2, and the final adapter
        shutil.rmtree(run_dir / f"checkpoint-{step}")
    shutil.rmtree(run_dir / "final")
    # Every update redrawn (no 0.2 s throttle): a fast machine finishes a micro-batch between two throttled redraws.
    second = run([train, cfg], env={"QLORA_PROGRESS": "bar", "QLORA_PROGRESS_REDRAW_S": "0"})
    check("resumed from" in second and "at step 2/8" in second, "the second run resumes at step 2")
    check("\rtrain [" in second and "micro-batch 1/2" in second,
          "QLORA_PROGRESS=bar draws the bar in place, per micro-batch", repr(second[second.find("\r"):][:160]))

    metrics = run_dir / "metrics.jsonl"
    check_events(run_dir / "tensorboard", metrics, first_run_end)
    check_plot(run_dir / "loss.svg", metrics, "loss.svg beside metrics.jsonl")
    check_plot(run_dir / "final" / "loss.svg", metrics, "loss.svg in output_dir")
    check_plot_edge_cases(args.bin_dir, args.work_dir)

    print(f"\ninterop_tb: {len(failed)} failed")
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
