#!/usr/bin/env python3
"""Summary table and chart of kvpr-bench-throughput's JSON.

usage: throughput_report.py throughput.json OUT_DIR [KVPR_PLOT]
Writes OUT_DIR/table.md and OUT_DIR/throughput-chart.json (and throughput.png when the kvpr-plot
binary is given).
"""
import json
import subprocess
import sys

doc = json.load(open(sys.argv[1]))
out = sys.argv[2]
rows = doc["results"]
lines = [
    "| shape | link ratio | kvpr plan: b x G, l | kvpr tok/s | FlexGen plan: b x G | FlexGen tok/s "
    "| paper b32 G1 tok/s | kvpr / FlexGen | kvpr / paper | prediction error (kvpr, FlexGen, paper) |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    k, f, p = r["kvpr"], r["flexgen"], r["paper_b32_g1"]
    l = round(k["ratio"] * r["context"])
    lines.append(
        f"| {r['shape']} | {r['setting']} | {k['micro_batch']} x {k['micro_batches']}, l {l} "
        f"| {k['tokens_per_s']:.2f} | {f['micro_batch']} x {f['micro_batches']} "
        f"| {f['tokens_per_s']:.2f} | {p['tokens_per_s']:.2f} | {r['kvpr_over_flexgen']:.3f}x "
        f"| {r['kvpr_over_paper_setting']:.2f}x | {100 * k['prediction_error']:+.1f}%, "
        f"{100 * f['prediction_error']:+.1f}%, {100 * p['prediction_error']:+.1f}% |")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
xs = list(range(1, len(rows) + 1))
chart = {
    "title": "decode tokens/s, weights and K,V in host memory",
    "x_label": "setting: " + ", ".join(f"{i} {r['shape']} {r['setting'].split('-')[0]}"
                                       for i, r in zip(xs, rows)),
    "y_label": "tokens/s (scaled shape)",
    "series": [
        {"name": "kvpr throughput plan", "x": xs, "y": [r["kvpr"]["tokens_per_s"] for r in rows],
         "rgb": "#1f77b4"},
        {"name": "FlexGen-style (transfer, best plan)", "x": xs,
         "y": [r["flexgen"]["tokens_per_s"] for r in rows], "rgb": "#d62728"},
        {"name": "paper setting (b 32, G 1)", "x": xs,
         "y": [r["paper_b32_g1"]["tokens_per_s"] for r in rows], "rgb": "#2ca02c", "dashed": True},
    ],
}
json.dump(chart, open(f"{out}/throughput-chart.json", "w"), indent=1)
if len(sys.argv) > 3:
    subprocess.run([sys.argv[3], f"{out}/throughput-chart.json", f"{out}/throughput.png"], check=True)
print("\n".join(lines))
