#!/usr/bin/env bash
# The raw server-sent-event framing of a streamed completion, as curl -N sees it: chunked
# text/event-stream, every event "data: {json}" followed by a blank line, and "data: [DONE]" last.
# usage: sse_framing_test.sh GATEWAY_FAKE_SERVER
set -euo pipefail
server="$1"
command -v curl >/dev/null || { echo "SKIP: curl not found"; exit 77; }
dir=$(mktemp -d)
"$server" --port-file "$dir/port" >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
[ -s "$dir/port" ] || { cat "$dir/server.log"; echo "FAIL: the server did not start"; exit 1; }
url="http://127.0.0.1:$(cat "$dir/port")"

curl -sS -N -D "$dir/headers" -o "$dir/body" "$url/v1/completions" \
  -H 'Content-Type: application/json' \
  -d '{"model": "test-model", "prompt": "Hi", "stream": true, "max_tokens": 5}'
grep -qi '^content-type: text/event-stream' "$dir/headers" || { cat "$dir/headers"; echo "FAIL: content type"; exit 1; }
grep -qi '^transfer-encoding: chunked' "$dir/headers" || { cat "$dir/headers"; echo "FAIL: not chunked"; exit 1; }
python3 - "$dir/body" <<'PY'
import json, sys
body = open(sys.argv[1], "rb").read().decode("utf-8")
assert body.endswith("data: [DONE]\n\n"), repr(body[-40:])
events = body.split("\n\n")
assert events[-1] == "", "trailing bytes after the last event"
events = events[:-1]
assert len(events) >= 2, events
for e in events[:-1]:
    assert e.startswith("data: ") and "\n" not in e, repr(e)
    chunk = json.loads(e[6:])
    assert chunk["object"] == "text_completion", chunk
assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
print(f"{len(events)} events framed correctly")
PY

# An error before the stream opens is a plain JSON reply, not an event stream.
code=$(curl -sS -o "$dir/error" -w '%{http_code}' "$url/v1/completions" \
  -H 'Content-Type: application/json' -d '{"model": "test-model", "prompt": "", "stream": true}')
[ "$code" = 400 ] || { cat "$dir/error"; echo "FAIL: expected 400, got $code"; exit 1; }
grep -q '"param":"prompt"' "$dir/error" || { cat "$dir/error"; echo "FAIL: error shape"; exit 1; }
echo "PASS"
