# shellcheck shell=bash
# Sourced by the deploy tests: find or install the tools they need.

# promtool and prometheus from Debian's `prometheus` package. Installing it must not leave the
# package's own server on :9090 (there is no systemd here; policy-rc.d keeps invoke-rc.d quiet).
need_prometheus_tools() {
  if command -v promtool > /dev/null && command -v prometheus > /dev/null; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing Debian package prometheus (promtool, prometheus)"
    local policy=/usr/sbin/policy-rc.d had_policy=0
    [ -e "$policy" ] && had_policy=1
    if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; fi
    (export DEBIAN_FRONTEND=noninteractive
     apt-get install -y -qq --no-install-recommends prometheus > /dev/null 2>&1 \
       || { apt-get update -qq > /dev/null 2>&1 \
            && apt-get install -y -qq --no-install-recommends prometheus > /dev/null 2>&1; }) || true
    [ $had_policy = 1 ] || rm -f "$policy"
    if command -v systemctl > /dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus > /dev/null 2>&1 || true
    fi
  fi
  if command -v promtool > /dev/null && command -v prometheus > /dev/null; then return 0; fi
  echo "SKIP: promtool/prometheus not found and not installable (apt-get install prometheus)"
  return 1
}
