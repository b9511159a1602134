#!/usr/bin/env bash
# Runs openai_client.js (the official npm `openai` v4 client) against gateway_fake_server.
# Skips (77) when node or the package is missing, unless KVPR_REQUIRE_OPENAI_CLIENT=1.
# usage: openai_client_test.sh GATEWAY_FAKE_SERVER SOURCE_DIR
set -euo pipefail
server="$1"
source_dir="$2"
modules="$source_dir/.cache/npm/node_modules"
if ! command -v node >/dev/null || [ ! -d "$modules/openai" ]; then
  msg="node or $modules/openai missing (tools/install-deps.sh installs it)"
  if [ "${KVPR_REQUIRE_OPENAI_CLIENT:-0}" = 1 ]; then echo "FAIL: $msg"; exit 1; fi
  echo "SKIP: $msg"
  exit 77
fi
dir=$(mktemp -d)
"$server" --port-file "$dir/port" >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
[ -s "$dir/port" ] || { cat "$dir/server.log"; echo "FAIL: the server did not start"; exit 1; }
NODE_PATH="$modules" node "$source_dir/tests/gateway/openai_client.js" \
  "http://127.0.0.1:$(cat "$dir/port")" test-model
