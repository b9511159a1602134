#!/usr/bin/env bash
# Fails when clang-tidy (the repo's .clang-tidy, tests/.clang-tidy for tests) reports anything on a
# C++ source of the project. Sources are the .cpp entries of the build's compile_commands.json
# under the source root: generated Cap'n Proto code (*.c++ in the build dir) and nvcc entries
# (*.cu, which clang-tidy 14 cannot parse) are left out. Needs the build's generated headers.
# usage: tidy_check.sh SOURCE_DIR BUILD_DIR [clang-tidy] [run-clang-tidy]; jobs: KVPR_TIDY_JOBS.
set -euo pipefail
root="$1"
build="$2"
clang_tidy="${3:-}"
runner="${4:-}"
if [ -z "$clang_tidy" ] || [ ! -x "$clang_tidy" ] || [ -z "$runner" ] || [ ! -x "$runner" ]; then
  echo "SKIP: clang-tidy or run-clang-tidy not found"
  exit 77
fi
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
python3 - "$root" "$build/compile_commands.json" "$db/compile_commands.json" <<'PY'
import json, os, sys
root, src, dst = os.path.realpath(sys.argv[1]) + "/", sys.argv[2], sys.argv[3]
entries = [e for e in json.load(open(src))
           if e["file"].endswith(".cpp") and os.path.realpath(e["file"]).startswith(root)
           and "nvcc" not in e.get("command", " ".join(e.get("arguments", [])))]
json.dump(entries, open(dst, "w"))
print(f"{len(entries)} sources")
PY
start=$(date +%s)
# -Wno-unknown-warning-option: g++-only flags of the build (-Wno-restrict) are unknown to clang.
"$runner" -clang-tidy-binary "$clang_tidy" -p "$db" -quiet -j "${KVPR_TIDY_JOBS:-$(nproc)}" \
  -extra-arg=-Wno-unknown-warning-option > "$db/out.txt" 2>&1 || true
# Each header's findings repeat once per source that includes it: report each once.
sed 's/\x1b\[[0-9;]*m//g' "$db/out.txt" | grep -E '^[^ ].*:[0-9]+:[0-9]+: (warning|error):' |
  sort -u > "$db/findings.txt" || true
n=$(wc -l < "$db/findings.txt")
if [ "$n" -gt 0 ]; then
  sed 's/\x1b\[[0-9;]*m//g' "$db/out.txt" | grep -v '^clang-tidy' | head -400
  echo "----"
  cat "$db/findings.txt"
fi
echo "clang-tidy: $n findings in $(($(date +%s) - start)) s"
[ "$n" -eq 0 ]
