#!/bin/sh
# Prints the Debian packages that own the shared libraries the given binaries load (one a line),
# for the runtime stage of the Containerfiles. Libraries no package owns (the CUDA runtime copied
# from the toolkit, the driver injected by the NVIDIA container toolkit) are reported on stderr.
#   deploy/container/runtime-packages.sh build/tools/kvpr build/tools/kvpr-* > packages.txt
set -eu
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
for bin in "$@"; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  owner=""
  # usrmerge: dpkg may record /usr/lib/... or /lib/...; try the path as loaded and as resolved.
  for p in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
    owner=$(dpkg-query -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  if [ -n "$owner" ]; then
    echo "$owner"
  else
    echo "runtime-packages.sh: no package owns $lib (copy it or provide it at run time)" >&2
  fi
done | sort -u
