#!/usr/bin/env bash
# The end-to-end demo on the built-in tiny model (called by `make demo` with the build dir as $1):
#   1. make a tiny random Llama (models/tiny)
#   2. fine-tune it with QLoRA on data/demo/train.jsonl: qlora-train configs/tiny.yaml
#   3. merge the adapter into a 16-bit model (qlora-merge)
#   4. answer a few prompts (alpaca template) with the base and the fine-tuned model, side by side
# Takes a few minutes on 2 cores.
set -euo pipefail
BUILD=${1:-build}
BIN="$(cd "$BUILD" && pwd)/bin"
cd "$(dirname "$0")/.."

t0=$(date +%s)
step() { printf '\n== %s\n' "$*"; }

step "1/4 tiny model: qlora-make-tiny --out models/tiny --preset tiny"
"$BIN/qlora-make-tiny" --out models/tiny --preset tiny --seed 42 --overwrite

if [ ! -f data/demo/train.jsonl ]; then
  echo "error: data/demo/train.jsonl is missing (it ships with the repository)" >&2
  exit 1
fi

step "2/4 QLoRA fine-tuning: qlora-train configs/tiny.yaml   (Ctrl-C saves a checkpoint; rerun resumes)"
# A fresh run each time the demo is run: old checkpoints and the old adapter are replaced.
"$BIN/qlora-train" configs/tiny.yaml --set checkpoint.resume=none --overwrite

ADAPTER=runs/tiny/final
MERGED=runs/tiny/merged
METRICS=runs/tiny/metrics.jsonl

# Prompts rendered with the alpaca template (data.template: alpaca), as the model saw them in training.
alpaca_prompt() {
  printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Response:\n' "$1"
}
PROMPTS=()
while IFS= read -r line; do PROMPTS+=("$line"); done < <(
  /usr/bin/python3 - <<'EOF' 2>/dev/null || head -n 3 data/demo/train.jsonl | sed -E 's/.*"instruction": *"([^"]*)".*/\1/'
import json
with open("data/demo/train.jsonl") as f:
    rows = [json.loads(l) for l in f if l.strip()]
for r in rows[:3]:
    print(r["instruction"])
EOF
)

if [ -x "$BIN/qlora-merge" ]; then
  step "3/4 merge: qlora-merge --base models/tiny --adapter $ADAPTER --out $MERGED"
  "$BIN/qlora-merge" --base models/tiny --adapter "$ADAPTER" --out "$MERGED" --overwrite
else
  step "3/4 merge: SKIPPED (qlora-merge is not built yet)"
  MERGED=""
fi

if [ -x "$BIN/qlora-generate" ]; then
  step "4/4 answers, base vs fine-tuned (greedy, 48 new tokens)"
  for p in "${PROMPTS[@]}"; do
    # $(...) drops trailing newlines, and the template ends in one after "### Response:" (what training saw): the
    # x keeps it.
    prompt=$(alpaca_prompt "$p"; printf x)
    prompt=${prompt%x}
    echo "--- instruction: $p"
    printf '  base:       '
    "$BIN/qlora-generate" --model models/tiny --prompt "$prompt" --max-new-tokens 48 --temperature 0 2>/dev/null | tr '\n' ' '
    echo
    printf '  fine-tuned: '
    if [ -n "$MERGED" ]; then
      "$BIN/qlora-generate" --model "$MERGED" --prompt "$prompt" --max-new-tokens 48 --temperature 0 2>/dev/null | tr '\n' ' '
    else
      "$BIN/qlora-generate" --model models/tiny --adapter "$ADAPTER" --prompt "$prompt" --max-new-tokens 48 --temperature 0 2>/dev/null | tr '\n' ' '
    fi
    echo
  done
else
  step "4/4 generation: SKIPPED (qlora-generate is not built yet)"
fi

step "done in $(( $(date +%s) - t0 ))s"
echo "adapter (PEFT layout): $ADAPTER"
[ -n "$MERGED" ] && echo "merged model:          $MERGED"
echo "checkpoints:           runs/tiny/checkpoint-*"
echo "metrics (JSON lines):  $METRICS"
echo "effective config:      runs/tiny/effective_config.yaml"
