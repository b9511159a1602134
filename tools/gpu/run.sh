#!/usr/bin/env bash
# The device half of tools/gpu-check: runs on the machine with the GPU, from the repository root
# of the carried working tree, using the bundle that tools/gpu/bundle.sh made (binaries + the
# shared libraries they need, minus glibc and CUDA). Writes everything under OUT_DIR:
#   gpu-check.log          this script's whole output
#   status.txt             one line per step: name, exit code, seconds
#   env/                   nvidia-smi, nvcc and glibc versions, ldd of every bundled binary
#   tests/NAME.{log,json}  the CUDA backend's GoogleTest binaries (gtest JSON reports)
#   profile/probe.{txt,json}  copy bandwidth (pageable / pinned / registered), cuBLAS rates, and
#                             the copy rate beside running GEMMs
#   bench/decode.{txt,json}   kvpr-bench-decode --backend cuda, b ∈ {1,8,32}, s ∈ {1024,4096}
#   bench/hf_peer.json        the peer: transformers on the same checkpoint with its KV cache
#                             offloaded (tools/gpu/hf_peer.py), and kvpr-run-peer.json: kvpr run's
#                             greedy tokens on it, for the agreement check
#   summary.md             tables made from the above (tools/gpu/summarize.py)
#   gpu-check.tar.gz       all of the above in one archive: the session tool brings back at most
#                          8 files, 2 folders down, so the tree itself is written to a work folder
#                          (KVPR_GPU_CHECK_WORK, default $TMPDIR/kvpr-gpu-check) and only the
#                          archive, summary.md, status.txt and gpu-check.log land in OUT_DIR
# Every step has a timeout inside one overall budget (default 540 s, KVPR_GPU_CHECK_BUDGET_S), so
# the whole run stays under 9.5 minutes; a step that fails does not stop the ones after it, and the
# steps named in KVPR_GPU_CHECK_SKIP (space-separated) are not run (a rerun of what failed). The
# probe is built here with nvcc and needs no library of this project, so the device profile is
# recorded even when the bundled binaries cannot start on this machine.
#
# Usage: tools/gpu/run.sh OUT_DIR [BUNDLE_DIR]   (default BUNDLE_DIR build-gpu/bundle; when it is
# absent and BUNDLE_DIR.tar.xz is there, the archive is unpacked first)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ $# -ge 1 ] || { echo "usage: tools/gpu/run.sh OUT_DIR [BUNDLE_DIR]" >&2; exit 2; }
dest=$(realpath -m "$1")
out=$(realpath -m "${KVPR_GPU_CHECK_WORK:-${TMPDIR:-/tmp}/kvpr-gpu-check}")
rm -rf "$out"
bundle=$(realpath -m "${2:-build-gpu/bundle}")
budget=${KVPR_GPU_CHECK_BUDGET_S:-540}
if [ ! -d "$bundle" ] && [ -f "$bundle.tar.xz" ]; then
  tar xJf "$bundle.tar.xz" -C "$(dirname "$bundle")" || { echo "cannot unpack $bundle.tar.xz" >&2; exit 1; }
fi
mkdir -p "$out/env" "$out/tests" "$out/profile" "$out/bench"
: > "$out/status.txt"
t_start=$(date +%s)
failures=0

# step NAME LIMIT_S CMD...: runs CMD with a timeout of min(LIMIT_S, what is left of the budget).
step() {
  local name=$1 limit=$2
  shift 2
  if [[ " ${KVPR_GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
    echo "== $name: skipped (KVPR_GPU_CHECK_SKIP)"
    echo "$name not-run 0" >> "$out/status.txt"
    return 0
  fi
  local left=$((budget - ($(date +%s) - t_start)))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped (budget of ${budget}s spent)"
    echo "$name skipped 0" >> "$out/status.txt"
    failures=$((failures + 1))
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (timeout ${limit}s)"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name $rc $(($(date +%s) - t0))" >> "$out/status.txt"
  [ "$rc" = 0 ] || { echo "== $name: exit code $rc"; failures=$((failures + 1)); }
  return "$rc"
}

main() {
  echo "kvpr gpu-check on $(uname -n), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  { nvidia-smi; nvidia-smi -q | head -80; } > "$out/env/nvidia-smi.txt" 2>&1 || true
  head -20 "$out/env/nvidia-smi.txt"
  { /usr/local/cuda/bin/nvcc --version || nvcc --version; } > "$out/env/nvcc.txt" 2>&1 || true
  { ldd --version | head -1; uname -a; nproc; free -g; } > "$out/env/system.txt" 2>&1 || true
  cat "$out/env/nvcc.txt" "$out/env/system.txt"

  # The CUDA runtime and cuBLAS the bundle expects (libcudart.so.13, libcublas.so.13).
  local cuda_dirs="" d sp
  local candidates=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
  for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    candidates+=("$sp"/nvidia/*/lib)
  done
  for d in "${candidates[@]}"; do
    if [ -e "$d/libcublas.so.13" ] || [ -e "$d/libcudart.so.13" ]; then cuda_dirs="$cuda_dirs:$d"; fi
  done
  export LD_LIBRARY_PATH="$bundle/lib${cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export KVPR_TEST_DATA="$root/tests/data"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

  step probe-build 120 /usr/local/cuda/bin/nvcc -std=c++17 -O2 -arch=sm_90 \
    tools/gpu/cuda_probe.cu -lcublas -o "$out/profile/cuda_probe" &&
    step probe 120 bash -c "'$out/profile/cuda_probe' '$out/profile/probe.json' > '$out/profile/probe.txt' 2>&1; rc=\$?; cat '$out/profile/probe.txt'; exit \$rc"

  local bundle_ok=1
  if [ ! -x "$bundle/bin/kernels_cuda_host_test" ]; then
    echo "== no bundle at $bundle (run tools/gpu-check bundle on the build machine and carry it)"
    bundle_ok=0
  else
    cat "$bundle/MANIFEST"
    for b in "$bundle"/bin/*; do echo "## $b"; ldd "$b"; done > "$out/env/ldd.txt" 2>&1
    if grep -q "not found" "$out/env/ldd.txt"; then
      echo "== bundled binaries miss libraries here:"
      grep "not found" "$out/env/ldd.txt" | sort -u
    fi
    step bundle-starts 60 "$bundle/bin/kernels_cuda_host_test" \
      --gtest_output="json:$out/tests/kernels_cuda_host_test.json" || bundle_ok=0
  fi

  if [ "$bundle_ok" = 1 ]; then
    # The model suites run on every backend: here only their device cases (not cpu_*), as in
    # tests/worker/CMakeLists.txt.
    local t filter
    for t in kernels_cuda_diff_test worker_golden_test worker_policy_test worker_throughput_test \
      worker_batcher_test; do
      filter='*'
      [ "$t" = kernels_cuda_diff_test ] || filter='-*/cpu_*:Tolerances.*'
      [ "$t" = worker_batcher_test ] && filter='Backends/*-*/cpu_*'
      step "$t" 100 bash -c "'$bundle/bin/$t' --gtest_filter='$filter' --gtest_output='json:$out/tests/$t.json' > '$out/tests/$t.log' 2>&1; rc=\$?; grep -E '^\[ +(PASSED|SKIPPED|FAILED) +\] [0-9]+ test|^\[  FAILED  \] [A-Z]|Failure|no usable CUDA device|worst' '$out/tests/$t.log' | sort | uniq -c | sort -rn | head -40; exit \$rc"
    done
    step kvpr-run-cuda 60 bash -c "'$bundle/bin/kvpr' run --model '$root/tests/data/golden/models/opt-2l-h64' --prompt-tokens 2,31,45 --max-new-tokens 8 --backend cuda --quiet --json > '$out/tests/kvpr-run-cuda.json' 2>&1; rc=\$?; cat '$out/tests/kvpr-run-cuda.json'; exit \$rc"
    # The benchmark generates its checkpoint into $peer (OPT-6.7B shape, 2 layers, fp16), off
    # OUT_DIR (1.2 GB); the peer and kvpr run load the same one.
    local peer="${TMPDIR:-/tmp}/kvpr-peer-opt-6.7b"
    step decode-bench 300 bash -c "'$bundle/bin/kvpr-bench-decode' --backend cuda --batch 1,8,32 --context 1024,4096 --steps 5 --warmup 1 --model '$peer' --json '$out/bench/decode.json' > '$out/bench/decode.txt' 2> '$out/bench/decode.stderr'; rc=\$?; cat '$out/bench/decode.txt'; tail -5 '$out/bench/decode.stderr'; exit \$rc"
    if [ -f "$peer/config.json" ]; then
      step kvpr-run-peer 60 bash -c "'$bundle/bin/kvpr' run --model '$peer' --prompt-tokens 2,31,45 --max-new-tokens 8 --backend cuda --quiet --json > '$out/bench/kvpr-run-peer.json' 2>&1; rc=\$?; head -c 600 '$out/bench/kvpr-run-peer.json'; echo; exit \$rc"
      step hf-peer 180 python3 tools/gpu/hf_peer.py --model "$peer" --json "$out/bench/hf_peer.json" \
        --batch 1,8,32 --context 1024,4096 --steps 5 --prompt-tokens 2,31,45 --new-tokens 8
      # The planner's chosen split against a measured sweep of l on the device, with a Chrome
      # trace of the chosen point's steps (both queues, device timestamps).
      local shape
      for shape in "8 4096" "32 1024"; do
        set -- $shape
        step "sweep-b$1-s$2" 90 "$bundle/bin/kvpr" bench --model "$peer" --backend cuda --batch "$1" \
          --context "$2" --sweep --points 9 --steps 3 --confirm 1 --quiet \
          --json "$out/bench/sweep-b$1-s$2.json" --plot "$out/bench/sweep-b$1-s$2.png" \
          --trace "$out/bench/trace-b$1-s$2.json"
      done
      # The copy path, one knob at a time: the store unregistered (pinned staging), store blocks
      # of 1024 tokens, pipelined chunks of 128 and 2048 rows.
      local variant name
      for variant in "staged --no-register" "block1024 --block-tokens 1024" "chunk128 --chunk 128" \
        "chunk2048 --chunk 2048"; do
        name=${variant%% *}
        step "decode-$name" 60 bash -c "'$bundle/bin/kvpr-bench-decode' --backend cuda --batch 1,8,32 --context 1024,4096 --steps 5 --warmup 1 --model '$peer' --policies transfer,kvpr-pipelined,resident ${variant#* } --json '$out/bench/decode-$name.json' > '$out/bench/decode-$name.txt' 2>&1; rc=\$?; tail -4 '$out/bench/decode-$name.txt'; exit \$rc"
      done
    fi
  else
    echo "== the bundled binaries do not run here: only the nvcc-built probe ran (see env/ldd.txt)"
    failures=$((failures + 1))
  fi

  step summary 30 bash -c "python3 tools/gpu/summarize.py '$out' > '$out/summary.md'; rc=\$?; cat '$out/summary.md'; exit \$rc"
  echo "gpu-check: $failures failed step(s) in $(($(date +%s) - t_start)) s; everything is under $out"
  [ "$failures" = 0 ]
}

main 2>&1 | tee "$out/gpu-check.log"
rc=${PIPESTATUS[0]}
mkdir -p "$dest"
rm -f "$out/profile/cuda_probe"
tar czf "$dest/gpu-check.tar.gz" -C "$(dirname "$out")" "$(basename "$out")"
cp "$out/summary.md" "$out/status.txt" "$out/gpu-check.log" "$dest/" 2>/dev/null
exit "$rc"
