#!/usr/bin/env bash
# make bench: every benchmark in bench/ at its default settings. Each prints its figure next to the machine's own
# limit (copy bandwidth, matmul rate) measured in the same run, so ratios are comparable across machines.
# Figures swing with other load: run on an idle machine. Results worth keeping go to bench/RESULTS.md with the
# command that produced them and the date.
#
#   scripts/bench.sh [BUILD_DIR=build]          all of them (110 s on the 2-core development machine)
#   BENCH_ONLY="quant fused_ops" scripts/bench.sh   a subset (names without the bench_ prefix)
#
# Output: BUILD_DIR/bench/<name>.txt per benchmark and a summary of exit codes at the end. GPU-only benchmarks
# (bench_cuda_dequant, bench_layer on cuda) report that no device is visible and count as skipped.
set -uo pipefail
build=${1:-build}
bin=$build/bin
out=$build/bench
mkdir -p "$out"
threads=$(nproc)
# bench_layer measures the real 70B layer shapes on a GPU; without one, the scaled-down CPU layer of its header.
layer_args=""
if ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
  layer_args="--device cpu --hidden 1024 --intermediate 3584 --heads 8 --kv-heads 1 --seq 256"
fi
# name | arguments (the defaults documented in each benchmark's header and in bench/RESULTS.md)
benches=(
  "quant|$threads"
  "fused_ops|$threads"
  "tokenize|--mb 2"
  "data|"
  "memory_plan|configs/bench.yaml --steps 2"
  "train|configs/bench.yaml --steps 4"
  "layer|$layer_args"
  "cuda_dequant|"
)
declare -a summary
for entry in "${benches[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  if [[ -n "${BENCH_ONLY:-}" && " $BENCH_ONLY " != *" $name "* ]]; then continue; fi
  exe=$bin/bench_$name
  if [[ ! -x $exe ]]; then
    summary+=("bench_$name: not built (cmake --build $build --target bench_$name)")
    continue
  fi
  echo "== bench_$name $args"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$exe" $args 2>&1 | tee "$out/$name.txt"
  rc=${PIPESTATUS[0]}
  secs=$(($(date +%s) - start))
  case $rc in
    0) status="ok" ;;
    3) status="skipped (no CUDA device)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  summary+=("bench_$name: $status, ${secs}s, $out/$name.txt")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
for s in "${summary[@]}"; do [[ $s == *FAILED* ]] && exit 1; done
exit 0
