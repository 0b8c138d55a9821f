#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang++-14, ASan + UBSan) in build-fuzz/ and runs each for FUZZ_SECONDS, one
# at a time, then prints a summary table (also written to build-fuzz/fuzz-summary.md).
#
#   scripts/fuzz.sh [TARGET...]            (default: every target; names without the fuzz_ prefix)
#   FUZZ_SECONDS=600  time per target      FUZZ_BUILD=build-fuzz  build folder     JOBS=nproc  build jobs
#   FUZZ_NICE=5       nice level           FUZZ_NO_BUILD=1        run what is built
#   FUZZ_ARGS=...     extra libFuzzer flags (e.g. -jobs=4 -workers=4)
#
# Corpora live in build-fuzz/corpus/<target> (seeded from the target's seeds, listed in fuzz/CMakeLists.txt, and
# kept between runs); crashing inputs land in build-fuzz/findings/<target>/ and each becomes a regression input in
# tests/fixtures/fuzz_regressions/<target>/ plus a unit test once fixed. Exit status 1 when any target found something.
set -euo pipefail
cd "$(dirname "$0")/.."

B=${FUZZ_BUILD:-build-fuzz}
SECS=${FUZZ_SECONDS:-600}
JOBS=${JOBS:-$(nproc)}
NICE=${FUZZ_NICE:-5}
CMAKE=.venv/bin/cmake
ALL=(safetensors hf_config bnb_quant_state sentencepiece bpe_tokenizer jinja tokenizer_config records chat_records
     adapter_config adapter train_config trainer_state manifest)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")

dict_of() {
  case "$1" in
    sentencepiece) ;;
    train_config) echo fuzz/dicts/yaml.dict ;;
    jinja) echo fuzz/dicts/jinja.dict ;;
    *) echo fuzz/dicts/json.dict ;;
  esac
}

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  if ! command -v clang++-14 >/dev/null; then
    echo "scripts/fuzz.sh: clang++-14 not found" >&2
    echo "HINT: apt-get install clang-14 libclang-rt-14-dev (libFuzzer's runtime)" >&2
    exit 2
  fi
  [ -f "$B/build.ninja" ] || $CMAKE -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++-14 -DQLORA_FUZZ=ON -DQLORA_BUILD_TESTS=OFF -DQLORA_BUILD_BENCH=OFF -DQLORA_CUDA=OFF
  $CMAKE --build "$B" -j"$JOBS" --target "${TARGETS[@]/#/fuzz_}"
fi

# Leaks are findings too, but LibTorch's lazily built singletons (thread pools, allocators) are not ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

summary="$B/fuzz-summary.md"
printf '| target | seconds | execs | execs/s | corpus files | peak RSS MB | cov | findings |\n' >"$summary"
printf '|---|---|---|---|---|---|---|---|\n' >>"$summary"
status=0
for t in "${TARGETS[@]}"; do
  exe="$B/bin/fuzz_$t"
  corpus="$B/corpus/$t"
  found="$B/findings/$t"
  log="$B/logs/$t.log"
  mkdir -p "$corpus" "$found" "$B/logs"
  while IFS= read -r seed; do  # the seed list CMake wrote for this target
    [ -z "$seed" ] && continue
    if [ -d "$seed" ]; then find "$seed" -type f -exec cp -n {} "$corpus/" \; ; elif [ -f "$seed" ]; then cp -n "$seed" "$corpus/"; fi
  done <"$B/fuzz/seeds_$t.txt"
  dict=$(dict_of "$t")
  echo "== fuzz_$t for ${SECS}s ($(date -u +%FT%TZ))"
  set +e
  # shellcheck disable=SC2086
  nice -n "$NICE" "$exe" -max_total_time="$SECS" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$found/" ${dict:+-dict=$dict} ${FUZZ_ARGS:-} "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  stat() { grep -a "^stat::$1:" "$log" | tail -1 | awk '{print $2}'; }
  execs=$(stat number_of_executed_units)
  eps=$(stat average_exec_per_sec)
  rss=$(stat peak_rss_mb)
  cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  nfind=$(find "$found" -type f | wc -l)
  ncorp=$(find "$corpus" -type f | wc -l)
  [ "$rc" -ne 0 ] || [ "$nfind" -ne 0 ] && status=1
  printf '| %s | %s | %s | %s | %s | %s | %s | %s%s |\n' "$t" "$SECS" "${execs:-?}" "${eps:-?}" "$ncorp" "${rss:-?}" \
    "${cov:-?}" "$nfind" "$([ "$rc" -ne 0 ] && echo " (exit $rc, see $log)")" >>"$summary"
  tail -n 3 "$log"
done
echo
cat "$summary"
exit $status
