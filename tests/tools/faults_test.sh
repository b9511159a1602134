#!/usr/bin/env bash
# Faults and limits of a node deployment, with real processes: a worker SIGKILLed mid-decode (its
# client gets an error within the deadline, the kvstore's memory returns when the lease expires);
# the kvstore SIGKILLed (workers answer `disconnected`, then recover once it is back); one planner
# replica SIGKILLed (decoding goes on); a request that does not fit the kvstore (`overloaded`, while
# a running sequence on the other worker finishes with the same tokens as alone).
set -euo pipefail
kvpr="$1"
bindir="$(dirname "$kvpr")"
work=$(mktemp -d)
model="$work/model"
run_dir="$work/run"
export KVPR_KEYS="$run_dir/keys"  # kvpr up makes the keys; clients use them
extra_pids=()
cleanup() {
  for pid in "${extra_pids[@]}"; do kill -9 "$pid" 2> /dev/null || true; done
  [ -f "$run_dir/deployment.json" ] && "$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
service() { field "[s for s in d['services'] if s['name'] == '$1'][0]['$2']" "$run_dir/deployment.json"; }
metric() {  # metric PORT NAME: the sum of a series over its labels
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
name = sys.argv[2]
print(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
          if l.startswith(name + "{") or l.startswith(name + " ")))
PY
}
wait_for() {  # wait_for SECONDS COMMAND...: until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
prompt=2,31,45,60,61,62,63,64
# An OPT-125m-shaped model cut to 2 layers: 2048 positions, fp16.
"$kvpr" gen-model --arch opt --preset opt-125m --layers 2 --out "$model" --seed 5 --quiet > /dev/null

# 1. A worker killed mid-decode. The link is emulated slow so that decoding takes a while.
"$kvpr" up --model "$model" --workers 1 --planners 2 --gateways 0 --run-dir "$run_dir" --threads 1 \
  --lease-ms 1500 --emulate-link-gbps 0.002 > /dev/null
kv_port=$(service kvstore metrics_port)
worker=$(service worker-0 endpoint)
before=$(metric "$kv_port" kvpr_kvstore_used_bytes)
start=$SECONDS
set +e
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 400 --quiet \
  --connect "$worker" --timeout 3 > "$work/out.txt" 2> "$work/err.txt" &
client=$!
sleep 2
used_mid=$(metric "$kv_port" kvpr_kvstore_used_bytes)
kill -9 "$(service worker-0 pid)"
wait $client
rc=$?
set -e
elapsed=$((SECONDS - start))
[ $rc -ne 0 ] || { echo "FAIL client of a killed worker exited 0"; exit 1; }
grep -q "disconnected" "$work/err.txt" || { echo "FAIL: $(cat "$work/err.txt")"; exit 1; }
[ $elapsed -le 10 ] || { echo "FAIL client took ${elapsed}s to notice the dead worker"; exit 1; }
[ "$(wc -l < "$work/err.txt")" -eq 1 ] || { cat "$work/err.txt"; exit 1; }
echo "ok   killed worker: client failed in ${elapsed}s with: $(cat "$work/err.txt")"
python3 -c "import sys; assert float(sys.argv[1]) > float(sys.argv[2]), sys.argv[1:]" "$used_mid" "$before"
back() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) == float(sys.argv[2]) else 1)" \
  "$(metric "$kv_port" kvpr_kvstore_used_bytes)" "$before"; }
wait_for 10 back || { echo "FAIL kvstore used bytes did not return to $before"; exit 1; }
expiries=$(metric "$kv_port" kvpr_kvstore_lease_expiries_total)
python3 -c "import sys; assert float(sys.argv[1]) >= 1" "$expiries"
echo "ok   killed worker: kvstore used bytes went $before -> $used_mid -> $before after the lease expired"
"$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null

# 2. The kvstore killed and restarted on the same endpoint; 3. one planner replica killed.
"$kvpr" up --model "$model" --workers 1 --planners 2 --gateways 0 --run-dir "$run_dir" --threads 1 > /dev/null
worker=$(service worker-0 endpoint)
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 8 --quiet --connect "$worker" \
  --logits-out "$work/good.npy" > /dev/null
kv_endpoint=$(service kvstore endpoint)
kill -9 "$(service kvstore pid)"
set +e
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 8 --quiet --connect "$worker" \
  --timeout 10 > /dev/null 2> "$work/err.txt"
rc=$?
set -e
[ $rc -ne 0 ] && grep -q "disconnected" "$work/err.txt" \
  || { echo "FAIL without a kvstore: rc $rc: $(cat "$work/err.txt")"; exit 1; }
echo "ok   kvstore killed: the worker answers: $(cat "$work/err.txt")"
"$bindir/kvpr-kvstore" --listen "$kv_endpoint" --metrics-port -1 > "$work/kvstore2.log" 2>&1 &
extra_pids+=($!)
recovered() {
  "$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 8 --quiet --connect "$worker" \
    --logits-out "$work/again.npy" > /dev/null 2>&1
}
wait_for 20 recovered || { echo "FAIL the worker did not recover after the kvstore came back"; exit 1; }
cmp "$work/good.npy" "$work/again.npy"
echo "ok   kvstore back: the worker recovered and gives the same logits"
kill -9 "$(service planner-0 pid)"
for i in 1 2 3; do
  "$kvpr" run --model "$model" --prompt-tokens "$prompt,$i" --max-new-tokens 8 --quiet --split auto \
    --connect "$worker" --timeout 10 > /dev/null
done
echo "ok   one planner replica killed: three more requests decoded"
"$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null
kill -9 "${extra_pids[@]}" 2> /dev/null || true
wait "${extra_pids[@]}" 2> /dev/null || true
extra_pids=()

# 4. Capacity: a small kvstore; a long request on worker 1 does not fit while worker 0 decodes.
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 60 --quiet --split 4 \
  --threads 1 --emulate-link-gbps 0.02 --logits-out "$work/alone.npy" > /dev/null
"$kvpr" up --model "$model" --workers 2 --planners 1 --gateways 0 --run-dir "$run_dir" --threads 1 \
  --kv-capacity 2097152 --emulate-link-gbps 0.02 > /dev/null
w0=$(service worker-0 endpoint)
w1=$(service worker-1 endpoint)
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 60 --quiet --split 4 \
  --connect "$w0" --logits-out "$work/running.npy" > /dev/null &
client=$!
sleep 1
long=$(python3 -c 'print(",".join(str(5 + i % 400) for i in range(1500)))')
set +e
"$kvpr" run --model "$model" --prompt-tokens "$long" --max-new-tokens 4 --quiet --connect "$w1" \
  > /dev/null 2> "$work/err.txt"
rc=$?
set -e
[ $rc -ne 0 ] && grep -q "overloaded" "$work/err.txt" \
  || { echo "FAIL oversized request: rc $rc: $(cat "$work/err.txt")"; exit 1; }
echo "ok   capacity: $(cat "$work/err.txt")"
wait $client
cmp "$work/alone.npy" "$work/running.npy"
echo "ok   capacity: the running sequence finished with the same logits as alone"
"$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null

# 5. kvpr down while a request decodes: the worker drains it before it exits.
"$kvpr" up --model "$model" --workers 1 --planners 1 --gateways 0 --run-dir "$run_dir" --threads 1 \
  --emulate-link-gbps 0.005 > /dev/null
w0=$(service worker-0 endpoint)
"$kvpr" run --model "$model" --prompt-tokens "$prompt" --max-new-tokens 60 --quiet --split 4 \
  --connect "$w0" --logits-out "$work/drained.npy" > /dev/null 2> "$work/err.txt" &
client=$!
# Down only once the request decodes: its prompt is in the kvstore (a fixed sleep raced with a
# client slow to start on a loaded machine).
kv_port=$(service kvstore metrics_port)
decoding() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" \
  "$(metric "$kv_port" kvpr_kvstore_used_bytes)"; }
wait_for 30 decoding || { echo "FAIL the request never reached the worker"; exit 1; }
[ ! -f "$work/drained.npy" ] || { echo "FAIL the request finished before kvpr down began"; exit 1; }
"$kvpr" down --run-dir "$run_dir" --timeout 60 > "$work/down.txt"
wait $client || { echo "FAIL the request in flight at kvpr down failed: $(cat "$work/err.txt")"; exit 1; }
cmp "$work/alone.npy" "$work/drained.npy"
grep -q "stopped 3 of 3" "$work/down.txt"
echo "ok   kvpr down: the request in flight finished (same logits) before the worker exited"
