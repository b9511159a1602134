#!/usr/bin/env bash
# The cross-host path: the kvstore daemon in one network namespace, a planner and a worker in
# another, joined by a veth pair, with UCX_TLS=tcp so that rows really travel as ucp_get/ucp_put
# over TCP (a namespace alone does not stop UCX from using shared memory). The worker's outputs
# are bit-identical to the embedded run. Needs root and `ip netns`; skips (exit 77) otherwise.
set -euo pipefail
kvpr="$1"
bindir="$(dirname "$kvpr")"
here="$(cd "$(dirname "$0")" && pwd)"
model="$here/../data/golden/models/opt-2l-h64"
if [ "$(id -u)" -ne 0 ] || ! command -v ip > /dev/null; then
  echo "SKIP: needs root and iproute2 (ip netns) for a second network namespace"
  exit 77
fi
suffix=$$
ns1="kvpr-a-$suffix"
ns2="kvpr-b-$suffix"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -9 "$pid" 2> /dev/null || true; done
  ip netns del "$ns1" 2> /dev/null || true
  ip netns del "$ns2" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$ns1" 2> "$work/err"; then
  echo "SKIP: cannot create a network namespace here: $(cat "$work/err")"
  exit 77
fi
ip netns add "$ns2"
ip link add "va$suffix" type veth peer name "vb$suffix"
ip link set "va$suffix" netns "$ns1"
ip link set "vb$suffix" netns "$ns2"
ip -n "$ns1" addr add 10.77.0.1/24 dev "va$suffix"
ip -n "$ns2" addr add 10.77.0.2/24 dev "vb$suffix"
for ns in "$ns1" "$ns2"; do
  ip -n "$ns" link set lo up
done
ip -n "$ns1" link set "va$suffix" up
ip -n "$ns2" link set "vb$suffix" up

wait_file() {
  for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "FAIL: $1 never appeared"; cat "$work"/*.log; exit 1
}
export UCX_TLS=tcp
# The kvstore listens beyond loopback: every service and client authenticates with CURVE.
"$kvpr" keygen --out "$work/keys" --name worker --name client > /dev/null
export KVPR_KEYS="$work/keys"
ip netns exec "$ns1" "$bindir/kvpr-kvstore" --listen tcp://10.77.0.1:0 --metrics-port -1 \
  --capacity 256M --ready-file "$work/kvstore.json" > "$work/kvstore.log" 2>&1 &
pids+=($!)
wait_file "$work/kvstore.json"
kv=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['endpoint'])" "$work/kvstore.json")
# UCX listens only on the interface of the daemon's endpoint: not on the namespace's loopback.
listening=$(ip netns exec "$ns1" ss -Hltnp | grep "pid=${pids[0]}," | awk '{print $4}' || true)
[ -n "$listening" ] || { echo "FAIL: no listening socket of the kvstore (pid ${pids[0]})"; exit 1; }
elsewhere=$(echo "$listening" | grep -v '^10\.77\.0\.1:' || true)
[ -z "$elsewhere" ] || { echo "FAIL: the kvstore listens on $elsewhere too"; exit 1; }
echo "ok   the kvstore's sockets (ZeroMQ and UCX) listen only on 10.77.0.1: $(tr "\n" " " <<< "$listening")"
ip netns exec "$ns2" "$bindir/kvpr-planner" --listen tcp://127.0.0.1:0 --metrics-port -1 \
  --ready-file "$work/planner.json" > "$work/planner.log" 2>&1 &
pids+=($!)
wait_file "$work/planner.json"
pl=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['endpoint'])" "$work/planner.json")
ip netns exec "$ns2" "$bindir/kvpr-worker" --model "$model" --listen tcp://127.0.0.1:0 \
  --kvstore "$kv" --planner "$pl" --threads 1 --metrics-port -1 \
  --ready-file "$work/worker.json" > "$work/worker.log" 2>&1 &
pids+=($!)
wait_file "$work/worker.json"
grep -q "not zero-copy" "$work/worker.log" \
  || { echo "FAIL: the worker mapped the store zero-copy across namespaces"; cat "$work/worker.log"; exit 1; }
w=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['endpoint'])" "$work/worker.json")
for args in "--policy kvpr --split 3" "--policy transfer" "--policy recompute"; do
  # shellcheck disable=SC2086
  "$kvpr" run --model "$model" --prompt-tokens 2,31,45,60,61,62,63,64,65 --prompt-tokens 2,7 \
    --max-new-tokens 12 $args --threads 1 --quiet --logits-out "$work/embedded.npy" > /dev/null
  # shellcheck disable=SC2086
  ip netns exec "$ns2" "$kvpr" run --model "$model" --prompt-tokens 2,31,45,60,61,62,63,64,65 \
    --prompt-tokens 2,7 --max-new-tokens 12 $args --quiet --connect "$w" \
    --logits-out "$work/remote.npy" > /dev/null
  cmp "$work/embedded.npy" "$work/remote.npy" || { echo "FAIL ($args): logits differ"; exit 1; }
  echo "ok   kvstore in another namespace over UCX tcp ($args): logits bit-identical to embedded"
done
