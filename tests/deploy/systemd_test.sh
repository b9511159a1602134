#!/usr/bin/env bash
# deploy/systemd: every unit restarts on failure with a delay, stops with SIGTERM and a drain
# timeout, reads its flags from an EnvironmentFile whose example exists in deploy/systemd/env,
# runs as the kvpr user (or DynamicUser); the example prometheus.yml scrapes exactly the
# --metrics-port values of those env files and the gateways' --port (their /metrics is on the HTTP
# port); the gateway, which faces clients, takes its API keys from a systemd credential;
# every unit passes --keys (never --insecure) naming a folder in its RuntimeDirectory whose
# ExecStartPre links the LoadCredential copies of /etc/kvpr/keys files: server.key and a live
# authorized/ (BindReadOnlyPaths of /etc/kvpr/keys/authorized) for the services that listen,
# server.pub and NAME.key (NAME = its --name) for those that connect out, no server.key for the
# gateway; no ZeroMQ --listen, --metrics-listen or gateway --host binds 0.0.0.0 (or * / ::); and
# `systemd-analyze verify` accepts the units
# (templates instantiated as @0, binaries replaced by /bin/true since they are not installed here).
# The verify step is skipped, saying so, without systemd-analyze.
#   systemd_test.sh REPO
set -euo pipefail
repo="$(cd "$1" && pwd)"
dir="$repo/deploy/systemd"
python3 - "$dir" "$repo/deploy/prometheus" <<'PY'
import glob, json, os, re, sys
dir, prom = sys.argv[1], sys.argv[2]
problems = []
units = sorted(glob.glob(os.path.join(dir, "*.service")))
names = {os.path.basename(u) for u in units}
for want in ("kvpr-kvstore.service", "kvpr-planner@.service", "kvpr-worker@.service",
             "kvpr-gateway@.service"):
    if want not in names:
        problems.append(f"missing {want}")
metrics_ports = set()
WILDCARD = re.compile(r"(--listen[ =]tcp://(0\.0\.0\.0|\*|\[::\]|::)[:\s]|--metrics-listen[ =](0\.0\.0\.0|\*|\[::\]):"
                      r"|--host[ =](0\.0\.0\.0|::|\[::\])(\s|$))")
for f in glob.glob(os.path.join(dir, "env", "*.env")) + units:
    if "--insecure" in re.sub(r"(?m)^\s*#.*$", "", open(f).read()):
        problems.append(f"{os.path.basename(f)}: --insecure (every service authenticates with --keys)")
for u in units:
    name = os.path.basename(u)
    text = open(u).read()
    keys = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault((section, k), []).append(v)
    def has(k, pattern=None, section="[Service]"):
        vals = keys.get((section, k), [])
        return any(re.fullmatch(pattern, v) for v in vals) if pattern else bool(vals)
    for k, pat in (("Restart", "on-failure"), ("RestartSec", r"\d+s?"), ("KillSignal", "SIGTERM"),
                   ("TimeoutStopSec", r"\d+s?"), ("ExecStart", None), ("EnvironmentFile", None)):
        if not has(k, pat):
            problems.append(f"{name}: no {k}{'=' + pat if pat else ''}")
    if not (has("User", "kvpr") or has("DynamicUser", "yes")):
        problems.append(f"{name}: neither User=kvpr nor DynamicUser=yes")
    instances = ["0", "1"] if "@" in name else [""]
    for inst in instances:
        env = {}
        for f in keys.get(("[Service]", "EnvironmentFile"), []):
            optional = f.startswith("-")
            f = f.lstrip("-").replace("%i", inst)
            example = os.path.join(dir, "env", os.path.basename(f))
            if not f.startswith("/etc/kvpr/"):
                problems.append(f"{name}: EnvironmentFile {f} is not under /etc/kvpr")
            elif os.path.exists(example):
                for line in open(example):
                    m = re.match(r'\s*([A-Z_][A-Z0-9_]*)="?(.*?)"?\s*$', line)
                    if m and not line.lstrip().startswith("#"):
                        env[m.group(1)] = m.group(2)
            elif not optional:
                problems.append(f"{name}: no example {os.path.relpath(example, dir)} for {f}")
        for start in keys.get(("[Service]", "ExecStart"), []):
            for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", start):
                if var not in env:
                    problems.append(f"{name} (instance '{inst}'): ExecStart uses ${var}, "
                                    "which no example env file sets")
            line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), start)
            metrics_ports |= set(re.findall(r"--metrics-port[ =](\d+)", line))
            if re.search(r"/kvpr-gateway\s", line):
                # The gateway serves /metrics on its HTTP port, on an address clients reach.
                ports = re.findall(r"--port[ =](\d+)", line)
                if len(ports) != 1:
                    problems.append(f"{name} (instance '{inst}'): --port given {len(ports)} times")
                metrics_ports |= set(ports)
                keys_at = re.findall(r"--api-key-file[ =](\S+)", line)
                if keys_at != ["%d/api-keys"] or not has("LoadCredential", r"api-keys:/etc/kvpr/\S+"):
                    problems.append(f"{name}: the API keys are not --api-key-file %d/api-keys "
                                    "from LoadCredential=api-keys:/etc/kvpr/...")
            if WILDCARD.search(line):
                problems.append(f"{name} (instance '{inst}'): binds every address: "
                                f"{WILDCARD.search(line).group(0).strip()} (bind this host's address)")
            if not re.search(r"--listen[ =]tcp://\S+", line) and "/kvpr-gateway" not in line:
                problems.append(f"{name} (instance '{inst}'): no --listen tcp://HOST:PORT")
            # CURVE keys: --keys RUNTIME/keys, assembled from credentials (and authorized/).
            keys_dir = re.findall(r"--keys[ =](\S+)", line)
            if len(keys_dir) != 1:
                problems.append(f"{name}: --keys given {len(keys_dir)} times, not once")
                continue
            folder = keys_dir[0].rstrip("/")
            runtime = ["/run/" + d for v in keys.get(("[Service]", "RuntimeDirectory"), [])
                       for d in v.split()]
            if folder not in runtime:
                problems.append(f"{name}: --keys {folder} is not one of its RuntimeDirectory= "
                                f"{runtime} (a fresh folder each start)")
            creds = dict(v.split(":", 1) for v in keys.get(("[Service]", "LoadCredential"), []))
            linked = {}
            for pre in keys.get(("[Service]", "ExecStartPre"), []):
                argv = pre.lstrip("-+!@:").split()
                if argv and argv[0].endswith("/ln"):
                    ops = [a for a in argv[1:] if not a.startswith("-")]
                    if ops and ops[-1].rstrip("/") == folder:
                        linked.update({os.path.basename(a): a for a in ops[:-1]})
            def credential(entry):
                # FOLDER/entry links %d/ID where LoadCredential=ID:/etc/kvpr/keys/entry
                src = linked.get(entry, "")
                cid = src[len("%d/"):] if src.startswith("%d/") else None
                return creds.get(cid) == f"/etc/kvpr/keys/{entry}"
            own = (re.findall(r"--name[ =](\S+)", line) or [""])[-1]
            listens = "/kvpr-gateway" not in line
            connects = "/kvpr-worker" in line or "/kvpr-gateway" in line
            need = (["server.key"] if listens else []) + (["server.pub", f"{own}.key"] if connects else [])
            for entry in need:
                if not credential(entry):
                    problems.append(f"{name}: {folder}/{entry} is not linked (ExecStartPre=/bin/ln) "
                                    f"from a LoadCredential of /etc/kvpr/keys/{entry}")
            binds = keys.get(("[Service]", "BindReadOnlyPaths"), [])
            if listens and f"/etc/kvpr/keys/authorized:{folder}/authorized" not in binds:
                problems.append(f"{name}: {folder}/authorized is not BindReadOnlyPaths="
                                f"/etc/kvpr/keys/authorized:{folder}/authorized (live, read-only)")
            if not listens and any("server.key" in v for v in creds.values()):
                problems.append(f"{name}: loads server.key, which only services that listen need")
# The example scrape config covers exactly those ports (static targets and the file_sd file).
scraped = set()
text = open(os.path.join(prom, "prometheus.yml")).read()
scraped |= set(re.findall(r'"[\w.-]+:(\d+)"', text))
for f in glob.glob(os.path.join(prom, "targets", "*.json")):
    for group in json.load(open(f)):
        scraped |= {t.rsplit(":", 1)[1] for t in group["targets"]}
if scraped != metrics_ports:
    problems.append(f"prometheus.yml scrapes ports {sorted(scraped)}, the units serve {sorted(metrics_ports)}")
if problems:
    print("\n".join("FAIL " + p for p in problems))
    sys.exit(1)
print(f"ok   {len(units)} units: restart, SIGTERM drain, env files, user; "
      f"example scrape config matches metrics ports {sorted(metrics_ports)}")
PY

if ! command -v systemd-analyze > /dev/null; then
  echo "note systemd-analyze verify skipped: systemd-analyze not installed"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in "$dir"/*.service; do
  name=$(basename "$unit")
  sed -E 's#/usr/local/bin/(kvpr[a-z-]*)#/bin/true \1#' "$unit" > "$work/${name/@./@0.}"
done
if ! systemd-analyze verify --man=no "$work"/*.service > "$work/out.txt" 2>&1 || [ -s "$work/out.txt" ]; then
  echo "FAIL systemd-analyze verify:"; cat "$work/out.txt"; exit 1
fi
echo "ok   systemd-analyze verify: $(cd "$work" && echo *.service)"
