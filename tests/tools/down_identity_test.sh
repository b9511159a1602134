#!/usr/bin/env bash
# `kvpr down` signals only the processes `kvpr up` started: a deployment.json whose pid now names
# an unrelated process (a `sleep` of this test, recorded with another start time) leaves that
# process running and says so in one line naming it; a pid whose start time matches is stopped.
set -euo pipefail
kvpr="$1"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Field 22 of /proc/PID/stat: the start in clock ticks since boot (fields counted after the ')').
start_time() { sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f20; }

sleep 60 & stranger=$!
sleep 60 & ours=$!
pids+=("$stranger" "$ours")
real=$(start_time "$stranger")
cat > "$work/deployment.json" << JSON
{"connect": "", "run_dir": "$work", "services": [
  {"name": "worker-0", "role": "worker", "pid": $stranger, "start_time": $((real + 1))},
  {"name": "kvstore", "role": "kvstore", "pid": $ours, "start_time": $(start_time "$ours")}]}
JSON
"$kvpr" down --run-dir "$work" --timeout 5 > "$work/down.txt" 2> "$work/down.err"

kill -0 "$stranger" 2> /dev/null || { echo "FAIL kvpr down killed pid $stranger, not its process"; exit 1; }
grep -q "pid $stranger is no longer worker-0.*left alone" "$work/down.err" \
  || { echo "FAIL no note naming the reused pid:"; cat "$work/down.err"; exit 1; }
[ "$(wc -l < "$work/down.err")" -eq 1 ] || { echo "FAIL more than one line:"; cat "$work/down.err"; exit 1; }
for _ in $(seq 50); do kill -0 "$ours" 2> /dev/null || break; sleep 0.1; done
if kill -0 "$ours" 2> /dev/null && [ "$(sed 's/.*) //' "/proc/$ours/stat" | cut -d' ' -f1)" != Z ]; then
  echo "FAIL kvpr down left pid $ours running though its start time matched"; exit 1
fi
grep -q "stopped 1 of 2 services" "$work/down.txt" || { cat "$work/down.txt"; exit 1; }
echo "ok   kvpr down: a reused pid is left alone and named; the recorded process is stopped"
