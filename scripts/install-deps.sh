#!/usr/bin/env bash
# Installs what building, testing and the demo need, idempotently:
#   1. Debian packages (apt; `apt-get update` runs only when something is missing);
#   2. the project's virtual environment .venv/ with requirements/build.txt (LibTorch 2.x inside the torch wheel,
#      CMake, Ninja), and with --interop also requirements/interop.txt (the real Python tools the interop tests
#      compare against). Pinned versions; pip only ever writes into .venv/, never the system Python.
#   scripts/install-deps.sh [--interop]
set -euo pipefail
cd "$(dirname "$0")/.."

interop=0
[ "${1:-}" = "--interop" ] && interop=1

PACKAGES=(
  build-essential pkg-config git
  python3 python3-venv    # the virtual environment that carries the torch wheel (LibTorch 2.x)
  sentencepiece           # spm_train, which trains the tiny model's tokenizer (tokenizer.model is read natively)
  libyaml-cpp-dev         # YAML configs with line numbers in errors
  libspdlog-dev           # logging
  libgtest-dev            # unit tests
  nlohmann-json3-dev      # JSON (safetensors headers, HF configs, JSONL data)
  libcli11-dev            # command-line parsing for the apps
  libpcre2-dev            # Unicode regex pre-tokenization for byte-level BPE (tokenizer.json)
  libgloo-dev             # gloo's headers, which c10d's ProcessGroupGloo.hpp includes (Gloo itself is in LibTorch)
  clang-format            # the house format (14 on bookworm), checked by ctest `format`
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} Debian packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 2; }
    SUDO="sudo"
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The virtual environment. Any python3 >= 3.10 will do (the one on PATH first, else Debian's).
PYTHON=${QLORA_BOOTSTRAP_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "install-deps: creating .venv with $($PYTHON --version 2>&1)"
  $PYTHON -m venv .venv || /usr/bin/python3 -m venv .venv
fi

# pip is asked only when a requirements file changed since the last successful install (stamp files in .venv/).
install_reqs() {
  local req=$1 stamp=.venv/.installed-$(basename "$1")
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    echo "install-deps: .venv has $req"
    return
  fi
  echo "install-deps: pip install -r $req into .venv"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req" -c requirements/constraints.txt
  cp "$req" "$stamp"
}
install_reqs requirements/build.txt
if [ "$interop" = 1 ]; then
  install_reqs requirements/interop.txt
fi
