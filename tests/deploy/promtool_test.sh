#!/usr/bin/env bash
# promtool on the Prometheus files of deploy/:
#   promtool_test.sh rules  REPO   promtool check rules on deploy/prometheus/rules/*.yml, and
#                                  promtool test rules on tests/deploy/kvpr.rules.test.yml (the
#                                  serving alerts fire on synthetic series, and only there)
#   promtool_test.sh config REPO   promtool check config on the example prometheus.yml and on one
#                                  scrape-config.py generates from a sample deployment.json
# Exits 77 (skipped) when promtool is missing and cannot be installed.
set -euo pipefail
mode="$1"
repo="$(cd "$2" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tools.sh
source "$here/tools.sh"
need_prometheus_tools || exit 77

case "$mode" in
  rules)
    promtool check rules "$repo"/deploy/prometheus/rules/*.yml
    # promtool 2.42 accepts a rule file with no groups; ours must have both kinds of rules.
    for kind in record alert; do
      grep -q "^ *- $kind: " "$repo/deploy/prometheus/rules/kvpr.rules.yml" \
        || { echo "FAIL: no '$kind' rules in kvpr.rules.yml"; exit 1; }
    done
    promtool test rules "$here/kvpr.rules.test.yml"
    ;;
  config)
    promtool check config "$repo/deploy/prometheus/prometheus.yml"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cat > "$work/deployment.json" <<'JSON'
{"connect": "tcp://127.0.0.1:40001,tcp://127.0.0.1:40002", "run_dir": "RUN",
 "services": [
  {"name": "kvstore", "role": "kvstore", "pid": 1, "endpoint": "tcp://127.0.0.1:40000", "metrics_port": 41000, "log": "x"},
  {"name": "planner-0", "role": "planner", "pid": 2, "endpoint": "tcp://127.0.0.1:40010", "metrics_port": 41010, "log": "x"},
  {"name": "planner-1", "role": "planner", "pid": 3, "endpoint": "tcp://127.0.0.1:40011", "metrics_port": 41011, "log": "x"},
  {"name": "worker-0", "role": "worker", "pid": 4, "endpoint": "tcp://127.0.0.1:40001", "metrics_port": 41020, "log": "x"},
  {"name": "worker-1", "role": "worker", "pid": 5, "endpoint": "tcp://127.0.0.1:40002", "metrics_port": 41021, "log": "x"},
  {"name": "gateway-0", "role": "gateway", "pid": 6, "endpoint": "http://127.0.0.1:41030", "metrics_port": 41030, "log": "x"}]}
JSON
    "$repo/deploy/prometheus/scrape-config.py" "$work" > /dev/null
    promtool check config "$work/prometheus.yml" | tee "$work/check.txt"
    grep -q "SUCCESS: 1 rule files found" "$work/check.txt" \
      || { echo "FAIL: the generated config does not load deploy/prometheus/rules"; exit 1; }
    # Exactly the deployment's services: one job per role, one target per service, labelled.
    python3 - "$work/prometheus.yml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
jobs = re.findall(r'job_name: "([^"]+)"', text)
assert jobs == ["kvpr-kvstore", "kvpr-planner", "kvpr-worker", "kvpr-gateway"], jobs
targets = re.findall(r'targets: \["([^"]+)"\]\n\s+labels:\n\s+service: "([^"]+)"', text)
assert targets == [("127.0.0.1:41000", "kvstore"), ("127.0.0.1:41010", "planner-0"),
                   ("127.0.0.1:41011", "planner-1"), ("127.0.0.1:41020", "worker-0"),
                   ("127.0.0.1:41021", "worker-1"), ("127.0.0.1:41030", "gateway-0")], targets
rule = re.search(r'rule_files:\n\s+- "([^"]+)"', text).group(1)
assert rule.startswith("/") and rule.endswith("/deploy/prometheus/rules/*.yml"), rule
PY
    # Bad input: no deployment.json, a service without metrics: one line, exit 1.
    rm "$work/deployment.json"
    if "$repo/deploy/prometheus/scrape-config.py" "$work" 2> "$work/err.txt"; then
      echo "FAIL: scrape-config.py accepted a folder without deployment.json"; exit 1
    fi
    grep -q "no deployment.json" "$work/err.txt"
    echo '{"services": [{"name": "kvstore", "role": "kvstore", "metrics_port": -1}]}' > "$work/deployment.json"
    if "$repo/deploy/prometheus/scrape-config.py" "$work" 2> "$work/err.txt"; then
      echo "FAIL: scrape-config.py accepted a service without metrics"; exit 1
    fi
    grep -q "serves no metrics" "$work/err.txt"
    echo "ok   example and generated configs valid; generated one scrapes exactly the 6 services"
    ;;
  *) echo "usage: $0 rules|config REPO" >&2; exit 2 ;;
esac
