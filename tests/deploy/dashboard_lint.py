#!/usr/bin/env python3
"""Static checks of deploy/grafana (standard library only): the dashboard is valid JSON whose
panels and queries take their datasource from the `datasource` variable (default: the uid the
provisioning file gives Prometheus), panel ids are unique and the grid has no overlaps, and it has
the panels the deployment issue asks for, recognised by their queries (a "Serving" row among them);
queries of the latency histograms that workers and gateways both export say whose they mean
(worker="" the gateways', worker!="" or worker=~"$worker" the workers', the variable's "All"
matching no empty label).
  dashboard_lint.py REPO"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import promql_names  # noqa: E402

repo = sys.argv[1]
grafana = os.path.join(repo, "deploy/grafana")
problems = []
dashboard = json.load(open(os.path.join(grafana, "dashboards/kvpr.json")))

variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    problems.append("no datasource variable of type datasource for prometheus")
provisioned = open(os.path.join(grafana, "provisioning/datasources/prometheus.yml")).read()
uids = re.findall(r"^\s*uid:\s*(\S+)", provisioned, re.M)
if ds and ds.get("current", {}).get("value") not in uids:
    problems.append(f"datasource variable default {ds.get('current')} is none of the provisioned "
                    f"uids {uids}")
if not re.search(r"^\s*type:\s*prometheus\s*$", provisioned, re.M):
    problems.append("provisioned datasource is not of type prometheus")
provider = open(os.path.join(grafana, "provisioning/dashboards/kvpr.yml")).read()
if not re.search(r"^\s*type:\s*file\s*$", provider, re.M) or "path:" not in provider:
    problems.append("dashboard provider is not a file provider with a path")

ids, cells = set(), {}


def check_panel(p):
    if p.get("id") in ids:
        problems.append(f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
        problems.append(f"panel '{p.get('title')}' has a bad gridPos {g}")
        return
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                problems.append(f"panel '{p.get('title')}' overlaps '{cells[(x, y)]}'")
                return
            cells[(x, y)] = p.get("title")
    if p.get("type") == "row":
        return
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    if p.get("datasource") != wanted:
        problems.append(f"panel '{p.get('title')}' datasource {p.get('datasource')} is not {wanted}")
    if not p.get("targets"):
        problems.append(f"panel '{p.get('title')}' has no queries")
    for t in p.get("targets", []):
        if t.get("datasource") not in (None, wanted):
            problems.append(f"panel '{p.get('title')}' query {t.get('refId')} has datasource "
                            f"{t.get('datasource')}")
    for sub in p.get("panels", []):
        check_panel(sub)


for p in dashboard.get("panels", []):
    check_panel(p)

exprs = [e for _, e in promql_names.grafana_exprs(dashboard)]
panels = {}
for p in dashboard.get("panels", []):
    if p.get("targets"):
        panels[p["title"]] = " ".join(t.get("expr", "") for t in p["targets"])


def any_expr(pattern):
    return any(re.search(pattern, e) for e in exprs)


def one_panel(*patterns):
    return any(all(re.search(pat, text) for pat in patterns) for text in panels.values())


required = {
    "time to first token p50/p99": one_panel(r"histogram_quantile\(0\.5,.*kvpr_time_to_first_token_seconds_bucket",
                                             r"histogram_quantile\(0\.99,.*kvpr_time_to_first_token_seconds_bucket"),
    "inter-token latency p50/p99": one_panel(r"histogram_quantile\(0\.5,.*kvpr_inter_token_latency_seconds_bucket",
                                             r"histogram_quantile\(0\.99,.*kvpr_inter_token_latency_seconds_bucket"),
    "decode-step time by phase": any_expr(r"by \(phase\).*kvpr_decode_step_seconds_(sum|bucket)"),
    "tokens per second": any_expr(r"rate\(kvpr_generated_tokens_total"),
    "recomputed vs transferred KV tokens": one_panel(r"kvpr_kv_recompute_tokens_total", r"kvpr_kv_transfer_tokens_total"),
    "split ratio per worker": any_expr(r"by \(worker\) \(kvpr_split_ratio"),
    "host->device bytes per second": any_expr(r'rate\(kvpr_transfer_bytes_total\{[^}]*direction="host_to_device"'),
    "kvstore used vs capacity": one_panel(r"kvpr_kvstore_used_bytes", r"kvpr_kvstore_capacity_bytes"),
    "sequences": any_expr(r"kvpr_kvstore_sequences"),
    "lookups": any_expr(r"kvpr_kvstore_lookups_total"),
    "evictions": any_expr(r"kvpr_kvstore_evictions_total"),
    "allocation failures": any_expr(r"kvpr_kvstore_allocation_failures_total"),
    "lease expiries": any_expr(r"kvpr_kvstore_lease_expiries_total"),
    "plan drift per worker": any_expr(r"by \(worker\) \(kvpr_plan_drift_ratio"),
    "profile refits": any_expr(r"kvpr_profile_refits_total"),
    "rejected messages by reason": any_expr(r"by \([^)]*reason[^)]*\) \(\w+\(kvpr_rejected_messages_total"),
    # Serving: continuous batching on the workers, the HTTP API on the gateways.
    "running and waiting sequences per worker": one_panel(r"by \(worker\) \(kvpr_running_sequences",
                                                          r"by \(worker\) \(kvpr_waiting_sequences"),
    "preemptions and cancellations rate": one_panel(r"rate\(kvpr_preemptions_total",
                                                    r"rate\(kvpr_cancellations_total"),
    "request latency p50/p99": one_panel(r"histogram_quantile\(0\.5,.*kvpr_request_latency_seconds_bucket",
                                         r"histogram_quantile\(0\.99,.*kvpr_request_latency_seconds_bucket"),
    "gateway time to first token p50/p99": one_panel(
        r'histogram_quantile\(0\.5, sum by \(service, le\) \(rate\(kvpr_time_to_first_token_seconds_bucket\{worker=""',
        r'histogram_quantile\(0\.99, sum by \(service, le\) \(rate\(kvpr_time_to_first_token_seconds_bucket\{worker=""'),
    "gateway inter-token latency p50/p99": one_panel(
        r'histogram_quantile\(0\.5, sum by \(service, le\) \(rate\(kvpr_inter_token_latency_seconds_bucket\{worker=""',
        r'histogram_quantile\(0\.99, sum by \(service, le\) \(rate\(kvpr_inter_token_latency_seconds_bucket\{worker=""'),
    "HTTP requests by route and code": any_expr(r"by \((route, code|code, route)\) \(rate\(kvpr_http_requests_total"),
    "HTTP 4xx/5xx ratio": one_panel(r'kvpr_http_requests_total\{[^}]*code=~"4\.\."[^}]*\}.*/',
                                    r'kvpr_http_requests_total\{[^}]*code=~"5\.\."[^}]*\}.*/'),
}
if not any(p.get("type") == "row" and p.get("title") == "Serving" for p in dashboard.get("panels", [])):
    problems.append("no row titled 'Serving'")
# Workers and gateways export these histograms under the same names; only the workers' carry a
# worker label. A query must say whose it means, or it mixes the two.
shared = r"(kvpr_(?:time_to_first_token|inter_token_latency|request_latency)_seconds\w*)(\{[^}]*\})?"
worker_var = variables.get("worker") or {}
all_value = worker_var.get("allValue")
if worker_var.get("includeAll") and (all_value is None or re.fullmatch(all_value, "")):
    problems.append(f"variable worker's All value {all_value!r} matches the gateways' series "
                    "(no worker label): use .+")
for where, expr in promql_names.grafana_exprs(dashboard):
    for name, selector in re.findall(shared, expr):
        if not re.search(r'worker(=""|!=""|=~"\$worker")', selector or ""):
            problems.append(f"{where}: {name}{selector} mixes workers and gateways; select "
                            'worker="" (gateways) or worker!="" / worker=~"$worker" (workers)')
for what, found in required.items():
    if not found:
        problems.append(f"no panel for {what}")

if problems:
    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1)
print(f"ok   dashboard: {len(ids)} panels, datasource via ${{datasource}} (uid {uids[0]}), "
      f"{len(required)} required views present, {len(exprs)} queries")
