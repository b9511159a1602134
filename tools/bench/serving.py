#!/usr/bin/env python3
"""Serving benchmark: continuous batching against one request at a time, through the gateway.

In the spirit of vLLM's benchmark_serving: `kvpr up` with 2 workers and a gateway on an
OPT-125m-shaped model (CPU backend), streamed completions over HTTP (server-sent events), and
  1. closed loop: 1 and 8 concurrent streams of fixed length (the throughput and inter-token
     targets: 8 streams >= 4x the output tokens/s of one at a time, inter-token p50 <= 1.5x a
     lone stream's);
  2. open loop: Poisson arrivals at several rates, prompt and output lengths log-normal;
  3. the gateway's cost per token: one stream through the gateway against `kvpr run --connect`
     to the same worker, both timed by the client as (T(n) - T(1)) / (n - 1) (target <= 2%).
Each load runs against a deployment with --max-batch 32 and one with --max-batch 1, side by side
in the same run. Writes RESULTS.json and a plot (kvpr-plot) beside it.

usage: serving.py KVPR OUT.json [--preset opt-125m] [--layers N] [--rates 1,2,4] [--duration S]
"""
import argparse
import http.client
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stream(url, model, prompt, max_tokens, out, extra=None):
    """One streamed completion; appends {ttft, itl[], e2e, tokens, ok} to out."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}, **(extra or {})})
    start = time.perf_counter()
    times, tokens, ok = [], 0, False
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        res = conn.getresponse()
        if res.status != 200:
            raise RuntimeError(f"HTTP {res.status}: {res.read()[:200]!r}")
        for raw in res:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                ok = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message"))
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                times.append(time.perf_counter())
    except Exception as e:  # recorded, counted as a failure
        out.append({"ok": False, "error": str(e)})
        return
    finally:
        conn.close()
    end = time.perf_counter()
    if not times:
        out.append({"ok": False, "error": "no text"})
        return
    out.append({"ok": ok, "ttft": times[0] - start, "e2e": end - start, "tokens": tokens,
                "itl": [b - a for a, b in zip(times, times[1:])]})


def summarize(results, wall):
    good = [r for r in results if r["ok"]]
    itl = [x for r in good for x in r["itl"]]
    tokens = sum(r["tokens"] for r in good)
    return {
        "requests": len(results), "failed": len(results) - len(good),
        "output_tokens": tokens, "wall_s": wall,
        "output_tokens_per_s": tokens / wall if wall > 0 else 0,
        "ttft_p50_s": pct([r["ttft"] for r in good], 50),
        "ttft_p99_s": pct([r["ttft"] for r in good], 99),
        "itl_p50_s": pct(itl, 50), "itl_p99_s": pct(itl, 99),
        "e2e_p50_s": pct([r["e2e"] for r in good], 50),
        "e2e_p99_s": pct([r["e2e"] for r in good], 99),
    }


def closed_loop(url, model, concurrency, prompt, max_tokens):
    out = []
    threads = [threading.Thread(target=stream, args=(url, model, prompt, max_tokens, out))
               for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(out, time.perf_counter() - start)


def lognormal_int(rng, median, sigma, lo, hi):
    return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma)))))


def open_loop(url, model, rate, duration, seed, words):
    rng = random.Random(seed)
    out, threads = [], []
    start = time.perf_counter()
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        n_prompt = lognormal_int(rng, 48, 0.6, 8, 400)
        n_out = lognormal_int(rng, 32, 0.6, 4, 160)
        prompt = " ".join(rng.choice(words) for _ in range(n_prompt))
        delay = start + t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=stream, args=(url, model, prompt, n_out, out))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    return summarize(out, time.perf_counter() - start)


def up(kvpr, model, run_dir, max_batch, workers=2):
    d = json.loads(run([kvpr, "up", "--model", model, "--workers", str(workers), "--planners", "1",
                        "--gateways", "1", "--threads", "1", "--run-dir", run_dir,
                        "--max-batch", str(max_batch)]).stdout)
    return d


def per_token_connect(kvpr, model, endpoint, prompt_tokens, n):
    def wall(k):
        s = time.perf_counter()
        run([kvpr, "run", "--model", model, "--prompt-tokens", prompt_tokens,
             "--max-new-tokens", str(k), "--connect", endpoint, "--quiet"])
        return time.perf_counter() - s
    return wall(n), wall(1)


def per_token_gateway(url, model, prompt, n):
    def wall(k):
        out = []
        s = time.perf_counter()
        stream(url, model, prompt, k, out, {"ignore_eos": True})
        if not out[0]["ok"]:
            raise RuntimeError(out[0]["error"])
        return time.perf_counter() - s
    return wall(n), wall(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kvpr")
    ap.add_argument("out")
    ap.add_argument("--preset", default="opt-125m")
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--rates", default="1,2,4")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kvpr-serving-")
    model = os.path.join(work, "model")
    gen = [a.kvpr, "gen-model", "--arch", "opt", "--preset", a.preset, "--out", model, "--quiet"]
    if a.layers:
        gen += ["--layers", str(a.layers)]
    run(gen)
    name = os.path.basename(model)
    words = ("the of and to in is was for on that with as by at from his her an be this which "
             "story river mountain light night city road window garden letter music").split()
    prompt = " ".join(words[i % len(words)] for i in range(64))
    results = {"preset": a.preset, "layers": a.layers, "backend": "cpu", "workers": 2,
               "modes": {}}
    for mode, max_batch in (("continuous", 32), ("one_at_a_time", 1)):
        run_dir = os.path.join(work, f"run-{mode}")
        d = up(a.kvpr, model, run_dir, max_batch)
        try:
            url = d["http"]
            stream(url, name, "warm up", 4, [])
            r = {"max_batch": max_batch}
            r["lone"] = closed_loop(url, name, 1, prompt, a.tokens)
            r["concurrent"] = closed_loop(url, name, a.concurrency, prompt, a.tokens)
            r["poisson"] = {}
            for rate in [float(x) for x in a.rates.split(",")]:
                r["poisson"][str(rate)] = open_loop(url, name, rate, a.duration, a.seed, words)
                print(f"{mode} rate {rate}/s: {r['poisson'][str(rate)]}", file=sys.stderr)
            if mode == "continuous":
                # The gateway's cost per token: interleaved rounds, client-timed both ways.
                endpoint = d["connect"].split(",")[0]
                if "keys" in d:
                    os.environ["KVPR_KEYS"] = d["keys"]  # the deployment's client key
                id_list = [2 + (i * 37) % 5000 for i in range(64)]
                ids = ",".join(str(i) for i in id_list)
                g, c = [], []
                for _ in range(a.rounds):  # the same prompt ids both ways
                    gn, g1 = per_token_gateway(url, name, id_list, a.tokens)
                    cn, c1 = per_token_connect(a.kvpr, model, endpoint, ids, a.tokens)
                    g.append((gn - g1) / (a.tokens - 1))
                    c.append((cn - c1) / (a.tokens - 1))
                r["gateway_per_token_s"] = statistics.median(g)
                r["connect_per_token_s"] = statistics.median(c)
                r["gateway_over_connect"] = statistics.median(g) / statistics.median(c)
            results["modes"][mode] = r
        finally:
            run([a.kvpr, "down", "--run-dir", run_dir])
        # The same closed loop on one worker: one at a time there is one stream at a time.
        run_dir = os.path.join(work, f"run-{mode}-1")
        d = up(a.kvpr, model, run_dir, max_batch, workers=1)
        try:
            url = d["http"]
            stream(url, name, "warm up", 4, [])
            r["one_worker"] = {"lone": closed_loop(url, name, 1, prompt, a.tokens),
                               "concurrent": closed_loop(url, name, a.concurrency, prompt,
                                                         a.tokens)}
        finally:
            run([a.kvpr, "down", "--run-dir", run_dir])
    cont, one = results["modes"]["continuous"], results["modes"]["one_at_a_time"]
    c1, o1 = cont["one_worker"], one["one_worker"]
    results["ratios"] = {
        # 2 workers: one at a time still serves 2 streams at once, so 4x is the ceiling there.
        "concurrent_tokens_per_s_continuous_over_one_at_a_time_2_workers":
            cont["concurrent"]["output_tokens_per_s"] / one["concurrent"]["output_tokens_per_s"],
        "concurrent_tokens_per_s_continuous_over_one_at_a_time_1_worker":
            c1["concurrent"]["output_tokens_per_s"] / o1["concurrent"]["output_tokens_per_s"],
        "concurrent_itl_p50_over_lone_itl_p50_1_worker":
            c1["concurrent"]["itl_p50_s"] / c1["lone"]["itl_p50_s"],
        "concurrent_itl_p50_over_lone_itl_p50_2_workers":
            cont["concurrent"]["itl_p50_s"] / cont["lone"]["itl_p50_s"],
        "gateway_over_connect_per_token": cont["gateway_over_connect"],
    }
    ratios = results["ratios"]
    results["targets"] = {
        "throughput_4x_1_worker":
            ratios["concurrent_tokens_per_s_continuous_over_one_at_a_time_1_worker"] >= 4,
        "itl_1_5x_1_worker": ratios["concurrent_itl_p50_over_lone_itl_p50_1_worker"] <= 1.5,
        "gateway_2pct": ratios["gateway_over_connect_per_token"] <= 1.02,
    }
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    rates = [float(x) for x in a.rates.split(",")]
    chart = {"title": f"kvpr serving, {a.preset}, 2 CPU workers",
             "x_label": "request rate (requests/s, Poisson)",
             "y_label": "output tokens/s", "series": []}
    for mode, rgb in (("continuous", "#1f77b4"), ("one_at_a_time", "#d62728")):
        chart["series"].append({
            "name": f"{mode.replace('_', ' ')} (max-batch {results['modes'][mode]['max_batch']})",
            "x": rates, "rgb": rgb,
            "y": [results["modes"][mode]["poisson"][str(r)]["output_tokens_per_s"] for r in rates]})
    chart_path = os.path.splitext(a.out)[0] + ".chart.json"
    with open(chart_path, "w") as f:
        json.dump(chart, f)
    plot = os.path.join(os.path.dirname(os.path.abspath(a.kvpr)), "plot", "kvpr-plot")
    if os.path.exists(plot):
        run([plot, chart_path, os.path.splitext(a.out)[0] + ".png"])
    print(json.dumps({"ratios": results["ratios"], "targets": results["targets"]}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
