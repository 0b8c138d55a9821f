#!/usr/bin/env bash
# The end-to-end demo on the built-in tiny model (called by `make demo`).
set -euo pipefail
BUILD=${1:-build}
BIN="$BUILD/bin"
"$BIN/qlora-make-tiny" --out models/tiny --preset tiny --seed 42 --overwrite
