#!/usr/bin/env bash
# Packs what a GPU machine lacks to build and check qlora.cpp (it has a compiler, CMake, nvcc and PyTorch, but not
# our Debian packages, and no network) into one folder, taken from this machine's installed Debian packages
# (run `make deps` first). scripts/gpu-check.sh builds with -DQLORA_BUNDLE_DIR=that folder (cmake/QloraDeps.cmake).
#   scripts/gpu-bundle.sh [DIR]        (default: gpu-bundle/, git-ignored; ~30 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-bundle}
lib=/usr/lib/x86_64-linux-gnu
rm -rf "$out"
mkdir -p "$out/include" "$out/lib" "$out/src" "$out/bin"
for d in yaml-cpp spdlog fmt nlohmann CLI gloo; do
  [ -d "/usr/include/$d" ] || { echo "gpu-bundle: /usr/include/$d missing (run make deps)" >&2; exit 2; }
  cp -r "/usr/include/$d" "$out/include/"
done
cp /usr/include/pcre2.h "$out/include/"
cp "$lib/libyaml-cpp.a" "$lib/libpcre2-8.a" "$out/lib/"
cp -r /usr/src/googletest "$out/src/"
# spm_train (qlora-make-tiny trains the tiny models' tokenizers with it) with the two libraries it needs, behind a
# wrapper that points the loader at them.
mkdir -p "$out/lib/spm"
cp /usr/bin/spm_train "$out/lib/spm/"
for so in libsentencepiece_train.so.0 libsentencepiece.so.0; do cp -L "$lib/$so" "$out/lib/spm/"; done
cat > "$out/bin/spm_train" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")/../lib/spm
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/spm_train" "$@"
WRAP
chmod +x "$out/bin/spm_train"
# CMake >= 3.26 and Ninja from .venv (the GPU machine's own CMake may be older), compressed: used only if needed.
cm=.venv/lib/python3.11/site-packages/cmake/data
[ -x "$cm/bin/cmake" ] || { echo "gpu-bundle: no CMake in .venv (run make deps)" >&2; exit 2; }
tar -cf - -C "$cm" bin/cmake bin/ctest share -C "$PWD/.venv/bin" ninja | xz -T0 -6 >"$out/tools.tar.xz"
echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $out"
