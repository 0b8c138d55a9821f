#!/bin/sh
# Installs node-llama-cpp (prebuilt llama.cpp CPU binary) from the committed package-lock.json into
# tests/interop/node_modules, unless the pinned versions are already there. npm ci needs the npm registry;
# install scripts are skipped (node-llama-cpp is only loaded with build: "never").
set -e
cd "$(dirname "$0")"
if node -e '
  const want = "3.21.1";
  const a = require("./node_modules/node-llama-cpp/package.json").version;
  const b = require("./node_modules/@node-llama-cpp/linux-x64/package.json").version;
  process.exit(a === want && b === want ? 0 : 1);' 2>/dev/null; then
  echo "node-llama-cpp 3.21.1 already installed"
  exit 0
fi
npm ci --omit=optional --ignore-scripts --no-audit --no-fund
