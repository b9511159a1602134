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
Security (issue 11): every service gets --keys and never --insecure; its ZeroMQ --listen, its
--metrics-listen and the gateway's --host bind the pod's IP (an env var from status.podIP) or
loopback, never 0.0.0.0; the key folder, followed through the `ln` commands that assemble it,
holds server.key and a live authorized/ (a whole Secret, no items) for each service that listens,
server.pub and NAME.key (NAME = its --name) for each that connects out, all from Secrets, and no
server.key for the gateway; containers drop every capability, run as non-root without privilege
escalation on a read-only root; only the kvstore and the workers share the host's network and
IPC; a default-deny NetworkPolicy and policies that admit exactly the paths kvpr uses (gateway ->
workers, workers -> kvstore and planners, Prometheus -> metrics ports, clients -> gateway HTTP,
DNS) and nothing else.
  k8s_check.py [--rendered FILE] K8S_DIR"""
import shlex
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

# --- Security (issue 11) --------------------------------------------------------------------------
SERVICES = {"kvpr-kvstore": "kvstore", "kvpr-planner": "planner", "kvpr-worker": "worker",
            "kvpr-gateway": "gateway"}
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
workloads = {name: obj for (kind, name), obj in objects.items()
             if kind in ("Deployment", "DaemonSet", "StatefulSet") and name in SERVICES}
for name in SERVICES:
    if name not in workloads:
        problems.append(f"security: no workload {name}")


def pod_ip_vars(container):
    """Env vars of this container set from the downward API's status.podIP."""
    return {e["name"] for e in container.get("env", [])
            if ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "status.podIP"}


def bound_where(host, container):
    """'pod' for the pod's IP (a $(VAR) of status.podIP), 'loopback', or what else it is."""
    if host in LOOPBACK:
        return "loopback"
    m = re.fullmatch(r"\$\(([A-Z_][A-Z0-9_]*)\)", host)
    return "pod" if m and m.group(1) in pod_ip_vars(container) else host


def secret_source(path, container, spec):
    """(secret name, key or None for the whole Secret) a path of a mounted Secret volume is."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        secret = vols.get(m["name"], {}).get("secret")
        if not secret or not (path == mount or path.startswith(mount + "/")):
            continue
        rel = path[len(mount) + 1:]
        items = secret.get("items")
        if not rel:
            return (secret["secretName"], None) if not items else (secret["secretName"], "items")
        if items:
            keys = [i["key"] for i in items if i["path"] == rel]
            return (secret["secretName"], keys[0]) if keys else None
        return secret["secretName"], rel
    return None


def key_folder(command, keys_dir):
    """{entry: source path} of the folder --keys names, from the `ln` commands that link it."""
    assigned = dict(re.findall(r"(?:^|[\s;&])([a-z_]\w*)=(\S+)", command))
    expand = lambda text: re.sub(r"\$\{?([a-z_]\w*)\}?", lambda m: assigned.get(m.group(1),
                                                                                m.group(0)), text)
    folder = expand(keys_dir).rstrip("/")
    entries = {}
    for piece in re.split(r"&&|;|\|\|", command):
        try:
            argv = shlex.split(expand(piece))
        except ValueError:
            continue
        if not argv or argv[0] != "ln":
            continue
        operands = [a for a in argv[1:] if not a.startswith("-")]
        if len(operands) < 2:
            continue
        *sources, dest = operands
        dest = dest.rstrip("/")
        if dest == folder:
            entries.update({os.path.basename(src): src for src in sources})
        elif os.path.dirname(dest) == folder and len(sources) == 1:
            entries[os.path.basename(dest)] = sources[0]
    return folder, entries


server_secret, authorized_secret = set(), set()
for name, obj in workloads.items():
    role = SERVICES[name]
    spec = pod_spec(obj)
    c = spec["containers"][0]
    command = command_of(c, expand=True)
    where = f"{obj['kind']}/{name}"
    configmap_text = " ".join(str(v) for (k, _), o in objects.items() if k == "ConfigMap"
                              for v in (o.get("data") or {}).values())
    if "--insecure" in command or "--insecure" in configmap_text:
        problems.append(f"{where}: --insecure (every service authenticates with --keys)")
    keys = re.findall(r"--keys[ =](\S+)", command)
    if len(keys) != 1:
        problems.append(f"{where}: --keys given {len(keys)} times, not once: {command}")
        continue
    # Where it binds: ZeroMQ, metrics, the gateway's HTTP.
    binds = [("--listen", h) for h in re.findall(r"--listen[ =]tcp://(\[[^\]]*\]|[^\s:]+):\d+", command)]
    binds += [("--metrics-listen", h) for h in re.findall(r"--metrics-listen[ =](\S+):\d+", command)]
    if role == "gateway":
        binds += [("--host", h) for h in re.findall(r"--host[ =](\S+)", command)]
    if re.search(r"--listen[ =](?!tcp://)\S+", command):
        problems.append(f"{where}: a --listen that is not tcp://HOST:PORT")
    for flag, host in binds:
        kind = bound_where(host, c)
        if kind not in ("pod", "loopback"):
            problems.append(f"{where}: {flag} binds {host}: want the pod's IP ($(VAR) from "
                            "status.podIP) or 127.0.0.1, never 0.0.0.0")
    if role != "gateway" and not any(f == "--listen" for f, _ in binds):
        problems.append(f"{where}: no --listen tcp://HOST:PORT")
    # The key folder: from Secrets only, what this role needs and (the gateway) no more.
    folder, entries = key_folder(command, keys[0])
    resolve = lambda entry: secret_source(entries.get(entry, f"{folder}/{entry}"), c, spec)
    listens = role != "gateway"
    connects = role in ("worker", "gateway")
    if listens:
        src = resolve("server.key")
        if not src or src[1] != "server.key":
            problems.append(f"{where}: {folder}/server.key is not the key server.key of a mounted "
                            f"Secret ({src})")
        else:
            server_secret.add(src[0])
        src = resolve("authorized")
        if not src or src[1] is not None:
            problems.append(f"{where}: {folder}/authorized is not a whole mounted Secret (no items:"
                            f" keys added to the Secret must appear without a restart): {src}")
        else:
            authorized_secret.add(src[0])
    if connects:
        own = (re.findall(r"--name[ =](\S+)", command) or [role])[-1].strip("\"'")
        src = resolve("server.pub")
        if not src or src[1] != "server.pub":
            problems.append(f"{where}: {folder}/server.pub is not from a mounted Secret ({src})")
        src = resolve(f"{own}.key")
        if not src or not str(src[1]).endswith(".key") or src[1] == "server.key":
            problems.append(f"{where}: its own key {folder}/{own}.key (--name {own}) is not a "
                            f"role key of a mounted Secret ({src})")
    if not listens:
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            secret = vols.get(m["name"], {}).get("secret") or {}
            items = [i["key"] for i in secret.get("items", [])]
            if secret.get("secretName") in server_secret | {"kvpr-keys"} and (
                    not items or "server.key" in items):
                problems.append(f"{where}: mounts {secret.get('secretName')} with server.key, "
                                "which only listening services need")
    # Least privilege: what the same-node shared memory mapping needs and nothing else.
    pod_sc = spec.get("securityContext") or {}
    if spec.get("hostPID"):
        problems.append(f"{where}: hostPID")
    if role not in ("kvstore", "worker") and (spec.get("hostNetwork") or spec.get("hostIPC")):
        problems.append(f"{where}: hostNetwork/hostIPC, which only the kvstore and the workers "
                        "(same-node shared memory) need")
    for container in spec["containers"]:
        sc = container.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged container")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{where}: capabilities {caps}: want drop [ALL] and no add")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
if len(server_secret) > 1 or len(authorized_secret) > 1:
    problems.append(f"services read different key Secrets: server {server_secret}, authorized "
                    f"{authorized_secret}")


# NetworkPolicies: default deny, then exactly kvpr's paths.
def pod_labels(name):
    obj = workloads.get(name)
    return obj["spec"]["template"]["metadata"]["labels"] if obj else {}


def matches(selector, labels):
    want = (selector or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in want.items()) and not (selector or {}).get(
        "matchExpressions")


def peer_is(peer, name):
    """The NetworkPolicyPeer admits pods of workload `name` (same namespace) or the node network
    where a host-network workload's traffic comes from."""
    if "ipBlock" in peer:
        return bool(pod_spec(workloads[name]).get("hostNetwork")) and peer["ipBlock"].get(
            "cidr") not in ("0.0.0.0/0", "::/0")
    return "podSelector" in peer and "namespaceSelector" not in peer and matches(
        peer["podSelector"], pod_labels(name))


def port_of(rule):
    return {str(p.get("port")) for p in rule.get("ports", [])}


def container_port(name, port_name):
    c = pod_spec(workloads[name])["containers"][0]
    return {p.get("name"): str(p["containerPort"]) for p in c.get("ports", [])}.get(port_name)


policies = [o for (k, _), o in objects.items() if k == "NetworkPolicy"]
if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) ==
           {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")
           for p in policies):
    problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
if len(workloads) == len(SERVICES):
    def policies_of(name, kind):
        return [p for p in policies if kind in p["spec"].get("policyTypes", [])
                and p["spec"].get("podSelector") != {}
                and matches(p["spec"].get("podSelector"), pod_labels(name))]

    def admits(name, kind, port, peer_ok):
        rules = [r for p in policies_of(name, kind) for r in p["spec"].get(kind.lower(), [])]
        side = "from" if kind == "Ingress" else "to"
        return any(port in port_of(r) and peer_ok(r.get(side)) for r in rules)

    prometheus = lambda peers: bool(peers) and any(
        "namespaceSelector" in p and "prometheus" in str(p.get("podSelector", "")) for p in peers)
    zmq = {n: container_port(n, "zmq") for n in ("kvpr-kvstore", "kvpr-planner", "kvpr-worker")}
    http = container_port("kvpr-gateway", "http")
    paths = [("kvpr-gateway", "kvpr-worker", zmq["kvpr-worker"]),
             ("kvpr-worker", "kvpr-kvstore", zmq["kvpr-kvstore"]),
             ("kvpr-worker", "kvpr-planner", zmq["kvpr-planner"])]
    for src, dst, port in paths:
        if not admits(dst, "Ingress", port, lambda peers: peers and any(
                peer_is(p, src) for p in peers)):
            problems.append(f"NetworkPolicy: {dst} does not admit {src} on {port}")
        if not admits(src, "Egress", port, lambda peers: peers and any(
                peer_is(p, dst) for p in peers)):
            problems.append(f"NetworkPolicy: {src} may not reach {dst} on {port}")
    if not admits("kvpr-gateway", "Ingress", http, lambda peers: not peers):
        problems.append(f"NetworkPolicy: clients cannot reach the gateway's HTTP port {http}")
    allowed = {name: {zmq.get(name), container_port(name, "metrics"), http if name ==
                      "kvpr-gateway" else None} - {None} for name in workloads}
    for name, obj in workloads.items():
        port = obj["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
        if not admits(name, "Ingress", port, lambda peers: not peers or prometheus(peers)):
            problems.append(f"NetworkPolicy: Prometheus cannot scrape {name} on {port}")
        if not policies_of(name, "Ingress") or not policies_of(name, "Egress"):
            problems.append(f"NetworkPolicy: no Ingress and Egress policy selects {name}")
        # Nothing beyond kvpr's paths: its own ports in, only from named peers but on the
        # gateway's HTTP port; out only to the peers above.
        for p in policies_of(name, "Ingress"):
            for r in p["spec"].get("ingress", []):
                if not r.get("ports") or not port_of(r) <= allowed[name]:
                    problems.append(f"NetworkPolicy {p['metadata']['name']}: {name} admits ports "
                                    f"{port_of(r) or 'all'}, not only its own {allowed[name]}")
                if not r.get("from") and port_of(r) != {http}:
                    problems.append(f"NetworkPolicy {p['metadata']['name']}: admits anyone on "
                                    f"{port_of(r)} of {name}")
        reach = {port for s, d, port in paths if s == name}
        for p in policies_of(name, "Egress"):
            for r in p["spec"].get("egress", []):
                if not r.get("ports") or not r.get("to") or not port_of(r) <= reach:
                    problems.append(f"NetworkPolicy {p['metadata']['name']}: {name} may reach "
                                    f"{port_of(r) or 'all ports'} of {r.get('to') or 'anyone'}")
    for p in policies:
        if p["spec"].get("podSelector") == {}:
            for r in p["spec"].get("egress", []):
                if port_of(r) != {"53"} or not r.get("to"):
                    problems.append(f"NetworkPolicy {p['metadata']['name']}: every pod may reach "
                                    f"{port_of(r) or 'all ports'} (only DNS)")
            if p["spec"].get("ingress"):
                problems.append(f"NetworkPolicy {p['metadata']['name']}: admits into every pod")

if problems:
    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1)
print(f"ok   {len(objects)} objects ({', '.join(sorted(k + '/' + n for k, n in objects))}); "
      "scrape annotations match ports and flags; the gateway's Service, probes, workers and keys; "
      "--keys from Secrets, binds, privileges and NetworkPolicies")
