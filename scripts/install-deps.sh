#!/usr/bin/env bash
# Install every Debian package that building, testing and the demo need.
# Idempotent: packages already present are skipped; apt-get update runs only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  libtorch-dev            # LibTorch 1.13 (CPU): tensors, autograd, oneDNN bf16 matmul
  libopenblas0-openmp     # fast fp32 BLAS for LibTorch (reference BLAS is ~15x slower)
  sentencepiece           # spm_train, which trains the tiny model's tokenizer (tokenizer.model is read natively)
  libyaml-cpp-dev         # YAML configs with line numbers in errors
  libspdlog-dev           # logging
  libgtest-dev            # unit tests
  nlohmann-json3-dev      # JSON (safetensors headers, HF configs, JSONL data)
  libcli11-dev            # command-line parsing for the apps
  libpcre2-dev            # Unicode regex pre-tokenization for byte-level BPE (tokenizer.json)
  libgloo-dev             # headers for c10d's ProcessGroupGloo (data-parallel qlora-train; LibTorch ships the rest)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# node + npm run the interop tests (llama.cpp via node-llama-cpp, HF tokenizers' JS port); any node >= 18 will do.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 2; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
