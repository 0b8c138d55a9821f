#!/usr/bin/env bash
# Checks that every C++/CUDA source is clang-formatted with the repo's .clang-format (ctest `format`, so `make test`
# and CI run it). Fix with `make format`. Uses Debian bookworm's clang-format 14 (scripts/install-deps.sh installs
# it); other major versions format some constructs differently, so they are refused rather than trusted.
set -euo pipefail
cd "$(dirname "$0")/.."
cf=${CLANG_FORMAT:-clang-format}
command -v "$cf" >/dev/null || { echo "check-format: $cf not found (scripts/install-deps.sh installs it)" >&2; exit 2; }
major=$("$cf" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
if [ "$major" != "14" ]; then
  echo "check-format: $cf is version $major; the house format is clang-format 14 (Debian bookworm)" >&2
  exit 2
fi
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh')
else
  mapfile -t files < <(find . -path ./build -prune -o -path ./.venv -prune -o \
    \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print)
fi
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  if ! "$cf" --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'check-format: not clang-formatted: %s\n' "${bad[@]}"
  echo "check-format: ${#bad[@]} of ${#files[@]} files differ; run \`make format\` (clang-format -i) and commit"
  exit 1
fi
echo "check-format: ${#files[@]} files ok"
