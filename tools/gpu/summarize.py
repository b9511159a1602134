#!/usr/bin/env python3
"""Markdown summary of one tools/gpu-check run directory (stdlib only).

Reads status.txt, tests/*.json (GoogleTest JSON reports), profile/probe.json (cuda_probe) and
bench/decode.json (kvpr-bench-decode) under OUT_DIR and prints tables, plus the issue's targets
for the KV-load phase at s >= 1024: pipelined kvpr at least 1.8x faster than transfer, and within
15% of the lower bound LB. Missing inputs are reported as missing, never invented.

Usage: summarize.py OUT_DIR > OUT_DIR/summary.md
"""
import datetime
import glob
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"_error": str(e)}


def device_name(out):
    try:
        with open(os.path.join(out, "env", "nvidia-smi.txt")) as f:
            for line in f:
                if "Product Name" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    probe = load(os.path.join(out, "profile", "probe.json"))
    return probe.get("device", "unknown device")


def tests_section(out):
    lines = ["## Tests", "", "| binary | passed | failed | skipped |", "|---|---|---|---|"]
    failed_names = []
    for path in sorted(glob.glob(os.path.join(out, "tests", "*.json"))):
        report = load(path)
        if "testsuites" not in report:
            continue
        passed = failed = skipped = 0
        for suite in report["testsuites"]:
            for case in suite.get("testsuite", []):
                if case.get("failures"):
                    failed += 1
                    failed_names.append(suite["name"] + "." + case["name"])
                elif case.get("result") == "SKIPPED":
                    skipped += 1
                else:
                    passed += 1
        lines.append(f"| {os.path.basename(path)[:-5]} | {passed} | {failed} | {skipped} |")
    if len(lines) == 4:
        lines.append("| (no test reports) | | | |")
    if failed_names:
        lines += ["", "Failed: " + ", ".join(failed_names)]
    return lines


def status_section(out):
    lines = ["## Steps", "", "| step | exit | seconds |", "|---|---|---|"]
    try:
        with open(os.path.join(out, "status.txt")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    lines.append(f"| {parts[0]} | {parts[1]} | {parts[2]} |")
    except OSError:
        lines.append("| (no status.txt) | | |")
    return lines


def probe_section(out):
    probe = load(os.path.join(out, "profile", "probe.json"))
    if "copies" not in probe:
        return ["## Device profile", "", "No probe results (" + probe.get("_error", "?") + ")."]
    sizes = [65536, 1 << 20, 16 << 20, 256 << 20]
    lines = ["## Device profile (cuda_probe)", "", "Copy bandwidth, GB/s:", "",
             "| host memory | direction | 64 KiB | 1 MiB | 16 MiB | 256 MiB |", "|---|---|---|---|---|---|"]
    rows = {}
    for c in probe["copies"]:
        rows.setdefault((c["host"], c["direction"]), {})[c["bytes"]] = c["bytes_per_s"]
    for (host, direction), by_size in rows.items():
        cells = [f"{by_size[s] / 1e9:.1f}" if s in by_size else "-" for s in sizes]
        lines.append(f"| {host} | {direction} | " + " | ".join(cells) + " |")
    gemm = probe.get("gemm", {})
    ms = sorted({r["m"] for r in gemm.get("rates", [])})
    lines += ["", f"cuBLAS [m, {gemm.get('h')}] x [{gemm.get('h')}, 2*{gemm.get('h_kv')}], TFLOP/s:", "",
              "| dtype | " + " | ".join(f"m={m}" for m in ms) + " |", "|---|" + "---|" * len(ms)]
    by_dtype = {}
    for r in gemm.get("rates", []):
        by_dtype.setdefault(r["dtype"], {})[r["m"]] = r["flops_per_s"]
    for dtype, by_m in by_dtype.items():
        lines.append(f"| {dtype} | " + " | ".join(f"{by_m[m] / 1e12:.1f}" if m in by_m else "-" for m in ms) + " |")
    beside = probe.get("copy_beside_gemm", [])
    if beside:
        lines += ["", "Host-to-device copies of 2 MiB from registered memory, alone and while fp16 GEMMs "
                  "[m, h] x [h, 2*h_kv] run on another stream, GB/s:", "",
                  "| GEMM m | alone | beside the GEMMs |", "|---|---|---|"]
        for r in beside:
            lines.append(f"| {r['m']} | {r['alone_bytes_per_s'] / 1e9:.1f} | {r['beside_bytes_per_s'] / 1e9:.1f} |")
    return lines


def bench_section(out):
    bench = load(os.path.join(out, "bench", "decode.json"))
    if "shapes" not in bench:
        return ["## Decode benchmark", "", "No benchmark results (" + bench.get("_error", "?") + ")."]
    m = bench["model"]
    lines = ["## Decode benchmark (kvpr-bench-decode)", "",
             f"Backend: {bench['backend']}. Model: {m['preset']} shape, {m['layers']} layers, h {m['h']}, h_kv {m['h_kv']}, {m['dtype']} "
             f"weights and store; compute {bench['compute_dtype']}; store blocks of {bench['block_tokens']} "
             f"tokens; pipelined chunk {bench['chunk']} rows; median of {bench['steps']} steps "
             f"after {bench['warmup']} warm-up.", "",
             "KV-load time = a step's time minus resident's at the same shape. LB = layers * min over l of "
             "max((A(l)+K(l))/B, 4*l*h*h_kv/F) with B, F measured by the benchmark.", "",
             "| b | s | B GB/s | F TFLOP/s | policy | l | step ms | KV-load ms | LB ms | KV-load / LB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    targets = []
    for sh in bench["shapes"]:
        lb = sh["lb_s"]
        for r in sh["runs"]:
            kv = r.get("kv_load_s")
            lines.append(
                f"| {sh['b']} | {sh['s']} | {sh['rates']['h2d_bytes_per_s'] / 1e9:.1f} | "
                f"{sh['rates']['gemm_flops_per_s'] / 1e12:.1f} | {r['policy']} | {r['split_l']} | "
                f"{r['median_step_s'] * 1e3:.2f} | {'-' if kv is None else f'{kv * 1e3:.2f}'} | {lb * 1e3:.2f} | "
                f"{'-' if kv is None or lb <= 0 else f'{kv / lb:.2f}'} |")
        summary = sh.get("summary", {})
        if sh["s"] >= 1024 and "kv_load_speedup_pipelined_vs_transfer" in summary:
            speedup = summary["kv_load_speedup_pipelined_vs_transfer"]
            over = summary["pipelined_kv_load_over_lb"]
            targets.append(f"| {sh['b']} | {sh['s']} | {speedup:.2f} ({'met' if speedup >= 1.8 else 'missed'}) | "
                           f"{over:.2f} ({'met' if over <= 1.15 else 'missed'}) |")
    lines += ["", "Targets for the KV-load phase at s >= 1024 (issue 5): pipelined kvpr >= 1.8x faster than "
              "transfer, and within 15% of LB.", "",
              "| b | s | KV-load speedup vs transfer | KV-load / LB |", "|---|---|---|---|"]
    lines += targets or ["| (no shape with s >= 1024 and all policies) | | | |"]
    return lines


def peer_section(out):
    """kvpr's decode step against transformers' with its KV cache offloaded, same checkpoint,
    same (b, s); and whether the two agree on greedy tokens."""
    peer = load(os.path.join(out, "bench", "hf_peer.json"))
    lines = ["## The peer: Hugging Face transformers, KV cache offloaded (tools/gpu/hf_peer.py)", ""]
    if "runs" not in peer:
        return lines + ["No peer results (" + peer.get("_error", "?") + ")."]
    lines += [f"transformers {peer.get('transformers', '?')}, torch {peer.get('torch', '?')}, "
              f"{peer.get('device', '?')}; median of {peer['steps']} decode steps.", ""]
    bench = load(os.path.join(out, "bench", "decode.json"))
    kvpr = {}
    for sh in bench.get("shapes", []):
        for r in sh["runs"]:
            if r["policy"] == "kvpr-pipelined":
                kvpr[(sh["b"], sh["s"])] = r["median_step_s"]
    hf = {}
    for r in peer["runs"]:
        if "median_step_s" in r:
            hf.setdefault((r["b"], r["s"]), {})[r["cache_implementation"]] = r["median_step_s"]
    lines += ["Target: kvpr (pipelined) at least 1.7x faster per decode step than the peer's "
              "offloaded_static cache (offloaded where this version has no static one).", "",
              "| b | s | kvpr ms | HF offloaded ms | HF offloaded_static ms | speed-up vs peer |",
              "|---|---|---|---|---|---|"]
    for key in sorted(set(kvpr) | set(hf)):
        k = kvpr.get(key)
        h = hf.get(key, {})
        base = h.get("offloaded_static", h.get("offloaded"))
        ratio = f"{base / k:.2f} ({'met' if base / k >= 1.7 else 'missed'})" if k and base else "-"
        cell = lambda v: "-" if v is None else f"{v * 1e3:.2f}"
        lines.append(f"| {key[0]} | {key[1]} | {cell(k)} | {cell(h.get('offloaded'))} | "
                     f"{cell(h.get('offloaded_static'))} | {ratio} |")
    run = load(os.path.join(out, "bench", "kvpr-run-peer.json"))
    ours = run.get("tokens")
    theirs = peer.get("greedy", {}).get("tokens")
    if ours is not None and theirs is not None:
        same = sum(1 for a, b in zip(ours, theirs) if a == b)
        lines += ["", f"Greedy tokens of prompt {peer['greedy']['prompt_tokens']}: kvpr {ours}, "
                  f"transformers {theirs}: {same} of {len(theirs)} the same."]
    else:
        lines += ["", "Greedy tokens: not compared (kvpr run or the peer gave none)."]
    if peer.get("errors"):
        lines += ["", "Peer errors:"] + [f"- {e}" for e in peer["errors"][:12]]
    return lines


def variants_section(out):
    """The decode benchmark again with one knob changed (run.sh's decode-* steps): the copy path."""
    lines = ["## Copy path variants (kvpr-bench-decode, one knob changed)", "",
             "Effective link rate = host-to-device bytes of a step / the copy queue's busy time.", "",
             "| variant | b | s | policy | step ms | KV-load ms | copy busy ms | effective GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    files = sorted(glob.glob(os.path.join(out, "bench", "decode*.json")))
    for path in files:
        bench = load(path)
        name = os.path.basename(path)[len("decode"):-len(".json")].lstrip("-") or "default"
        for sh in bench.get("shapes", []):
            for r in sh["runs"]:
                busy = r.get("mean_phases_s", {}).get("transfer", 0.0)
                kv = r.get("kv_load_s")
                rate = r.get("h2d_bytes_per_step", 0.0) / busy / 1e9 if busy > 0 else 0.0
                lines.append(f"| {name} | {sh['b']} | {sh['s']} | {r['policy']} | "
                             f"{r['median_step_s'] * 1e3:.2f} | {'-' if kv is None else f'{kv * 1e3:.2f}'} | "
                             f"{busy * 1e3:.2f} | {rate:.1f} |")
    return lines if files else []


def sweep_section(out):
    """kvpr bench --sweep on the device: the planner's chosen split against the best measured."""
    lines = ["## The planner's split against a measured sweep (kvpr bench --sweep)", "",
             "| b | s | chosen | chosen ms | best | best ms | chosen / best | worst prediction error |",
             "|---|---|---|---|---|---|---|---|"]
    files = sorted(glob.glob(os.path.join(out, "bench", "sweep-*.json")))
    for path in files:
        d = load(path)
        if "chosen" not in d:
            lines.append(f"| {os.path.basename(path)} | | no result ({d.get('_error', '?')}) | | | | | |")
            continue
        st = d.get("settings", {})
        c, b = d["chosen"], d["best"]
        ratio = d["chosen_vs_best"]
        lines.append(f"| {st.get('batch', '?')} | {st.get('context', '?')} | {c.get('policy')} l={c.get('split')} | "
                     f"{c.get('measured_s', 0) * 1e3:.2f} | {b.get('label')} l={b.get('split')} | "
                     f"{b.get('measured_s', 0) * 1e3:.2f} | {ratio:.3f} ({'met' if ratio <= 1.05 else 'missed'}) | "
                     f"{d.get('worst_prediction_error', 0):.1%} |")
    return lines if files else []


def main():
    out = sys.argv[1]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# kvpr gpu-check, {now}", "", f"Device: {device_name(out)}", ""]
    for section in (status_section, tests_section, probe_section, bench_section, peer_section,
                    sweep_section, variants_section):
        lines += section(out) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
