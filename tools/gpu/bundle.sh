#!/usr/bin/env bash
# Builds the GPU test binaries and kvpr-bench-decode with CUDA here (a machine with nvcc but no
# GPU), and bundles them with the shared libraries they load into BUILD_DIR/bundle/, ready to be
# carried to the device machine (tools/gpu-check run). Left out on purpose: glibc (libc, libm,
# libdl, libpthread, librt, the loader) and the CUDA runtime, cuBLAS and driver, which the device
# machine has. The bundle is also packed as BUILD_DIR/bundle.tar.xz (openblas alone is 36 MB), which
# is what travels: the working tree and what is carried share one 64 MiB limit. Fails when a
# library is not found or the archive exceeds 40 MiB.
#
# Usage: tools/gpu/bundle.sh [BUILD_DIR]   (default build-gpu; RelWithDebInfo as the project default, stripped; KVPR_CUDA=ON)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
bundle="$build/bundle"
limit=$((40 * 1024 * 1024))
targets=(kernels_cuda_host_test kernels_cuda_diff_test worker_golden_test worker_policy_test
  worker_throughput_test worker_batcher_test
  kvpr-bench-decode kvpr)

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DKVPR_CUDA=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
grep -q '^KVPR_CUDA:STRING=ON' "$build/CMakeCache.txt" || {
  echo "bundle: $build is not configured with KVPR_CUDA=ON" >&2
  exit 1
}
ninja -C "$build" "${targets[@]}"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib"
binaries=()
for t in "${targets[@]}"; do
  path=$(find "$build" -path "$bundle" -prune -o -type f -name "$t" -perm -u+x -print | head -1)
  [ -n "$path" ] || { echo "bundle: built target $t not found under $build" >&2; exit 1; }
  cp "$path" "$bundle/bin/$t"
  strip --strip-unneeded "$bundle/bin/$t"
  binaries+=("$bundle/bin/$t")
done

# Shared libraries, by the name the binaries ask for (their sonames), dereferenced.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libnvidia)'
missing=0
for b in "${binaries[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [[ "$name" =~ $skip ]]; then continue; fi
    if [ "$path" = "not" ]; then
      echo "bundle: $b needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    [ -f "$bundle/lib/$name" ] || cp -L "$path" "$bundle/lib/$name"
  done < <(ldd "$b")
done
[ "$missing" = 0 ] || exit 1

{
  echo "kvpr GPU bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + local changes')"
  echo "build $build ($(grep '^CMAKE_BUILD_TYPE:' "$build/CMakeCache.txt" | cut -d= -f2)), nvcc $(/usr/local/cuda/bin/nvcc --version | grep -o 'release [0-9.]*' || true)"
  echo "glibc needed (max): $(for b in "${binaries[@]}"; do objdump -T "$b" | grep -o 'GLIBC_[0-9.]*'; done | sort -V | tail -1)"
  echo "left out (expected on the device): glibc, libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcuda.so.1"
  echo
  (cd "$bundle" && find bin lib -type f -printf '%10s  %p\n' | sort -k2)
} > "$bundle/MANIFEST"

tar cJf "$bundle.tar.xz" -C "$build" bundle
size=$(stat -c %s "$bundle.tar.xz")
echo "bundle: $bundle.tar.xz, $((size / 1024 / 1024)) MiB ($size bytes; unpacked $(du -sh "$bundle" | cut -f1); limit 40 MiB, the tree shares the 64 MiB carry limit)"
if [ "$size" -ge "$limit" ]; then
  echo "bundle: too large to carry" >&2
  exit 1
fi
