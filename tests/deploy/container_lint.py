#!/usr/bin/env python3
"""Lint of deploy/container/Containerfile*: the commands the builds run refer to files that
exist in the repo (and scripts they execute are executable), COPY sources exist, the build stages
install dependencies only through tools/install-deps.sh, and the README's build commands are the
ones the images run: the top-level README's install command and cmake/ninja invocations, and
deploy/README.md's "## Build" block line for line (the -DKVPR_CUDA value aside); every binary
(kvpr and the services tools/CMakeLists.txt places next to it: kvpr-kvstore, kvpr-planner,
kvpr-worker, kvpr-gateway) is built by the build stage and copied into the image, and the final
stage installs the packages runtime-packages.sh derives from all of them.
  container_lint.py REPO"""
import glob
import os
import re
import shlex
import sys

repo = os.path.abspath(sys.argv[1])
problems = []
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:tools|deploy|cmake|services|common|tests|kernels|schemas|bench)/[\w./@*+-]*)")


def instructions(path):
    """(keyword, text) per instruction, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in open(path):
        s = line.rstrip("\n")
        if not buf and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if buf and s.lstrip().startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        kw, _, rest = buf.strip().partition(" ")
        out.append((kw.upper(), rest.strip()))
        buf = ""
    return out


def commands(run):
    """Simple commands of a RUN line (split at &&, ||, ;, |)."""
    return [c.strip() for c in re.split(r"&&|\|\||;|\|", run) if c.strip()]


def block_after(path, heading):
    """Lines of the first ```sh block after `heading`."""
    text = open(path).read()
    at = text.find(heading)
    if at < 0:
        return None
    m = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    return [l.split("#")[0].strip() for l in m.group(1).splitlines() if l.split("#")[0].strip()] if m else None


def normalize(cmd):
    return re.sub(r"\s+", " ", re.sub(r"-DKVPR_CUDA=\w+", "-DKVPR_CUDA=*", cmd)).strip()


# The service binaries `kvpr up` starts from kvpr's own folder (tools/CMakeLists.txt).
cmake_tools = open(os.path.join(repo, "tools/CMakeLists.txt")).read()
m = re.search(r"set_target_properties\(([\w\s-]+?)\s+PROPERTIES\s+RUNTIME_OUTPUT_DIRECTORY", cmake_tools)
binaries = ["kvpr"] + (m.group(1).split() if m else [])
if "kvpr-gateway" not in binaries:
    problems.append(f"tools/CMakeLists.txt does not place kvpr-gateway next to kvpr: {binaries}")

top = block_after(os.path.join(repo, "README.md"), "## Building by hand")
deploy_build = block_after(os.path.join(repo, "deploy/README.md"), "## Build")
if not top:
    problems.append("README.md has no ```sh block under '## Building by hand'")
if not deploy_build:
    problems.append("deploy/README.md has no ```sh block under '## Build'")

files = sorted(glob.glob(os.path.join(repo, "deploy/container/Containerfile*")))
files = [f for f in files if not f.endswith(".dockerignore")]
if not files:
    problems.append("no deploy/container/Containerfile*")
for path in files:
    rel = os.path.relpath(path, repo)
    ins = instructions(path)
    stages, stage = [], None
    for kw, rest in ins:
        if kw == "FROM":
            stage = {"from": rest, "runs": [], "copies": []}
            stages.append(stage)
        elif kw == "RUN" and stage is not None:
            stage["runs"].append(rest)
        elif kw == "COPY" and stage is not None:
            stage["copies"].append(rest)
    if not stages:
        problems.append(f"{rel}: no FROM")
        continue
    runs = [normalize(c) for s in stages for r in s["runs"] for c in commands(r)]
    for s in stages:
        builds = any(re.fullmatch(r"\. \S+", c) for c in s["copies"])  # COPY . /src: a build stage
        for c in s["copies"]:
            parts = [p for p in shlex.split(c) if not p.startswith("--")]
            if any(p.startswith("--from") for p in shlex.split(c)):
                continue
            for src in parts[:-1]:
                if not glob.glob(os.path.join(repo, src)):
                    problems.append(f"{rel}: COPY source {src} does not exist in the repo")
        for r in s["runs"]:
            for c in commands(r):
                words = shlex.split(c, comments=False) if c.count("'") % 2 == 0 else c.split()
                for word in words:
                    for m in REPO_PATH.findall(word):
                        if not glob.glob(os.path.join(repo, m)):
                            problems.append(f"{rel}: RUN refers to {m}, which does not exist")
                # A script run as the command must be executable.
                first = next((w for w in words if "=" not in w), "")
                if REPO_PATH.fullmatch(first) and not os.access(os.path.join(repo, first), os.X_OK):
                    problems.append(f"{rel}: {first} is run but not executable")
                if builds and re.search(r"apt-get\s+install|apt\s+install|pip\s+install", c):
                    problems.append(f"{rel}: build stage installs outside tools/install-deps.sh: {c}")
        if builds:
            if not s["from"].split()[0].startswith("debian:12"):
                problems.append(f"{rel}: the build stage is {s['from']}, not debian:12")
            stage_runs = [normalize(c) for r in s["runs"] for c in commands(r)]
            for line in deploy_build or []:
                if normalize(line) not in stage_runs:
                    problems.append(f"{rel}: deploy/README.md's build command '{line}' is not run")
            if top:
                if top[0] not in stage_runs:
                    problems.append(f"{rel}: README.md's install command '{top[0]}' is not run")
                for line in top[1:]:
                    for part in commands(line):
                        base = normalize(part)
                        if base.startswith(("cmake", "ninja")) and not any(
                                r.startswith(base.split(" -G ")[0]) for r in stage_runs):
                            problems.append(f"{rel}: README.md's '{part}' has no counterpart")
    # Every binary built and copied; the runtime packages derived from what was copied.
    for s in stages:
        if not any(re.fullmatch(r"\. \S+", c) for c in s["copies"]):
            continue
        cmds = [re.sub(r"\s+", " ", c) for r in s["runs"] for c in commands(r)]
        built = set().union(*[set(c.split()[3:]) for c in cmds if c.startswith("ninja -C build ")])
        copied = set().union(*[{os.path.basename(w) for w in c.split()[1:-1]}
                               for c in cmds if c.startswith("cp ") and c.endswith("/out/bin/")])
        for b in binaries:
            if b not in built:
                problems.append(f"{rel}: the build stage does not build {b} (ninja -C build ...)")
            if b not in copied:
                problems.append(f"{rel}: the build stage does not copy {b} to /out/bin/")
        if not any("runtime-packages.sh /out/bin/*" in c for c in cmds):
            problems.append(f"{rel}: the runtime packages are not derived from /out/bin/*")
    final = stages[-1]
    if not any("packages.txt" in r for r in final["runs"]) or not any(
            "/out/bin/" in c and "--from=" in c for c in final["copies"]):
        problems.append(f"{rel}: the final stage does not install packages.txt and copy /out/bin/")
    if rel.endswith(".cuda") and not any("nvidia/cuda" in s["from"] or "nvidia/cuda" in open(path).read()
                                         for s in stages):
        problems.append(f"{rel}: no nvidia/cuda image")

if problems:
    for p in problems:
        print(f"FAIL {p}")
    sys.exit(1)
print(f"ok   {', '.join(os.path.relpath(f, repo) for f in files)}: every RUN/COPY path exists, "
      f"installs go through '{top[0]}', README build commands are the ones run, "
      f"{' '.join(binaries)} built and shipped")
