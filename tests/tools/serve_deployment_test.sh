#!/usr/bin/env bash
# Serving from a node deployment: `kvpr up` with two workers and a kvpr-gateway in front of them.
# The official OpenAI client drives the gateway; concurrent requests are routed to both workers;
# a worker SIGKILLed mid-stream ends that stream with an error event within 3 s and the next
# request is served by the other worker; `kvpr down` stops all six processes.
# usage: serve_deployment_test.sh KVPR SOURCE_DIR
set -euo pipefail
kvpr="$1"
source_dir="$2"
work=$(mktemp -d)
run_dir="$work/run"
export KVPR_KEYS="$run_dir/keys"  # kvpr up makes the keys; clients use them
cleanup() {
  [ -f "$run_dir/deployment.json" ] && "$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for l in "$run_dir"/*.log; do echo "--- $l"; tail -n 8 "$l"; done; exit 1; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }
metric() {  # metric PORT NAME: the sum of a series' samples
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s += $2} END {print s + 0}'
}

"$kvpr" gen-model --arch opt --preset opt-125m --layers 2 --out "$work/model" --quiet > /dev/null
# A slow emulated link: a long request decodes for seconds, long enough to kill its worker.
"$kvpr" up --model "$work/model" --workers 2 --planners 1 --run-dir "$run_dir" --threads 1 \
  --emulate-link-gbps 0.01 > "$work/up.json"
url=$(field 'd["http"]' "$work/up.json")
[ "$(field 'len(d["services"])' "$work/up.json")" = 5 ] || fail "expected 5 services"
curl -sf "$url/health" | grep -q '"ok"' || fail "/health is not ok"
model=$(basename "$work/model")

modules="$source_dir/.cache/npm/node_modules"
if command -v node >/dev/null && [ -d "$modules/openai" ]; then
  NODE_PATH="$modules" node "$source_dir/tests/gateway/openai_client.js" "$url" "$model" \
    || fail "the OpenAI client's checks against the deployment"
elif [ "${KVPR_REQUIRE_OPENAI_CLIENT:-0}" = 1 ]; then
  fail "node or $modules/openai missing (tools/install-deps.sh installs it)"
else
  echo "SKIP (visible): the OpenAI client part: node or $modules/openai missing"
fi

# Eight requests at once: the gateway routes by free room, so both workers serve some.
w0=$(field '[s for s in d["services"] if s["name"] == "worker-0"][0]["metrics_port"]' "$work/up.json")
w1=$(field '[s for s in d["services"] if s["name"] == "worker-1"][0]["metrics_port"]' "$work/up.json")
before0=$(metric "$w0" kvpr_requests_total)
before1=$(metric "$w1" kvpr_requests_total)
pids=()
for i in 1 2 3 4 5 6 7 8; do
  curl -sf "$url/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"prompt\": \"Routing $i\", \"max_tokens\": 6}" > "$work/r$i.json" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent request failed"; done
after0=$(metric "$w0" kvpr_requests_total)
after1=$(metric "$w1" kvpr_requests_total)
python3 -c "import sys; a=float(sys.argv[2])-float(sys.argv[1]); b=float(sys.argv[4])-float(sys.argv[3]); sys.exit(0 if a > 0 and b > 0 and a + b == 8 else 1)" \
  "$before0" "$after0" "$before1" "$after1" \
  || fail "requests per worker: $before0 -> $after0 and $before1 -> $after1 (both should serve)"
echo "ok   eight concurrent requests served by both workers"

# A client that goes away mid-stream: the gateway cancels its request, the worker frees its
# sequence, and the deployment's kvstore holds nothing any more.
kv_port=$(field "[s for s in d['services'] if s['name'] == 'kvstore'][0]['metrics_port']" "$work/up.json")
curl -sN "$url/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"prompt\": \"Going away\", \"max_tokens\": 1500, \"stream\": true}" \
  > "$work/gone.txt" &
reader=$!
for _ in $(seq 200); do grep -q '"text"' "$work/gone.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '"text"' "$work/gone.txt" || fail "the stream sent no token"
[ "$(metric "$kv_port" kvpr_kvstore_used_bytes)" != 0 ] || fail "the kvstore holds nothing mid-stream"
kill "$reader"
wait "$reader" 2>/dev/null || true
for _ in $(seq 100); do [ "$(metric "$kv_port" kvpr_kvstore_used_bytes)" = 0 ] && break; sleep 0.05; done
[ "$(metric "$kv_port" kvpr_kvstore_used_bytes)" = 0 ] \
  || fail "the kvstore still holds $(metric "$kv_port" kvpr_kvstore_used_bytes) bytes 5 s after the client left"
echo "ok   a client gone mid-stream: its sequence left the deployment's kvstore"

# A worker killed mid-stream.
curl -sN "$url/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"prompt\": \"A long one\", \"max_tokens\": 1500, \"stream\": true}" \
  > "$work/stream.txt" &
reader=$!
for _ in $(seq 200); do grep -q '"text"' "$work/stream.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '"text"' "$work/stream.txt" || fail "the stream sent no token"
victim=""
for _ in $(seq 40); do  # the running gauge is set after each step: it may lag the first token
  for name in worker-0 worker-1; do
    port=$(field "[s for s in d['services'] if s['name'] == '$name'][0]['metrics_port']" "$work/up.json")
    [ "$(metric "$port" kvpr_running_sequences)" != 0 ] && victim=$name
  done
  [ -n "$victim" ] && break
  sleep 0.05
done
[ -n "$victim" ] || fail "no worker runs the stream"
pid=$(field "[s for s in d['services'] if s['name'] == '$victim'][0]['pid']" "$work/up.json")
start=$(date +%s%N)
kill -KILL "$pid"
wait "$reader" || true
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
grep -q '^data: {"error"' "$work/stream.txt" || fail "no error event after the worker died: $(tail -c 300 "$work/stream.txt")"
grep -q '^data: \[DONE\]' "$work/stream.txt" || fail "the stream did not end"
[ "$elapsed_ms" -lt 3000 ] || fail "the error event took $elapsed_ms ms"
echo "ok   $victim killed mid-stream: error event and end of stream after $elapsed_ms ms"
curl -sf "$url/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"prompt\": \"After the fault\", \"max_tokens\": 4}" > "$work/after.json" \
  || fail "the request after the fault failed"
field 'd["usage"]["completion_tokens"]' "$work/after.json" | grep -qx 4 || fail "$(cat "$work/after.json")"
echo "ok   the next request was served by the surviving worker"

"$kvpr" down --run-dir "$run_dir" > "$work/down.txt"
grep -q "of 5" "$work/down.txt" || fail "$(cat "$work/down.txt")"
echo "PASS"
