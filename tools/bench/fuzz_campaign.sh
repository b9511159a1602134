#!/usr/bin/env bash
# An offline fuzzing campaign: every message decoder's libFuzzer target, from the seed corpora of
# valid messages, for SECONDS each; writes OUT/summary.json and OUT/summary.md with each target's
# runs, coverage (libFuzzer's cov/ft), corpus size and findings (crash, leak or timeout inputs are
# kept under OUT/artifacts/).
# usage: fuzz_campaign.sh OUT [SECONDS=600]   (builds build-fuzz with clang first)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(realpath -m "$1")
seconds=${2:-600}
mkdir -p "$out/artifacts"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DKVPR_CUDA=OFF -DKVPR_FUZZ=ON \
  -DKVPR_WERROR=OFF >/dev/null
fuzzers=(fuzz_worker_request fuzz_kvstore_request fuzz_planner_request fuzz_gateway_request)
ninja -C build-fuzz fuzz_seeds "${fuzzers[@]}" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build-fuzz/tests/fuzz/fuzz_seeds "$work"
echo "[" >"$out/summary.json"
first=1
for f in "${fuzzers[@]}"; do
  corpus="$work/$(echo "$f" | sed 's/fuzz_\(.*\)_request/\1/')"
  seeds=$(find "$corpus" -type f | wc -l)
  echo "fuzzing $f for $seconds s from $seeds seeds"
  status=0
  LSAN_OPTIONS=suppressions=tests/lsan.supp build-fuzz/tests/fuzz/"$f" \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$f-" "$corpus" >"$work/$f.log" 2>&1 || status=$?
  last=$(grep -E "^#[0-9]+" "$work/$f.log" | tail -1)
  runs=$(grep -E "^stat::number_of_executed_units" "$work/$f.log" | awk '{print $2}')
  cov=$(echo "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  corp=$(find "$corpus" -type f | wc -l)
  findings=$(find "$out/artifacts" -name "$f-*" -type f | wc -l)
  [ $first = 1 ] || echo "," >>"$out/summary.json"
  first=0
  printf '  {"target": "%s", "seconds": %s, "runs": %s, "cov": %s, "ft": %s, "seeds": %s, "corpus": %s, "findings": %s, "exit": %s}' \
    "$f" "$seconds" "${runs:-0}" "${cov:-0}" "${ft:-0}" "$seeds" "$corp" "$findings" "$status" \
    >>"$out/summary.json"
  tail -15 "$work/$f.log" >"$out/$f.tail.txt"
done
echo "" >>"$out/summary.json"
echo "]" >>"$out/summary.json"
python3 - "$out" <<'PY'
import json, sys, platform, os
out = sys.argv[1]
rows = json.load(open(os.path.join(out, "summary.json")))
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("# Fuzzing campaign: every message decoder\n\n")
    f.write(f"libFuzzer (clang, ASan + UBSan), {os.cpu_count()} CPUs, {platform.node()}; "
            "seed corpora of valid messages from `fuzz_seeds`; `tools/bench/fuzz_campaign.sh`.\n\n")
    f.write("| target | seconds | runs | cov | ft | seeds | corpus after | findings |\n")
    f.write("|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['target']} | {r['seconds']} | {r['runs']} | {r['cov']} | {r['ft']} | "
                f"{r['seeds']} | {r['corpus']} | {r['findings']} |\n")
    bad = [r["target"] for r in rows if r["findings"] or r["exit"]]
    f.write("\nFindings: " + (", ".join(bad) if bad else "none") + ".\n")
PY
cat "$out/summary.md"
