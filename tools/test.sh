#!/usr/bin/env bash
# The whole test suite: install what is missing, build Release (the build type users type) with
# -Werror, run every test with CTest (clang-tidy included: `tidy_check`, label lint); then build
# again with AddressSanitizer + UndefinedBehaviorSanitizer and run every test under them; then the
# tests of concurrent code under ThreadSanitizer; then the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export KVPR_REQUIRE_GPT2_VOCAB=1
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPR_WERROR=ON >/dev/null
ninja -C build
KVPR_TIDY_JOBS="$jobs" ctest --test-dir build --output-on-failure -j "$jobs"

if [ "${KVPR_SKIP_SANITIZERS:-0}" != 1 ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVPR_CUDA=OFF \
        -DKVPR_SANITIZE=address,undefined -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DKVPR_WERROR=ON >/dev/null
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  LSAN_OPTIONS=suppressions="$PWD/tests/lsan.supp" \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

# ThreadSanitizer over the tests of concurrent code (label tsan, target tsan_tests: the list is in
# tests/CMakeLists.txt). OpenBLAS's own threads are not instrumented: one thread keeps TSan's view
# whole. Reports in third-party libraries are suppressed narrowly in tests/tsan.supp.
if [ "${KVPR_SKIP_TSAN:-0}" != 1 ]; then
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVPR_CUDA=OFF \
        -DKVPR_SANITIZE=thread -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DKVPR_WERROR=ON >/dev/null
  ninja -C build-tsan tsan_tests
  # Every report (of the tests and of the daemons they start) goes to a file under $tsan_logs and
  # fails the stage; a case that fails only on time (TSan runs 5-15x slower) is retried.
  # UCX_MEM_MMAP_HOOK_MODE=none: UCX's mmap/madvise hooks run in exiting threads after TSan has
  # torn down their state, and crash.
  tsan_logs=$(mktemp -d)
  tsan_failed=0
  OPENBLAS_NUM_THREADS=1 UCX_MEM_MMAP_HOOK_MODE=none \
  TSAN_OPTIONS="second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp:log_path=$tsan_logs/report" \
    ctest --test-dir build-tsan -L tsan --output-on-failure -j "$jobs" --repeat until-pass:3 ||
    tsan_failed=1
  if compgen -G "$tsan_logs/report*" >/dev/null; then
    cat "$tsan_logs"/report*
    echo "ThreadSanitizer reported the races above"
    tsan_failed=1
  fi
  rm -rf "$tsan_logs"
  [ "$tsan_failed" = 0 ]
fi

# libFuzzer (clang): every message decoder, from seed corpora of valid messages, for a bounded time.
if [ "${KVPR_SKIP_FUZZ:-0}" != 1 ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DKVPR_CUDA=OFF -DKVPR_FUZZ=ON \
        -DKVPR_WERROR=OFF >/dev/null
  fuzzers=(fuzz_worker_request fuzz_kvstore_request fuzz_planner_request fuzz_gateway_request)
  ninja -C build-fuzz fuzz_seeds "${fuzzers[@]}"
  corpus=$(mktemp -d)
  build-fuzz/tests/fuzz/fuzz_seeds "$corpus"
  for f in "${fuzzers[@]}"; do
    seeds="$corpus/$(echo "$f" | sed 's/fuzz_\(.*\)_request/\1/')"
    echo "fuzzing $f for ${KVPR_FUZZ_SECONDS:-30} s"
    if ! LSAN_OPTIONS=suppressions=tests/lsan.supp build-fuzz/tests/fuzz/"$f" \
         -max_total_time="${KVPR_FUZZ_SECONDS:-30}" -rss_limit_mb=4096 -timeout=10 \
         -artifact_prefix="$corpus/" "$seeds" > "$corpus/$f.log" 2>&1; then
      tail -40 "$corpus/$f.log"
      echo "fuzzer $f found a failure"
      exit 1
    fi
    grep -E "^Done" "$corpus/$f.log"
  done
  rm -rf "$corpus"
fi
