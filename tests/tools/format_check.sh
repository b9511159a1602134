#!/usr/bin/env bash
# Fails when a tracked C++ source differs from what clang-format (.clang-format) makes of it.
set -euo pipefail
root="$1"
clang_format="${2:-}"
if [ -z "$clang_format" ] || [ ! -x "$clang_format" ]; then
  echo "SKIP: clang-format not found"
  exit 77
fi
cd "$root"
mapfile -t files < <(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh' 2>/dev/null || find common kernels services tools tests -name '*.h' -o -name '*.cpp')
bad=0
for f in "${files[@]}"; do
  if ! "$clang_format" --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "needs clang-format: $f"
    bad=$((bad + 1))
  fi
done
echo "${#files[@]} files checked, $bad need formatting"
[ "$bad" -eq 0 ]
