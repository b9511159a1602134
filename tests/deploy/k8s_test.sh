#!/usr/bin/env bash
# Kubernetes manifests: rendered with `kubectl kustomize` (or `kustomize build`) when one is
# installed, else each file kustomization.yaml lists is parsed on its own (the render is reported
# skipped); then k8s_check.py checks the objects. Needs a python3 with PyYAML (python3-yaml is
# installed with apt-get when missing); exits 77 when there is none.
#   k8s_test.sh REPO
set -euo pipefail
repo="$(cd "$1" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

py=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" > /dev/null && "$candidate" -c 'import yaml' 2> /dev/null; then
    py="$candidate"; break
  fi
done
if [ -z "$py" ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null && [ -x /usr/bin/python3 ]; then
  echo "installing python3-yaml"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-yaml \
    > /dev/null 2>&1 || true
  /usr/bin/python3 -c 'import yaml' 2> /dev/null && py=/usr/bin/python3
fi
[ -n "$py" ] || { echo "SKIP: no python3 with PyYAML (apt-get install python3-yaml)"; exit 77; }

if command -v kubectl > /dev/null && kubectl kustomize "$repo/deploy/k8s" > "$work/rendered.yaml" 2> "$work/err.txt"; then
  echo "ok   rendered with kubectl kustomize ($(kubectl version --client 2>/dev/null | head -n1))"
  exec "$py" "$here/k8s_check.py" --rendered "$work/rendered.yaml" "$repo/deploy/k8s"
elif command -v kustomize > /dev/null && kustomize build "$repo/deploy/k8s" > "$work/rendered.yaml" 2> "$work/err.txt"; then
  echo "ok   rendered with kustomize build"
  exec "$py" "$here/k8s_check.py" --rendered "$work/rendered.yaml" "$repo/deploy/k8s"
elif command -v kubectl > /dev/null || command -v kustomize > /dev/null; then
  echo "FAIL: kustomize could not render deploy/k8s:"; cat "$work/err.txt"; exit 1
fi
echo "note render skipped: neither kubectl nor kustomize is installed; checking the listed files"
exec "$py" "$here/k8s_check.py" "$repo/deploy/k8s"
