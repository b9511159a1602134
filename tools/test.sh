#!/usr/bin/env bash
# The whole test suite: install what is missing, build, run every test with CTest; then build
# again with AddressSanitizer + UndefinedBehaviorSanitizer and run every test under them.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export KVPR_REQUIRE_GPT2_VOCAB=1
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build
ctest --test-dir build --output-on-failure -j "$jobs"

if [ "${KVPR_SKIP_SANITIZERS:-0}" != 1 ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVPR_CUDA=OFF \
        -DKVPR_SANITIZE=address,undefined -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" >/dev/null
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi
