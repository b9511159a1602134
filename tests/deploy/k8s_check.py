#!/usr/bin/env python3
"""Checks the kvpr kustomize base, rendered (--rendered FILE) or file by file.

Every object has apiVersion, kind and metadata.name (and, rendered, the kustomization's
namespace); the kvstore is a DaemonSet with hostIPC and the host's /dev/shm (or a Memory emptyDir)
at /dev/shm, which the workers share; the planner is a Deployment of 2 replicas whose pods a
Service selects; workers request nvidia.com/gpu: 1; the ConfigMaps pods read exist; every pod
template is annotated prometheus.io/scrape "true" and prometheus.io/port, that port is a
containerPort and the port its command's --metrics-listen HOST:PORT (or --metrics-port) passes, on
a host other than 127.0.0.1 (the default), so that Prometheus can reach it through the pod's IP
(the gateway serves /metrics on its HTTP port: --host HOST --port PORT).
The gateway is a Deployment behind a Service that exposes its HTTP port; it listens on the pod's
address, is ready on GET /health and alive on another path of that port (/health is 503 while no
worker answers, which a restart would not mend); it reaches the workers through the Service that
selects them, on that Service's port, which is the port the workers listen on; --model and
--api-key-file name files of mounted volumes, the keys a Secret's.
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


def selecting(labels):
    """Services whose selector picks pods with these labels."""
    return [o for (k, _), o in objects.items() if k == "Service" and o["spec"].get("selector")
            and all(labels.get(a) == b for a, b in o["spec"]["selector"].items())]


def command_of(container, expand=False):
    """The container's command line; expand: $VARS of its ConfigMaps substituted."""
    command = " ".join(container.get("command", []) + container.get("args", []))
    if expand:
        data = {}
        for src in container.get("envFrom", []):
            cm = objects.get(("ConfigMap", (src.get("configMapRef") or {}).get("name")))
            data.update((cm or {}).get("data", {}))
        command = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: data.get(m.group(1), m.group(0)),
                         command)
    return command


def metrics_flags(command):
    """[(host, port)] /metrics listens on, from the flags; the gateway's is its HTTP port."""
    if re.search(r"(^|[\s;&])(exec\s+)?kvpr-gateway\s", command):
        hosts = re.findall(r"--host[ =](\S+)", command) or ["127.0.0.1"]
        return [(hosts[-1], p) for p in re.findall(r"--port[ =](\d+)", command)]
    listen = re.findall(r"--metrics-listen[ =](\S+):(\d+)", command)
    return listen + [("127.0.0.1", p) for p in re.findall(r"--metrics-port[ =](\d+)", command)]


def under_mount(container, spec, path, kinds):
    """True when path lies in a volumeMount of one of these volume kinds (hostPath, secret...)."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")) and any(
                k in vols.get(m["name"], {}) for k in kinds):
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
    if not selecting(planner["spec"]["template"]["metadata"]["labels"]):
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

gateway = objects.get(("Deployment", "kvpr-gateway"))
if not gateway:
    problems.append("no Deployment kvpr-gateway")
else:
    spec = pod_spec(gateway)
    c = spec["containers"][0]
    command = command_of(c, expand=True)
    http_ports = {str(p["containerPort"]) for p in c.get("ports", [])}
    named = {p.get("name"): str(p["containerPort"]) for p in c.get("ports", [])}
    hosts = re.findall(r"--host[ =](\S+)", command)
    ports = re.findall(r"--port[ =](\d+)", command)
    if "kvpr-gateway" not in command or len(ports) != 1:
        problems.append(f"kvpr-gateway does not run kvpr-gateway with one --port: {command}")
    port = ports[0] if ports else None
    if port not in http_ports:
        problems.append(f"kvpr-gateway: --port {port} is not a containerPort {http_ports}")
    if not hosts or hosts[-1] in ("127.0.0.1", "localhost", "[::1]", "::1"):
        problems.append(f"kvpr-gateway listens on {hosts or ['127.0.0.1 (default)']}, not the pod's "
                        "address (--host 0.0.0.0)")
    services = selecting(gateway["spec"]["template"]["metadata"]["labels"])
    exposed = {named.get(p.get("targetPort"), str(p.get("targetPort", p.get("port"))))
               for svc in services for p in svc["spec"].get("ports", [])}
    if port not in exposed:
        problems.append(f"no Service exposes the gateway's HTTP port {port} (exposed: {exposed})")

    def probe_of(kind):
        probe = (c.get(kind) or {}).get("httpGet") or {}
        return probe.get("path"), named.get(probe.get("port"), str(probe.get("port")))

    if probe_of("readinessProbe") != ("/health", port):
        problems.append(f"kvpr-gateway readinessProbe is {probe_of('readinessProbe')}, not GET "
                        f"/health on {port}")
    live_path, live_port = probe_of("livenessProbe")
    if not live_path or live_port != port or live_path == "/health":
        problems.append(f"kvpr-gateway livenessProbe is {(live_path, live_port)}: want an httpGet "
                        f"on {port} other than /health")
    # The workers: through the Service that selects them, on its port = the workers' --listen.
    if worker:
        wc = pod_spec(worker)["containers"][0]
        listen = re.findall(r"--listen[ =]tcp://\S+:(\d+)", command_of(wc, expand=True))
        wsvcs = selecting(worker["spec"]["template"]["metadata"]["labels"])
        reached = [svc for svc in wsvcs
                   # named where a host goes: --worker tcp://NAME:PORT, or a lookup (getent)
                   if re.search(rf"(tcp://|getent\s+\S+\s+){re.escape(svc['metadata']['name'])}"
                                r"(\.[\w.-]+)?(?![\w-])", command)
                   and any(str(p.get("port")) in listen
                           and re.search(rf":{p.get('port')}(?!\d)", command)
                           for p in svc["spec"].get("ports", []))]
        if "--worker" not in command or not reached:
            problems.append(f"kvpr-gateway does not reach the workers (--worker) through a Service "
                            f"selecting them ({[s['metadata']['name'] for s in wsvcs]}) on their "
                            f"--listen port {listen}")
    model = re.findall(r"--model[ =](\S+)", command)
    if len(model) != 1 or not under_mount(c, spec, model[0], ("hostPath", "persistentVolumeClaim",
                                                              "image", "emptyDir")):
        problems.append(f"kvpr-gateway --model {model} is not a mounted volume")
    keys = re.findall(r"--api-key-file[ =](\S+)", command)
    if len(keys) != 1 or not under_mount(c, spec, keys[0], ("secret",)):
        problems.append(f"kvpr-gateway --api-key-file {keys} is not a file of a mounted Secret")
    if int(spec.get("terminationGracePeriodSeconds", 30)) <= 30:
        problems.append("kvpr-gateway terminationGracePeriodSeconds is not above its 30 s drain")

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
        command = command_of(c)
        listen = metrics_flags(command_of(c, expand=True))
        flag = [p for _, p in listen]
        if port not in ports:
            problems.append(f"{kind}/{name}: prometheus.io/port {port} is not a containerPort {ports}")
        if flag != [port]:
            problems.append(f"{kind}/{name}: metrics port {flag} differs from prometheus.io/port {port}")
        if not listen or any(h in ("127.0.0.1", "localhost", "[::1]") for h, _ in listen):
            problems.append(f"{kind}/{name}: /metrics must listen on the pod's address "
                            f"(--metrics-listen 0.0.0.0:{port}, the gateway's --host 0.0.0.0); "
                            "--metrics-port binds 127.0.0.1")
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
      "scrape annotations match ports and flags; the gateway's Service, probes, workers and keys")
