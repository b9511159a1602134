#!/usr/bin/env bash
# The newcomer's first command: install what is missing, build, generate an OPT-125m-shaped model
# and run it through every KV policy of the embedded engine.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build kvpr
build/tools/kvpr demo --dir build/demo-opt-125m --preset opt-125m "$@"
