#!/usr/bin/env bash
# Broken checkpoints, configs and flags: `kvpr run` must exit 1 with exactly one line on stderr
# that names the bad thing, and never crash (this runs under ASan+UBSan in CI too).
set -u
kvpr="$1"
here="$(cd "$(dirname "$0")" && pwd)"
golden="$here/../data/golden/models/opt-2l-h64"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passed=0

# expect NAME SUBSTRING -- ARGS...: run kvpr, check exit 1, one line, substring present.
expect() {
  local name="$1" want="$2"
  shift 3
  local err rc lines
  err=$("$kvpr" "$@" 2>&1 >/dev/null)
  rc=$?
  lines=$(printf '%s' "$err" | grep -c '')
  if [ "$rc" -ne 1 ] || [ "$lines" -ne 1 ] || [[ "$err" != *"$want"* ]]; then
    echo "FAIL $name: rc=$rc lines=$lines stderr: $err (wanted '$want')"
    failures=$((failures + 1))
  else
    echo "ok   $name: $err"
    passed=$((passed + 1))
  fi
}

# broken DIR: a copy of the golden OPT checkpoint to damage.
broken() {
  rm -rf "$work/$1"
  cp -r "$golden" "$work/$1"
  echo "$work/$1"
}

# Rewrites bytes of a file in place with python (offset-free edits that keep the length).
patch_bytes() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
data = open(path, 'rb').read()
assert len(old) == len(new) and old in data, (old, new)
open(path, 'wb').write(data.replace(old, new, 1))
PY
}

run=(run --prompt-tokens 2,5,7 --max-new-tokens 2 --quiet)

expect "no such directory" "$work/nope" -- "${run[@]}" --model "$work/nope"

d=$(broken no-config); rm "$d/config.json"
expect "missing config.json" "config.json" -- "${run[@]}" --model "$d"

d=$(broken config-not-json); echo '{"model_type": "opt",' > "$d/config.json"
expect "config not JSON" "config.json" -- "${run[@]}" --model "$d"

d=$(broken unknown-arch); patch_bytes "$d/config.json" '"model_type": "opt"' '"model_type": "gpt"'
expect "unknown architecture" "gpt" -- "${run[@]}" --model "$d"

d=$(broken bad-dtype); patch_bytes "$d/config.json" '"torch_dtype": "float32"' '"torch_dtype": "float64"'
expect "bad torch_dtype" "float64" -- "${run[@]}" --model "$d"

d=$(broken bad-heads); patch_bytes "$d/config.json" '"num_attention_heads": 4' '"num_attention_heads": 5'
expect "heads do not divide hidden" "num_attention_heads" -- "${run[@]}" --model "$d"

d=$(broken no-weights); rm "$d/model.safetensors"
expect "missing weights" "model.safetensors" -- "${run[@]}" --model "$d"

d=$(broken empty); : > "$d/model.safetensors"
expect "empty safetensors" "model.safetensors" -- "${run[@]}" --model "$d"

d=$(broken truncated); head -c 5000 "$golden/model.safetensors" > "$d/model.safetensors"
expect "truncated file" "model.safetensors" -- "${run[@]}" --model "$d"

d=$(broken header-past-end)
python3 - "$d/model.safetensors" <<'PY'
import sys, struct
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
b[0:8] = struct.pack('<Q', len(b) * 4)
open(p, 'wb').write(b)
PY
expect "header length past the end" "header" -- "${run[@]}" --model "$d"

d=$(broken unknown-dtype)
patch_bytes "$d/model.safetensors" '"dtype":"F32","shape":[64]' '"dtype":"I32","shape":[64]'
expect "unknown dtype" "I32" -- "${run[@]}" --model "$d"

d=$(broken shape-vs-bytes)
patch_bytes "$d/model.safetensors" '"dtype":"F32","shape":[64]' '"dtype":"F32","shape":[65]'
expect "shape disagrees with bytes" "65" -- "${run[@]}" --model "$d"

d=$(broken offsets-out-of-range)
python3 - "$d/model.safetensors" <<'PY'
import sys, struct, json
p = sys.argv[1]; b = open(p, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
name = sorted(k for k in h if k != '__metadata__')[-1]
begin, end = h[name]['data_offsets']
size = len(b) - 8 - n
h[name]['data_offsets'] = [size - (end - begin) + 64, size + 64]
hj = json.dumps(h).encode(); hj += b' ' * ((8 - len(hj) % 8) % 8)
open(p, 'wb').write(struct.pack('<Q', len(hj)) + hj + b[8 + n:])
PY
expect "offsets out of range" "model.safetensors" -- "${run[@]}" --model "$d"

d=$(broken overlapping)
python3 - "$d/model.safetensors" <<'PY'
import sys, struct, json
p = sys.argv[1]; b = open(p, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
names = sorted((k for k in h if k != '__metadata__'), key=lambda k: h[k]['data_offsets'][0])
a, c = names[0], names[1]
size_c = h[c]['data_offsets'][1] - h[c]['data_offsets'][0]
h[c]['data_offsets'] = [h[a]['data_offsets'][0], h[a]['data_offsets'][0] + size_c]
hj = json.dumps(h).encode(); hj += b' ' * ((8 - len(hj) % 8) % 8)
open(p, 'wb').write(struct.pack('<Q', len(hj)) + hj + b[8 + n:])
PY
expect "overlapping offsets" "overlap" -- "${run[@]}" --model "$d"

d=$(broken missing-tensor)
patch_bytes "$d/model.safetensors" 'layers.1.fc2.bias' 'layers.1.fc9.bias'
expect "missing or unexpected tensor" "model.decoder.layers.1.fc" -- "${run[@]}" --model "$d"

d=$(broken wrong-shape)
patch_bytes "$d/config.json" '"ffn_dim": 256' '"ffn_dim": 128'
expect "tensor shape disagrees with config" "fc1" -- "${run[@]}" --model "$d"

expect "bad policy" "'flexgen'" -- run --model "$golden" --prompt-tokens 2,5 --policy flexgen --quiet
expect "bad split" "'half'" -- run --model "$golden" --prompt-tokens 2,5 --split half --quiet
expect "token outside vocab" "512" -- run --model "$golden" --prompt-tokens 2,512 --quiet
expect "token not a number" "'x'" -- run --model "$golden" --prompt-tokens 2,x --quiet
expect "zero new tokens" "max-new-tokens" -- run --model "$golden" --prompt-tokens 2 --max-new-tokens 0 --quiet
expect "unknown backend" "'tpu'" -- run --model "$golden" --prompt-tokens 2 --backend tpu --quiet
expect "cuda backend without a device" "cuda" -- run --model "$golden" --prompt-tokens 2 --backend cuda --quiet
expect "prompt without tokenizer" "tokenizer" -- run --model "$golden" --prompt "hello" --quiet
expect "negative link rate" "emulate-link-gbps" -- run --model "$golden" --prompt-tokens 2 --emulate-link-gbps -1 --quiet
expect "gen-model unknown preset" "'opt-9b'" -- gen-model --arch opt --preset opt-9b --out "$work/g"
expect "gen-model arch mismatch" "llama" -- gen-model --arch opt --preset llama-tiny --out "$work/g"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
