#!/usr/bin/env bash
# The node deployment as a user runs it: `kvpr up` starts a kvstore daemon, two planner replicas
# and two workers as processes on loopback; every golden case run through `kvpr run --connect`
# gives logits bit-identical to the embedded run with the same backend flags (--threads 1), under kvpr and a fixed split; a batch spread over
# both workers is bit-identical to the same sequences run embedded; the services' /metrics moved;
# `kvpr down` stops every process.
set -euo pipefail
kvpr="$1"
here="$(cd "$(dirname "$0")" && pwd)"
golden="$here/../data/golden"
work=$(mktemp -d)
run_dir="$work/run"
export KVPR_KEYS="$run_dir/keys"  # kvpr up makes the keys; clients use them
cleanup() {
  [ -f "$run_dir/deployment.json" ] && "$kvpr" down --run-dir "$run_dir" --timeout 5 > /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($1)" "$2"; }

for model in opt-2l-h64 opt-2l-h64-fp16 llama-2l-h64-mha; do
  "$kvpr" up --model "$golden/models/$model" --workers 2 --planners 2 --gateways 0 --run-dir "$run_dir" \
    --threads 1 > "$work/up.json"
  json 'len([s for s in d["services"] if s["role"] == "worker"]) == 2 and len(d["services"]) == 5' \
    "$work/up.json" | grep -qx True
  connect=$(json 'd["connect"]' "$work/up.json")
  first=${connect%%,*}
  cases=$(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
for c in m["cases"]:
    if c["id"].split("/")[0] == sys.argv[2]:
        print(c["id"].split("/")[1], ",".join(map(str, c["prompt_tokens"])), c["decode_steps"])
' "$golden/manifest.json" "$model")
  while read -r name prompt steps; do
    for args in "--policy kvpr --split auto" "--policy kvpr --split 3" "--policy transfer" \
      "--policy kvpr --split 2:5"; do
      # shellcheck disable=SC2086
      "$kvpr" run --model "$golden/models/$model" --prompt-tokens "$prompt" --max-new-tokens "$steps" \
        $args --threads 1 --quiet --json --logits-out "$work/embedded.npy" > "$work/embedded.json"
      # shellcheck disable=SC2086
      "$kvpr" run --model "$golden/models/$model" --prompt-tokens "$prompt" --max-new-tokens "$steps" \
        $args --quiet --json --logits-out "$work/remote.npy" --connect "$first" > "$work/remote.json"
      cmp "$work/embedded.npy" "$work/remote.npy" \
        || { echo "FAIL $model/$name ($args): logits differ"; exit 1; }
      [ "$(json 'd["tokens"]' "$work/embedded.json")" = "$(json 'd["tokens"]' "$work/remote.json")" ]
      [ "$(json 'd.get("host_split")' "$work/embedded.json")" = \
        "$(json 'd.get("host_split")' "$work/remote.json")" ] \
        || { echo "FAIL $model/$name ($args): host_split differs"; exit 1; }
    done
    echo "ok   $model/$name: deployment logits bit-identical to embedded (kvpr auto, kvpr l=3, transfer, three-way 2:5)"
  done <<< "$cases"

  # A batch of three sequences spread over both workers (sequences 0 and 2 on worker 0).
  p1=1,5,9,13
  p2=2,31,45,60,61,62,63,64,65,66,67
  p3=7,8,9,10,11,12,13
  "$kvpr" run --model "$golden/models/$model" --prompt-tokens $p1 --prompt-tokens $p3 \
    --max-new-tokens 6 --threads 1 --quiet --logits-out "$work/a.npy" > /dev/null
  "$kvpr" run --model "$golden/models/$model" --prompt-tokens $p2 \
    --max-new-tokens 6 --threads 1 --quiet --logits-out "$work/b.npy" > /dev/null
  "$kvpr" run --model "$golden/models/$model" --prompt-tokens $p1 --prompt-tokens $p2 --prompt-tokens $p3 \
    --max-new-tokens 6 --quiet --logits-out "$work/spread.npy" --connect "$connect" > /dev/null
  python3 - "$work/a.npy" "$work/b.npy" "$work/spread.npy" <<'PY'
import sys
def body(p):
    b = open(p, "rb").read()
    return b[128:]
a, b, s = (body(p) for p in sys.argv[1:])
row = len(b)  # one sequence's [6, vocab] float32
assert len(a) == 2 * row and len(s) == 3 * row, (len(a), len(b), len(s))
assert s[:row] == a[:row] and s[row:2 * row] == b and s[2 * row:] == a[row:], "spread logits differ"
PY
  echo "ok   $model: a batch spread over two workers is bit-identical to the same sequences embedded"

  # Every service serves /metrics; the workers' token and step series moved.
  python3 - "$work/up.json" <<'PY'
import json, sys, urllib.request
d = json.load(open(sys.argv[1]))
def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
def value(text, name):
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1]); found = True
    assert found, name
    return total
plans = 0.0
for s in d["services"]:
    text = scrape(s["metrics_port"])
    assert "# TYPE kvpr_" in text, s["name"]
    if s["role"] == "worker":
        assert value(text, "kvpr_generated_tokens_total") > 0, s["name"]
        assert value(text, "kvpr_decode_step_seconds_count") > 0, s["name"]
    if s["role"] == "kvstore":
        assert value(text, "kvpr_kvstore_capacity_bytes") > 0
    if s["role"] == "planner":
        plans += value(text, "kvpr_plan_requests_total")
assert plans > 0, "no planner replica answered a plan"
PY
  echo "ok   $model: every service serves /metrics and the workers' series moved"

  pids=$(json '" ".join(str(s["pid"]) for s in d["services"])' "$run_dir/deployment.json")
  "$kvpr" down --run-dir "$run_dir" > "$work/down.txt"
  grep -q "stopped 5 of 5" "$work/down.txt" || { cat "$work/down.txt"; exit 1; }
  for pid in $pids; do
    if kill -0 "$pid" 2> /dev/null; then echo "FAIL process $pid still running after down"; exit 1; fi
  done
  echo "ok   $model: kvpr down stopped all five processes"
done
