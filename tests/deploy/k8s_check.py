#!/usr/bin/env python3
"""Checks the kvpr kustomize base, rendered (--rendered FILE) or file by file.

Every object has apiVersion, kind and metadata.name (and, rendered, the kustomization's
namespace); the kvstore is a DaemonSet with hostIPC and the host's /dev/shm (or a Memory emptyDir)
at /dev/shm, which the workers share; the planner is a Deployment of 2 replicas whose pods a
Service selects; workers request nvidia.com/gpu: 1; the ConfigMaps pods read exist; every pod
template is annotated prometheus.io/scrape "true" and prometheus.io/port, that port is a
containerPort and the port its command's --metrics-listen HOST:PORT (or --metrics-port) passes, on
a host other than 127.0.0.1 (the default), so that Prometheus can reach it through the pod's IP.
  k8s_check.py [--rendered FILE] K8S_DIR"""
import argparse
import os
import re
import sys

import yaml

ap = argparse.ArgumentParser()
ap.add_argument("--rendered")
ap.add_argument("dir")
args = ap.parse_args()
problems = []
kust = yaml.safe_load(open(os.path.join(args.dir, "kustomization.yaml")))
namespace = kust.get("namespace")

docs = []
if args.rendered:
    docs = [d for d in yaml.safe_load_all(open(args.rendered)) if d]
else:
    for res in kust.get("resources", []):
        path = os.path.join(args.dir, res)
        if not os.path.isfile(path):
            problems.append(f"kustomization.yaml lists {res}, which does not exist")
            continue
        try:
            docs += [d for d in yaml.safe_load_all(open(path)) if d]
        except yaml.YAMLError as e:
            problems.append(f"{res} is not YAML: {e}")
listed = set(kust.get("resources", []))
for f in os.listdir(args.dir):
    if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and f not in listed:
        problems.append(f"{f} is not listed in kustomization.yaml")

objects = {}
for d in docs:
    name = (d.get("metadata") or {}).get("name")
    if not d.get("apiVersion") or not d.get("kind") or not name:
        problems.append(f"object without apiVersion/kind/metadata.name: {str(d)[:80]}")
        continue
    objects[(d["kind"], name)] = d
    if args.rendered and d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace:
        problems.append(f"{d['kind']}/{name} is not in namespace {namespace}")


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def shm_shared(obj):
    spec = pod_spec(obj)
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            v = vols.get(m["name"], {})
            if m["mountPath"] == "/dev/shm" and (
                    (v.get("hostPath") or {}).get("path") == "/dev/shm"
                    or (v.get("emptyDir") or {}).get("medium") == "Memory"):
                return True
    return False


kvstore = objects.get(("DaemonSet", "kvpr-kvstore"))
planner = objects.get(("Deployment", "kvpr-planner"))
worker = objects.get(("DaemonSet", "kvpr-worker")) or objects.get(("Deployment", "kvpr-worker"))
if not kvstore:
    problems.append("no DaemonSet kvpr-kvstore")
elif not pod_spec(kvstore).get("hostIPC") or not shm_shared(kvstore):
    problems.append("kvpr-kvstore does not share the host IPC namespace and /dev/shm")
if not planner:
    problems.append("no Deployment kvpr-planner")
elif planner["spec"].get("replicas") != 2:
    problems.append(f"kvpr-planner has {planner['spec'].get('replicas')} replicas, not 2")
else:
    labels = planner["spec"]["template"]["metadata"]["labels"]
    services = [o for (k, _), o in objects.items() if k == "Service"
                and o["spec"].get("selector")
                and all(labels.get(a) == b for a, b in o["spec"]["selector"].items())]
    if not services:
        problems.append("no Service selects the kvpr-planner pods")
if not worker:
    problems.append("no kvpr-worker DaemonSet or Deployment")
else:
    gpus = [(c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
            for c in pod_spec(worker)["containers"]]
    if not any(str(g) == "1" for g in gpus):
        problems.append(f"kvpr-worker requests nvidia.com/gpu {gpus}, not 1")
    if not pod_spec(worker).get("hostIPC") or not shm_shared(worker):
        problems.append("kvpr-worker does not share the host IPC namespace and /dev/shm")

for (kind, name), obj in objects.items():
    if kind not in ("Deployment", "DaemonSet", "StatefulSet"):
        continue
    meta = obj["spec"]["template"]["metadata"]
    ann = meta.get("annotations") or {}
    if ann.get("prometheus.io/scrape") != "true":
        problems.append(f"{kind}/{name} pods lack prometheus.io/scrape: \"true\"")
    port = ann.get("prometheus.io/port")
    if not isinstance(port, str) or not port.isdigit():
        problems.append(f"{kind}/{name} pods lack a string prometheus.io/port: {port!r}")
        continue
    sel = obj["spec"]["selector"]["matchLabels"]
    if not all(meta.get("labels", {}).get(a) == b for a, b in sel.items()):
        problems.append(f"{kind}/{name} selector {sel} does not match its pod labels")
    for c in pod_spec(obj)["containers"]:
        ports = {str(p["containerPort"]) for p in c.get("ports", [])}
        command = " ".join(c.get("command", []) + c.get("args", []))
        listen = re.findall(r"--metrics-listen[ =](\S+):(\d+)", command)
        flag = [p for _, p in listen] + re.findall(r"--metrics-port[ =](\d+)", command)
        if port not in ports:
            problems.append(f"{kind}/{name}: prometheus.io/port {port} is not a containerPort {ports}")
        if flag != [port]:
            problems.append(f"{kind}/{name}: metrics port {flag} differs from prometheus.io/port {port}")
        if not listen or any(h in ("127.0.0.1", "localhost", "[::1]") for h, _ in listen):
            problems.append(f"{kind}/{name}: /metrics must listen on the pod's address "
                            f"(--metrics-listen 0.0.0.0:{port}); --metrics-port binds 127.0.0.1")
        for src in c.get("envFrom", []):
            cm = (src.get("configMapRef") or {}).get("name")
            if cm and ("ConfigMap", cm) not in objects:
                problems.append(f"{kind}/{name} reads ConfigMap {cm}, which is not defined")
        for var in re.findall(r"\$([A-Z_][A-Z0-9_]*)", command):
            defined = {e["name"] for e in c.get("env", [])}
            for src in c.get("envFrom", []):
                cm = objects.get(("ConfigMap", (src.get("configMapRef") or {}).get("name")))
                defined |= set((cm or {}).get("data", {}))
            if var not in defined:
                problems.append(f"{kind}/{name} uses ${var}, which neither env nor a ConfigMap sets")
        if args.rendered and re.fullmatch(r"[a-z-]+", c["image"]):
            problems.append(f"{kind}/{name} image {c['image']} was not rewritten by images:")

if problems:
    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1)
print(f"ok   {len(objects)} objects ({', '.join(sorted(k + '/' + n for k, n in objects))}); "
      "scrape annotations match ports and flags")
