#!/usr/bin/env python3
"""Overhead of the service split: decode-step time of the multi-process deployment (kvpr up +
kvpr run --connect: kvstore daemon mapped over UCX, planner replica over ZeroMQ, worker process)
against the embedded run (everything in one process), on the same model, measured side by side in
one run and interleaved (embedded, deployment, embedded, ...) so machine noise hits both alike.

usage: services_overhead.py KVPR_BINARY OUT.json [--preset opt-125m] [--rounds 5] [--tokens 32]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def one(kvpr, model, prompt, tokens, policy, connect=None):
    cmd = [kvpr, "run", "--model", model, "--prompt-tokens", prompt, "--max-new-tokens",
           str(tokens), "--policy", policy, "--json", "--quiet"]
    if connect:
        cmd += ["--connect", connect]
    else:
        cmd += ["--threads", "1"]
    start = time.perf_counter()
    out = json.loads(run(cmd).stdout)
    wall = time.perf_counter() - start
    t = out["timings"]
    return {"step_s": t["decode_phases_s"]["total"] / t["decode_steps"], "wall_s": wall,
            "tokens": out["tokens"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvpr")
    ap.add_argument("out")
    ap.add_argument("--preset", default="opt-125m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--policy", default="kvpr")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kvpr-overhead-")
    model = os.path.join(work, "model")
    run([a.kvpr, "gen-model", "--arch", "opt", "--preset", a.preset, "--out", model, "--quiet"])
    prompt = ",".join(str(2 + (i * 37) % 5000) for i in range(a.prompt_len))
    run_dir = os.path.join(work, "run")
    up = json.loads(run([a.kvpr, "up", "--model", model, "--run-dir", run_dir,
                         "--threads", "1"]).stdout)
    if "keys" in up:
        os.environ["KVPR_KEYS"] = up["keys"]  # kvpr run --connect authenticates with the deployment's keys
    try:
        emb, dep = [], []
        for _ in range(a.rounds):
            emb.append(one(a.kvpr, model, prompt, a.tokens, a.policy))
            dep.append(one(a.kvpr, model, prompt, a.tokens, a.policy, up["connect"]))
        assert all(r["tokens"] == emb[0]["tokens"] for r in emb + dep), "tokens differ"
    finally:
        run([a.kvpr, "down", "--run-dir", run_dir])
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    result = {
        "benchmark": "services_overhead",
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cpus",
        "model": a.preset, "prompt_tokens": a.prompt_len, "new_tokens": a.tokens,
        "policy": a.policy, "rounds": a.rounds,
        "embedded": {"step_s_median": med(emb, "step_s"), "wall_s_median": med(emb, "wall_s"),
                     "runs": emb},
        "deployment": {"step_s_median": med(dep, "step_s"), "wall_s_median": med(dep, "wall_s"),
                       "runs": dep},
    }
    result["step_ratio_deployment_over_embedded"] = (
        result["deployment"]["step_s_median"] / result["embedded"]["step_s_median"])
    for r in emb + dep:
        del r["tokens"]
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"decode step: embedded {1e3 * result['embedded']['step_s_median']:.2f} ms, "
          f"deployment {1e3 * result['deployment']['step_s_median']:.2f} ms, ratio "
          f"{result['step_ratio_deployment_over_embedded']:.3f} "
          f"(medians of {a.rounds} interleaved runs; {a.tokens} tokens after a "
          f"{a.prompt_len}-token prompt)")


if __name__ == "__main__":
    sys.exit(main())
