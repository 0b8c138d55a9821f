#!/usr/bin/env bash
# The one prepared check of everything GPU, for a machine with an NVIDIA GPU, nvcc, CMake and PyTorch but none of our
# Debian packages and no network (the `device` machine): builds the CUDA configuration against that machine's own
# PyTorch (LibTorch from its torch wheel) with the C++ dependencies from the bundle made here by
# scripts/gpu-bundle.sh, then
#   1. ctest -L cuda            (CUDA kernels against their CPU twins, byte for byte)
#   2. bench_cuda_dequant       (dequant and GEMV against the device's copy bandwidth, measured in the same run)
#   3. 50 qlora-train steps of the bench model on CUDA next to the same 50 on the CPU (loss curves compared)
#   4. bench_layer              (one Llama-3-70B-shaped decoder layer, forward + backward: time, peak memory vs plan)
# and writes everything it measured to OUTDIR (summary.txt first). Fails at once, with a message, when no GPU is
# visible; every step has its own time limit so the whole check stays under 8 minutes.
#   scripts/gpu-bundle.sh && scripts/gpu-check.sh OUTDIR      (on the GPU machine: carry gpu-bundle/)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.txt
: >"$summary"
say() { echo "gpu-check: $*" | tee -a "$summary"; }
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start ))s; }
fail() { say "FAILED: $* (after $(elapsed))"; exit 1; }

PY=${QLORA_GPU_PYTHON:-python3}
BUNDLE=${QLORA_BUNDLE_DIR:-$PWD/gpu-bundle}
JOBS=${JOBS:-$(nproc)}
BUILD=${QLORA_GPU_BUILD:-build-gpu}

# QLORA_GPU_CHECK_DRY_RUN=1: rehearse every step on a machine without a GPU (CPU stands in for CUDA, the layer bench
# is scaled down); nothing it prints is a GPU figure.
DRY=${QLORA_GPU_CHECK_DRY_RUN:-0}
dev=cuda
[ "$DRY" = 1 ] && dev=cpu && say "DRY RUN: no GPU used; every 'cuda' figure below is a CPU stand-in"

# 0. Is there a GPU at all? (No hang: nvidia-smi and the torch probe are time-limited.)
if [ "$DRY" != 1 ]; then
  timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1 ||
    fail "no NVIDIA GPU visible (nvidia-smi: $(head -c 300 "$out/gpu.txt"))"
  timeout 60 "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1 ||
    fail "$PY's torch sees no CUDA device (or has no torch)"
else
  echo "none (dry run)" >"$out/gpu.txt"
fi
[ -d "$BUNDLE/include/yaml-cpp" ] || fail "no dependency bundle at $BUNDLE (make it with scripts/gpu-bundle.sh and carry it)"
export PATH=$BUNDLE/bin:$PATH  # spm_train for qlora-make-tiny
# CMake >= 3.26 (LibTorch 2.x's C++20 for CUDA sources); the bundle's own CMake and Ninja when the machine's is older.
cmake_ok() { command -v cmake >/dev/null && printf '3.26\n%s\n' "$(cmake --version | head -1 | grep -o '[0-9][0-9.]*')" | sort -VC; }
if ! cmake_ok; then
  mkdir -p "$out/work/tools" && tar -xJf "$BUNDLE/tools.tar.xz" -C "$out/work/tools" || fail "cannot unpack the bundle's CMake"
  export PATH=$out/work/tools/bin:$out/work/tools:$PATH
fi

say "GPU: $(head -1 "$out/gpu.txt"); torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'); nvcc $(nvcc --version | grep -o 'release [0-9.]*'); cmake $(cmake --version | head -1 | grep -o '[0-9.]*$')"

# 1. Build (CUDA configuration; the GPU's own architecture only, to keep it short).
arch=9.0
[ "$DRY" = 1 ] || arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}")')
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
timeout 120 cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DQLORA_CUDA=ON -DQLORA_TORCH_PYTHON="$PY" \
  -DQLORA_BUNDLE_DIR="$BUNDLE" -DTORCH_CUDA_ARCH_LIST="$arch" >"$out/configure.log" 2>&1 ||
  fail "configure (see configure.log: $(grep -m1 -i error "$out/configure.log"))"
timeout "${QLORA_GPU_BUILD_TIMEOUT:-330}" cmake --build "$BUILD" -j"$JOBS" --target test_cuda test_quant qlora-make-tiny qlora-train bench_cuda_dequant \
  bench_layer >"$out/build.log" 2>&1 || fail "build (see build.log: $(grep -m1 'error' "$out/build.log"))"
say "built for sm_${arch/./} in $(elapsed)"

# 2. CUDA tests (byte-for-byte against the CPU kernels) and the quant unit tests on this machine's CPU.
if timeout 120 ctest --test-dir "$BUILD" -L cuda --output-on-failure >"$out/ctest-cuda.log" 2>&1; then
  say "ctest -L cuda: $(grep -E 'tests passed|tests failed' "$out/ctest-cuda.log")"
else
  say "ctest -L cuda FAILED: $(grep -E 'tests passed|tests failed' "$out/ctest-cuda.log")"
fi
grep -q "Skipped" "$out/ctest-cuda.log" && say "WARNING: some CUDA tests were skipped (see ctest-cuda.log)"
timeout 60 "$BUILD/bin/test_quant" >"$out/test_quant.log" 2>&1 && say "test_quant: $(grep -E 'PASSED|FAILED' "$out/test_quant.log" | head -1)" ||
  say "test_quant FAILED (see test_quant.log)"

# 3. Kernel benchmarks against the device's copy bandwidth.
timeout 90 "$BUILD/bin/bench_cuda_dequant" --json "$out/bench_cuda_dequant.json" >"$out/bench_cuda_dequant.txt" 2>&1 ||
  say "bench_cuda_dequant FAILED or had no GPU (exit $?; see bench_cuda_dequant.txt)"
cat "$out/bench_cuda_dequant.txt" >>"$summary"

# 4. 50 training steps of the bench model on CUDA and on the CPU, same seed and data; loss curves compared.
models=$out/work/models
timeout 120 "$BUILD/bin/qlora-make-tiny" --out "$models/bench" --preset bench --overwrite >"$out/make-bench.log" 2>&1 ||
  fail "qlora-make-tiny --preset bench (see make-bench.log)"
steps=${QLORA_GPU_CHECK_STEPS:-50}
for run in cuda cpu; do
  d=$run
  [ "$run" = cuda ] && d=$dev
  timeout 150 "$BUILD/bin/qlora-train" configs/bench.yaml --overwrite --set model.path="$models/bench" \
    --set device=$d --set train.max_steps=$steps --set checkpoint.dir="$out/work/runs-$run" \
    --set output_dir="$out/work/runs-$run/final" --set log.metrics="$out/train-$run.jsonl" \
    >"$out/train-$run.log" 2>&1 || say "qlora-train on $run ($d) FAILED (see train-$run.log)"
done
"$PY" - "$out/train-cuda.jsonl" "$out/train-cpu.jsonl" "$steps" >>"$summary" 2>&1 <<'PYEOF'
import json, sys
def losses(p):
    try:
        return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l]
    except OSError as e:
        return []
gpu, cpu = losses(sys.argv[1]), losses(sys.argv[2])
n = min(len(gpu), len(cpu))
if n == 0:
    print("loss curves: MISSING (cuda %d, cpu %d records)" % (len(gpu), len(cpu))); sys.exit(0)
diff = [abs(a - b) for a, b in zip(gpu[:n], cpu[:n])]
rel = max(d / max(abs(b), 1e-6) for d, b in zip(diff, cpu[:n]))
# bf16 compute: different kernels round differently; the curves must stay within a few percent of each other.
ok = rel < 0.05 and n == int(sys.argv[3])
print("loss curves over %d steps: first %.4f/%.4f, last %.4f/%.4f (cuda/cpu), max relative difference %.4f: %s"
      % (n, gpu[0], cpu[0], gpu[n-1], cpu[n-1], rel, "AGREE (< 5%)" if ok else "DISAGREE"))
PYEOF
grep -h "tok/s\|peak" "$out/train-cuda.log" | tail -2 >>"$summary"

# 5. One Llama-3-70B-shaped decoder layer: forward + backward time and peak CUDA memory against the plan.
layer_args=(--device cuda)
[ "$DRY" = 1 ] && layer_args=(--device cpu --hidden 1024 --intermediate 3584 --heads 8 --kv-heads 1 --seq 256)
timeout 120 "$BUILD/bin/bench_layer" "${layer_args[@]}" --json "$out/bench_layer.json" >"$out/bench_layer.txt" 2>&1 ||
  say "bench_layer FAILED (see bench_layer.txt)"
cat "$out/bench_layer.txt" >>"$summary"

say "done in $(elapsed); results in $out"
