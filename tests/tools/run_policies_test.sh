#!/usr/bin/env bash
# `kvpr run` as a user runs it: every policy on a golden checkpoint gives the reference's greedy
# tokens and the same logits file; a batch of mixed lengths works; `gen-model` writes a model with
# a tokenizer that `--prompt` text runs through; `--json` has the contract's fields.
set -euo pipefail
kvpr="$1"
here="$(cd "$(dirname "$0")" && pwd)"
golden="$here/../data/golden"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check() { python3 -c "$1" "${@:2}"; }

prompt=$(check 'import json,sys; m=json.load(open(sys.argv[1])); c=[c for c in m["cases"] if c["id"]=="opt-2l-h64/std-p1-n17"][0]; print(",".join(map(str,c["prompt_tokens"])))' "$golden/manifest.json")
expected=$(check 'import json,sys; m=json.load(open(sys.argv[1])); c=[c for c in m["cases"] if c["id"]=="opt-2l-h64/std-p1-n17"][0]; print(c["decode_tokens"])' "$golden/manifest.json")

for policy in resident transfer recompute kvpr; do
  "$kvpr" run --model "$golden/models/opt-2l-h64" --prompt-tokens "$prompt" --max-new-tokens 24 \
    --policy "$policy" --split 9 --json --quiet --logits-out "$work/$policy.npy" > "$work/$policy.json"
  check '
import json, sys
r = json.load(open(sys.argv[1]))
for key in ("tokens", "text", "policy", "split", "timings"):
    assert key in r, key
assert r["policy"] == sys.argv[2], r["policy"]
assert str(r["tokens"]) == sys.argv[3], (r["tokens"], sys.argv[3])
assert "decode_phases_s" in r["timings"] and r["timings"]["decode_steps"] == 23
' "$work/$policy.json" "$policy" "$expected"
  # [24, 512] float32 after a 128-byte header.
  size=$(stat -c %s "$work/$policy.npy")
  [ "$size" -eq $((128 + 24 * 512 * 4)) ] || { echo "bad logits file size $size"; exit 1; }
  echo "ok   policy $policy: reference tokens"
done
check '
import struct, sys
def rows(p):
    b = open(p, "rb").read()[128:]
    return struct.unpack("<%df" % (len(b) // 4), b)
base = rows(sys.argv[1])
for p in sys.argv[2:]:
    d = max(abs(a - b) for a, b in zip(base, rows(p)))
    assert d <= 1e-5, (p, d)
' "$work/resident.npy" "$work/transfer.npy" "$work/recompute.npy" "$work/kvpr.npy"
echo "ok   logits of every policy within 1e-5 of resident"

# The three-way split: recompute [0, 4), fetch [4, 9), attend [9, s) on the host; and all on the host.
for split in 4:9 0:0; do
  "$kvpr" run --model "$golden/models/opt-2l-h64" --prompt-tokens "$prompt" --max-new-tokens 24 \
    --split "$split" --host-threads 2 --json --quiet --logits-out "$work/three-$split.npy" \
    > "$work/three-$split.json"
  check '
import json, sys
r = json.load(open(sys.argv[1]))
assert str(r["tokens"]) == sys.argv[2], (r["tokens"], sys.argv[2])
assert r["host_split"] == [int(sys.argv[3])], r["host_split"]
' "$work/three-$split.json" "$expected" "${split#*:}"
done
check '
import struct, sys
def rows(p):
    b = open(p, "rb").read()[128:]
    return struct.unpack("<%df" % (len(b) // 4), b)
base = rows(sys.argv[1])
for p in sys.argv[2:]:
    d = max(abs(a - b) for a, b in zip(base, rows(p)))
    assert d <= 1e-5, (p, d)
' "$work/resident.npy" "$work/three-4:9.npy" "$work/three-0:0.npy"
echo "ok   --split L:M: reference tokens, logits within 1e-5 of resident, host_split reported"

# A batch of three prompts of mixed lengths under kvpr with an emulated link.
"$kvpr" run --model "$golden/models/llama-2l-h64-mha" --prompt-tokens 1,5,9 --prompt-tokens "$prompt" \
  --prompt-tokens 1,300,301,302,303,304,305,306,307,308,309,310,311,312,313,314,315,316,317,318 \
  --max-new-tokens 5 --emulate-link-gbps 5 --json --quiet --logits-out "$work/batch.npy" > "$work/batch.json"
check '
import json, sys
r = json.load(open(sys.argv[1]))
assert len(r["sequences"]) == 3 and all(len(s["tokens"]) == 5 for s in r["sequences"])
assert len(r["splits"]) == 3
' "$work/batch.json"
[ "$(stat -c %s "$work/batch.npy")" -eq $((128 + 3 * 5 * 512 * 4)) ]
echo "ok   batch of mixed lengths"

# Generated models with tokenizers, prompted with text.
"$kvpr" gen-model --arch opt --preset opt-tiny --out "$work/opt" --dtype float16 --seed 3 --quiet > /dev/null
"$kvpr" gen-model --arch llama --preset llama-tiny-gqa --out "$work/llama" --seed 4 --quiet > /dev/null
for m in opt llama; do
  "$kvpr" run --model "$work/$m" --prompt "Hello there, naïve café 你好" --max-new-tokens 6 --json --quiet > "$work/$m.json"
  check '
import json, sys
r = json.load(open(sys.argv[1]))
assert len(r["tokens"]) == 6 and isinstance(r["text"], str), r
' "$work/$m.json"
  "$kvpr" run --model "$work/$m" --prompt "Hello there" --max-new-tokens 3 --quiet | grep -q "policy kvpr"
  echo "ok   generated $m model runs a text prompt"
done
grep -q '"l = 0' <("$kvpr" run --model "$work/llama" --prompt "grouped query" --max-new-tokens 2 --json --quiet) \
  || { echo "grouped-query model did not plan l = 0"; exit 1; }
echo "ok   grouped-query model plans l = 0"

# --trace: every decode step's queue spans as a Chrome trace; the embedded run only.
"$kvpr" run --model "$work/opt" --prompt-tokens 2,31,45,7,8,9 --prompt-tokens 2,5 --max-new-tokens 5 \
  --split 3 --emulate-link-gbps 0.05 --trace "$work/trace.json" --quiet > /dev/null
check '
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
spans = [e for e in events if e["ph"] == "X"]
assert len([e for e in spans if e["tid"] == 0]) == 4, "one step span per decode step"
for step in range(4):
    mine = [e for e in spans if e["args"]["step"] == step]
    assert {e["name"] for e in mine if e["tid"] == 2} >= {"fetch_act", "fetch_kv", "write_back"}
    assert {e["name"] for e in mine if e["tid"] == 1} >= {"project", "recompute", "attend", "head"}
tracks = {e["args"]["name"] for e in events if e["ph"] == "M"}
assert tracks == {"decode steps", "compute queue", "copy queue"}, tracks
' "$work/trace.json"
"$kvpr" run --model "$work/opt" --prompt-tokens 2,31 --connect tcp://127.0.0.1:1 --trace "$work/t2.json" \
  2> "$work/trace-err.txt" && { echo "--trace with --connect was accepted"; exit 1; }
grep -q "kvpr-worker --trace" "$work/trace-err.txt" || { cat "$work/trace-err.txt"; exit 1; }
echo "ok   --trace writes each step's copy and compute spans"
