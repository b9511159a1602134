#!/usr/bin/env bash
# A node deployment watched by a real Prometheus: `kvpr up` (kvstore, 2 planners, 2 workers, a
# gateway), deploy/prometheus/scrape-config.py writes the scrape config, prometheus (loopback, free
# port, 1 s scrapes) loads it with deploy/prometheus/rules, a few `kvpr run --connect` and a few
# completions through the gateway's HTTP API (curl; one streamed) generate tokens; then
# prometheus_checks.py asserts through the query API (see there). `kvpr down` and the
# prometheus process are stopped on every exit.
#   integration_test.sh KVPR REPO
set -euo pipefail
kvpr="$1"
repo="$(cd "$2" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tools.sh
source "$here/tools.sh"
need_prometheus_tools || exit 77

work=$(mktemp -d)
run="$work/run"
export KVPR_KEYS="$run/keys"  # kvpr up makes the keys; clients use them
prom_pid=""
cleanup() {
  local rc=$?
  if [ -n "$prom_pid" ] && kill -0 "$prom_pid" 2> /dev/null; then
    kill -TERM "$prom_pid" 2> /dev/null || true
    for _ in $(seq 50); do kill -0 "$prom_pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$prom_pid" 2> /dev/null || true
  fi
  if [ -f "$run/deployment.json" ]; then
    "$kvpr" down --run-dir "$run" --timeout 10 > /dev/null || true
  fi
  if [ $rc -ne 0 ]; then
    for log in "$run"/*.log "$work/prometheus.log"; do
      [ -f "$log" ] && { echo "--- $(basename "$log") (last 15 lines)"; tail -n 15 "$log"; }
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

start=$SECONDS
"$kvpr" gen-model --arch opt --preset opt-125m --layers 2 --out "$work/model" --quiet
# The generated model has a tokenizer, which the gateway needs.
"$kvpr" up --model "$work/model" --workers 2 --planners 2 --gateways 1 --run-dir "$run" --threads 1 > "$work/up.json"
connect=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connect"])' "$run/deployment.json")
http=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$run/deployment.json")
echo "ok   kvpr up: $(python3 -c 'import json,sys; print(", ".join(s["name"] + ":" + str(s["metrics_port"]) for s in json.load(open(sys.argv[1]))["services"]))' "$run/deployment.json")"

"$repo/deploy/prometheus/scrape-config.py" "$run" --interval 1s > /dev/null
promtool check config "$run/prometheus.yml" > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$run/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn > "$work/prometheus.log" 2>&1 &
prom_pid=$!
echo "ok   prometheus on 127.0.0.1:$port (pid $prom_pid)"
checks=(python3 "$here/prometheus_checks.py" --prometheus "http://127.0.0.1:$port"
        --deployment "$run/deployment.json" --repo "$repo" --work "$work" --connect "$connect")
# Counters must have a sample from before the traffic for rate()/increase() to see it.
"${checks[@]}" --wait-up

# Traffic: whole requests over both workers, one batch spread over them.
for prompt in 2,31,45 7,8,9,10 2,31,45; do
  "$kvpr" run --model "$work/model" --prompt-tokens "$prompt" --max-new-tokens 8 \
    --connect "$connect" --quiet > /dev/null
done
"$kvpr" run --model "$work/model" --prompt-tokens 2,31,45 --prompt-tokens 5,6,7,8,9 \
  --max-new-tokens 8 --connect "$connect" --quiet > /dev/null
echo "ok   4 kvpr run --connect requests answered"

# Traffic through the gateway (the served model's name is the checkpoint folder's): whole
# completions, the model list, and one streamed completion that must end with [DONE].
for prompt in "Hello there" "The quick brown fox" "Once upon a time"; do
  curl -sS --fail-with-body --max-time 60 "$http/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"model\", \"prompt\": \"$prompt\", \"max_tokens\": 8}" > "$work/completion.json"
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); assert c["object"] == "text_completion" and c["choices"][0]["finish_reason"] and c["usage"]["completion_tokens"] > 0, c' "$work/completion.json"
done
curl -sS --fail-with-body --max-time 10 "$http/v1/models" > /dev/null
curl -sS --fail-with-body --no-buffer --max-time 60 "$http/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "model", "prompt": "Streaming test", "max_tokens": 8, "stream": true}' > "$work/stream.txt"
python3 - "$work/stream.txt" <<'PY'
import json, sys
events = [l[len("data: "):] for l in open(sys.argv[1]).read().splitlines() if l.startswith("data: ")]
assert events and events[-1] == "[DONE]", events[-3:]
chunks = [json.loads(e) for e in events[:-1]]
assert len(chunks) >= 2 and all(c["object"] == "text_completion" for c in chunks), chunks[:2]
PY
echo "ok   gateway $http: 3 completions, /v1/models and 1 streamed completion answered"

"${checks[@]}"
echo "ok   integration test in $((SECONDS - start)) s"
