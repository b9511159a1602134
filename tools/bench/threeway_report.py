#!/usr/bin/env python3
"""Summary tables and chart of kvpr-bench-threeway's JSON.

usage: threeway_report.py threeway.json [threeway-opt.json] OUT_DIR [KVPR_PLOT]
Writes OUT_DIR/table.md and OUT_DIR/threeway-chart.json (and threeway.png when the kvpr-plot
binary is given): each (b, s) setting's measured step against the host share of the context,
relative to its `transfer` step, with the share the scheduler chose.
"""
import json
import subprocess
import sys

args = sys.argv[1:]
gqa = json.load(open(args.pop(0)))
opt = json.load(open(args.pop(0))) if args[0].endswith(".json") else None
out = args.pop(0)
plot = args.pop(0) if args else None

lines = [
    f"GQA shape (h {gqa['model']['h']}, {gqa['model']['n_heads']} heads / "
    f"{gqa['model']['n_kv_heads']} KV heads): host attention "
    f"{gqa['host_attn_bytes_per_s'] / 1e9:.2f} GB/s per thread, link "
    f"{gqa['link_bytes_per_s'] / 1e9:.2f} GB/s",
    "",
    "| b | s | transfer step / KV (ms) | three-way chosen share: step / KV (ms) "
    "| KV speed-up vs transfer | best share (sweep) | chosen / best (side by side) |",
    "|---|---|---|---|---|---|---|",
]
for r in gqa["results"]:
    t, c = r["transfer"], r["three_way"]
    lines.append(
        f"| {r['b']} | {r['s']} | {1e3 * t['step_s']:.1f} / {1e3 * t['kv_s']:.1f} "
        f"| {r['chosen_host_ratio']:.3f}: {1e3 * c['step_s']:.1f} / {1e3 * c['kv_s']:.1f} "
        f"| {r['kv_speedup_vs_transfer']:.2f}x | {r['best_host_ratio']:.3f} "
        f"| {r['chosen_over_best']:.3f} |")
if opt:
    lines += [
        "",
        f"MHA shape (OPT-6.7B: h {opt['model']['h']}, {opt['model']['n_heads']} heads): host "
        f"{opt['host_attn_bytes_per_s'] / 1e9:.2f} GB/s per thread, link "
        f"{opt['link_bytes_per_s'] / 1e9:.2f} GB/s",
        "",
        "| b | s | transfer step (ms) | two-way plan step (ms) | three-way plan step (ms) "
        "| three-way / two-way |",
        "|---|---|---|---|---|---|",
    ]
    for r in opt["results"]:
        two = sorted(r["two_way_s"])[len(r["two_way_s"]) // 2]
        three = sorted(r["three_way_s"])[len(r["three_way_s"]) // 2]
        lines.append(
            f"| {r['b']} | {r['s']} | {1e3 * r['transfer']['step_s']:.1f} | {1e3 * two:.1f} "
            f"| {1e3 * three:.1f} | {r['three_over_two_way']:.3f} |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")

colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
series = []
for i, r in enumerate(gqa["results"]):
    base = r["transfer"]["step_s"]
    points = sorted([(0.0, base)] + [(p["host_ratio"], p["step_s"]) for p in r["sweep"]])
    colour = colours[i % len(colours)]
    series.append({"name": f"b {r['b']}, s {r['s']}: sweep", "x": [x for x, _ in points],
                   "y": [y / base for _, y in points], "rgb": colour})
    series.append({"name": f"b {r['b']}, s {r['s']}: chosen",
                   "x": [r["chosen_host_ratio"]] * 2,
                   "y": [r["three_way"]["step_s"] / base, 1.0], "rgb": colour, "dashed": True})
chart = {
    "title": "decode step vs host share of the context (GQA, link = host rate / 4)",
    "x_label": "share of each context attended on the host (0: all K,V over the link)",
    "y_label": "step time / transfer step",
    "series": series,
}
json.dump(chart, open(f"{out}/threeway-chart.json", "w"), indent=1)
if plot:
    subprocess.run([plot, f"{out}/threeway-chart.json", f"{out}/threeway.png"], check=True)
print("\n".join(lines))
