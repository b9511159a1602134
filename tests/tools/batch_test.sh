#!/usr/bin/env bash
# kvpr batch as a user runs it: 40 prompts (text and token ids; greedy ones, and sampled ones with
# seeds and stop strings) on a generated OPT-125m-shaped model (2 layers):
# - every index is in the output exactly once, and greedy lines equal a single `kvpr run`;
# - interrupted with SIGINT after some lines (plus a cut-off last line, as a kill leaves) and
#   resumed with the same command: every index exactly once, the same tokens as the whole run;
# - malformed lines (bad JSON, an unknown field, a token outside the vocabulary) are reported by
#   line number and skipped, or with --on-bad-line fail fail the job before anything is written;
# - throughput mode (weights streamed, micro-batches, a device budget, the measured planner): the
#   same tokens; a budget
#   too small is a clear error;
# - through a `kvpr up` deployment (--connect, --keys): the same tokens.
# usage: batch_test.sh KVPR
set -euo pipefail
kvpr="$1"
dir=$(mktemp -d)
run_dir="$dir/run"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -f "$run_dir/deployment.json" ] && "$kvpr" down --run-dir "$run_dir" --timeout 5 >/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$dir"/*.err; do [ -f "$f" ] && { echo "--- $f"; tail -5 "$f"; }; done; exit 1; }

"$kvpr" gen-model --arch opt --preset opt-125m --layers 2 --out "$dir/model" --quiet

# 40 prompts: every third is text; every fourth samples (temperature, top_p/top_k, a seed, a stop
# string); the rest are greedy with ignore_eos, so they run exactly max_tokens as kvpr run does.
python3 - "$dir/prompts.jsonl" <<'EOF'
import json, random, sys
rng = random.Random(12)
with open(sys.argv[1], "w") as out:
    for i in range(40):
        line = {}
        if i % 3 == 0:
            line["prompt"] = f"Prompt number {i} says {'hello ' * (i % 5)}"
        else:
            line["prompt_tokens"] = [rng.randrange(3, 50000) for _ in range(rng.randrange(2, 14))]
        line["max_tokens"] = 4 + i % 9
        if i % 4 == 1:
            line.update(temperature=0.8, top_p=0.9, top_k=50, seed=1000 + i, stop=["e"],
                        presence_penalty=0.5)
        else:
            line.update(temperature=0, ignore_eos=True)
        out.write(json.dumps(line) + "\n")
EOF

# Checks an output file against the input: every index once, each line well formed.
check() {
  python3 - "$dir/prompts.jsonl" "$1" <<'EOF' || fail "$1: $(head -c 300 "$1")"
import json, sys
prompts = [json.loads(l) for l in open(sys.argv[1])]
lines = [json.loads(l) for l in open(sys.argv[2])]
seen = sorted(r["index"] for r in lines)
assert seen == list(range(len(prompts))), f"indices {seen}"
for r in lines:
    p = prompts[r["index"]]
    assert r["finish_reason"] in ("stop", "length"), r
    assert r["usage"]["completion_tokens"] == len(r["tokens"]), r
    assert isinstance(r["text"], str), r
    if p.get("ignore_eos"):
        assert len(r["tokens"]) == p["max_tokens"] and r["finish_reason"] == "length", r
    else:
        assert 1 <= len(r["tokens"]) <= p["max_tokens"], r
        if r["finish_reason"] == "stop":
            assert "e" not in r["text"], r
EOF
}
# The tokens of every line, by index (one "index tokens" line each), for comparing two runs.
tokens_of() {
  python3 -c '
import json, sys
for r in sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r["index"]):
    print(r["index"], r["tokens"])' "$1"
}

"$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/all.jsonl" \
  --max-batch 8 --quiet >"$dir/all.out" 2>"$dir/all.err" || fail "the whole batch failed"
check "$dir/all.jsonl"
grep -Eq "^batch: 40/40 prompts done .* tokens generated in .* s, .* tokens/s" "$dir/all.out" ||
  fail "no summary line: $(cat "$dir/all.out")"
echo "ok   40 prompts, every index once: $(cat "$dir/all.out")"

# Greedy lines equal a single kvpr run of the same prompt (text and token prompts).
for i in 0 2 3 6 10 14 20 39; do
  args=$(python3 - "$dir/prompts.jsonl" "$i" <<'EOF'
import json, sys
p = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2])]
assert p.get("ignore_eos")
print("--max-new-tokens", p["max_tokens"], end=" ")
if "prompt" in p:
    print("--prompt", json.dumps(p["prompt"]))
else:
    print("--prompt-tokens", ",".join(map(str, p["prompt_tokens"])))
EOF
)
  eval "\"$kvpr\" run --model \"$dir/model\" $args --json --quiet" >"$dir/run.json"
  python3 - "$dir/run.json" "$dir/all.jsonl" "$i" <<'EOF' || fail "prompt $i differs from kvpr run"
import json, sys
single = json.load(open(sys.argv[1]))
line = [r for r in map(json.loads, open(sys.argv[2])) if r["index"] == int(sys.argv[3])][0]
assert line["tokens"] == single["tokens"], (line["tokens"], single["tokens"])
assert line["text"] == single["text"], (line["text"], single["text"])
EOF
done
echo "ok   greedy lines equal single kvpr runs (tokens and text)"

# Interrupted after some lines, a cut-off line appended (as a kill mid-write leaves), resumed.
"$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/resumed.jsonl" \
  --max-batch 2 --quiet >"$dir/first.out" 2>"$dir/first.err" &
pid=$!
for _ in $(seq 600); do
  [ -f "$dir/resumed.jsonl" ] && [ "$(wc -l <"$dir/resumed.jsonl")" -ge 5 ] && break
  sleep 0.05
done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 130 ] || fail "an interrupted batch exited $rc, not 130"
done_lines=$(wc -l <"$dir/resumed.jsonl")
[ "$done_lines" -lt 40 ] || fail "the batch finished before the interrupt; nothing to resume"
grep -q "interrupted: $done_lines of 40 prompts done; run the same command to resume" \
  "$dir/first.err" || fail "no resume line after SIGINT: $(cat "$dir/first.err")"
printf '{"index": 39, "tokens": [1, 2' >>"$dir/resumed.jsonl"
"$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/resumed.jsonl" \
  --max-batch 2 --quiet >"$dir/second.out" 2>"$dir/second.err" || fail "the resumed batch failed"
grep -q "removed a cut-off last line" "$dir/second.err" || fail "the cut-off line was not noted"
grep -q "resuming: $done_lines of 40 prompts already in" "$dir/second.err" ||
  fail "no resuming note: $(cat "$dir/second.err")"
check "$dir/resumed.jsonl"
[ "$(tokens_of "$dir/resumed.jsonl")" = "$(tokens_of "$dir/all.jsonl")" ] ||
  fail "the interrupted and resumed run's tokens differ from the whole run's"
echo "ok   interrupted after $done_lines lines and resumed: every index once, the same tokens"

# Throughput mode: half of each layer's weights streamed from host memory under a device budget,
# the block schedule with 3 micro-batches, each step planned from the measured profile (host share
# included, two host threads): the same tokens. A budget below one layer's working set is refused
# naming it.
"$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/throughput.jsonl" \
  --max-batch 8 --micro-batches 3 --weight-fraction 0.5 --device-memory 2000000000 \
  --planner measured --host-threads 2 --quiet \
  >"$dir/throughput.out" 2>"$dir/throughput.err" || fail "the throughput-mode batch failed"
[ "$(tokens_of "$dir/throughput.jsonl")" = "$(tokens_of "$dir/all.jsonl")" ] ||
  fail "throughput mode's tokens differ from the latency schedule's"
if "$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/tiny.jsonl" \
  --device-memory 100000000 --quiet >"$dir/tiny.out" 2>"$dir/tiny.err"; then
  fail "a 100 MB device budget was accepted"
fi
grep -q "device memory budget of 100000000 bytes is too small for one layer's working set" \
  "$dir/tiny.err" || fail "no clear budget error: $(cat "$dir/tiny.err")"
echo "ok   throughput mode (weights half streamed, 3 micro-batches, 2 GB budget, measured planner): the same tokens"

# Malformed lines: reported by line number and skipped, or the job fails before writing.
cat >"$dir/bad.jsonl" <<'EOF'
{"prompt_tokens": [2, 31, 45], "temperature": 0, "max_tokens": 3}
{"prompt": "unterminated
{"prompt": "a typo", "temprature": 0}
{"prompt_tokens": [2, 50272, 5]}
{"prompt": "fine", "temperature": 0, "max_tokens": 3}
EOF
"$kvpr" batch --model "$dir/model" --input "$dir/bad.jsonl" --output "$dir/bad-skip.jsonl" \
  --quiet >"$dir/skip.out" 2>"$dir/skip.err" || fail "--on-bad-line skip failed the job"
grep -q "bad.jsonl:2: not valid JSON" "$dir/skip.err" || fail "bad JSON not reported by line"
grep -q "bad.jsonl:3: unknown field 'temprature'" "$dir/skip.err" || fail "unknown field"
grep -q "bad.jsonl:4: 'prompt_tokens'\[1\] = 50272 is outside the vocabulary" "$dir/skip.err" ||
  fail "out-of-vocabulary token not reported by line"
[ "$(grep -c "bad.jsonl:" "$dir/skip.err")" = 3 ] || fail "not exactly three bad lines reported"
[ "$(python3 -c 'import json,sys; print(sorted(json.loads(l)["index"] for l in open(sys.argv[1])))' \
  "$dir/bad-skip.jsonl")" = "[0, 4]" ] || fail "the good lines were not all run: $(cat "$dir/bad-skip.jsonl")"
grep -q "3 bad lines skipped" "$dir/skip.out" || fail "the summary hides the bad lines"
if "$kvpr" batch --model "$dir/model" --input "$dir/bad.jsonl" --output "$dir/bad-fail.jsonl" \
  --on-bad-line fail --quiet >"$dir/fail.out" 2>"$dir/fail.err"; then
  fail "--on-bad-line fail succeeded"
fi
grep -q "3 malformed input line(s)" "$dir/fail.err" || fail "no failure line: $(cat "$dir/fail.err")"
[ ! -e "$dir/bad-fail.jsonl" ] || fail "--on-bad-line fail wrote output"
for flags in "--on-bad-line maybe" "--max-batch 0" "--max-new-tokens 0"; do
  # shellcheck disable=SC2086
  if "$kvpr" batch --model "$dir/model" --input "$dir/bad.jsonl" --output "$dir/flags.jsonl" \
    $flags --quiet >/dev/null 2>"$dir/flags.err"; then
    fail "kvpr batch accepted $flags"
  fi
  grep -q "^kvpr: failed: ${flags%% *}" "$dir/flags.err" || fail "$flags: $(cat "$dir/flags.err")"
done
echo "ok   malformed lines reported by line number; skipped, or the job fails before writing"

# A prompt the worker can never hold (its KV outgrows the store) is refused, reported by line, and
# the others run; the job exits 1 (a rerun retries only it).
printf '%s\n' '{"prompt_tokens": [2, 31, 45], "temperature": 0, "max_tokens": 3}' \
  '{"prompt_tokens": [2, 31, 46], "temperature": 0, "max_tokens": 1500}' \
  '{"prompt_tokens": [2, 31, 47], "temperature": 0, "max_tokens": 3}' >"$dir/big.jsonl"
rc=0
"$kvpr" batch --model "$dir/model" --input "$dir/big.jsonl" --output "$dir/big-out.jsonl" \
  --kv-capacity 2000000 --max-batch 2 --quiet >/dev/null 2>"$dir/big.err" || rc=$?
[ "$rc" = 1 ] || fail "a refused prompt: exit $rc, not 1"
grep -q "input line 2: the worker refused it: .*needs .* bytes of KV store" "$dir/big.err" ||
  fail "the refused prompt was not reported: $(cat "$dir/big.err")"
[ "$(python3 -c 'import json,sys; print(sorted(json.loads(l)["index"] for l in open(sys.argv[1])))' \
  "$dir/big-out.jsonl")" = "[0, 2]" ] || fail "the prompts beside the refused one did not all run"
echo "ok   a prompt too large for the KV store is refused and reported; the others run"

# Through a deployment: two workers, CURVE keys; the same tokens as the embedded run.
"$kvpr" up --model "$dir/model" --workers 2 --gateways 0 --run-dir "$run_dir" >"$dir/up.json"
connect=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connect"])' "$dir/up.json")
keys=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys"])' "$dir/up.json")
"$kvpr" batch --model "$dir/model" --input "$dir/prompts.jsonl" --output "$dir/remote.jsonl" \
  --connect "$connect" --keys "$keys" --max-batch 4 --json --quiet >"$dir/remote.out" \
  2>"$dir/remote.err" || fail "the batch over --connect failed"
check "$dir/remote.jsonl"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["done"] == 40 and d["generated_tokens"] > 0, d' \
  "$dir/remote.out" || fail "--json summary: $(cat "$dir/remote.out")"
[ "$(tokens_of "$dir/remote.jsonl")" = "$(tokens_of "$dir/all.jsonl")" ] ||
  fail "the deployment's tokens differ from the embedded run's"
"$kvpr" down --run-dir "$run_dir" >/dev/null
echo "ok   through kvpr up (--connect, --keys): the same tokens"
