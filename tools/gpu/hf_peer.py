#!/usr/bin/env python3
"""The peer for issue 13: Hugging Face transformers decoding the checkpoint kvpr decodes, with its
KV cache offloaded to host memory, timed per decode step at the benchmark's (b, s).

usage: hf_peer.py --model DIR --json OUT [--batch 1,8,32] [--context 1024,4096] [--steps 5]
                  [--prompt-tokens 2,31,45] [--new-tokens 8]

For each cache implementation this transformers version has ("offloaded": the full cache in host
memory, each layer's K,V copied to the device as the layer runs, the next layer's prefetched;
"offloaded_static": the same with static shapes, the paper's latency baseline), and each (b, s):
b random prompts of s tokens go through generate() (greedy, fp16, on the GPU) for steps + 1 new
tokens; a stopping criterion, which generate() calls once per token, synchronises the device and
takes the time, so the differences between its calls are the decode steps (the first call comes
right after the prefill). The first --warmup steps (2) are left out: on an H200 they took up to
30 times a steady step while the cache allocated and pinned its host memory. The median of the
rest is reported. Also: the greedy tokens of one prompt with
the default (on-device) cache, for the comparison with `kvpr run` on the same checkpoint.

Each cache implementation runs in a child process of its own (this script with --impl), so that a
crash in one (transformers 5.17's offloaded_static segfaulted under torch.compile on an H200) costs
only its own numbers. generate() is called with disable_compile=True: the peer runs eagerly, as
the paper's baseline did. Every failure (an implementation this version lacks, a model it cannot
offload, out of memory, a crash) is recorded in the JSON under "errors" and the run goes on: a
missing peer number must not cost the rest of the device check.
"""
import os
import subprocess
import tempfile
import argparse
import json
import statistics
import sys
import time
import traceback


def ints(text):
    return [int(x) for x in text.split(",") if x]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--batch", type=ints, default=[1, 8, 32])
    ap.add_argument("--context", type=ints, default=[1024, 4096])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2,
                    help="decode steps timed but left out (the first ones allocate and pin)")
    ap.add_argument("--prompt-tokens", type=ints, default=[2, 31, 45])
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--impl", help="time only this cache implementation (the child process)")
    args = ap.parse_args()

    report = {"model": args.model, "steps": args.steps, "runs": [], "errors": []}

    def write():
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)

    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
    except Exception as e:  # no torch/transformers here: say so and leave
        report["errors"].append(f"import: {e}")
        write()
        print(f"hf_peer: {e}", file=sys.stderr)
        return 1

    report["torch"] = torch.__version__
    report["transformers"] = transformers.__version__
    report["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float16).to("cuda")
    model.eval()
    config = model.config
    vocab = config.vocab_size
    report["config"] = {k: getattr(config, k, None) for k in
                        ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "vocab_size")}

    if args.impl is None:
        return parent(args, report, write, model)

    # The child: one cache implementation at every (b, s).
    gen = torch.Generator(device="cpu").manual_seed(1)
    for impl in (args.impl,):
        for b in args.batch:
            for s in args.context:
                time_one(model, vocab, gen, impl, b, s, args, report, write)
    write()
    return 0 if any("median_step_s" in r for r in report["runs"]) else 1


def parent(args, report, write, model):
    """Greedy tokens here; each cache implementation in a child process; one merged report."""
    import torch
    # Greedy tokens with the default cache, for the comparison with kvpr run.
    try:
        ids = torch.tensor([args.prompt_tokens], device="cuda")
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=0)
        report["greedy"] = {"prompt_tokens": args.prompt_tokens,
                            "tokens": out[0, len(args.prompt_tokens):].tolist()}
    except Exception as e:
        report["errors"].append(f"greedy: {e}")
    write()
    for impl in ("offloaded", "offloaded_static"):
        with tempfile.TemporaryDirectory() as tmp:
            child_json = os.path.join(tmp, "child.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model,
                   "--json", child_json, "--batch", ",".join(map(str, args.batch)),
                   "--context", ",".join(map(str, args.context)), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--impl", impl]
            rc = subprocess.run(cmd).returncode
            try:
                with open(child_json) as f:
                    child = json.load(f)
                report["runs"] += child.get("runs", [])
                report["errors"] += child.get("errors", [])
            except (OSError, ValueError) as e:
                report["errors"].append(f"{impl}: no report from the child ({e})")
            if rc != 0:
                report["errors"].append(f"{impl}: child exit code {rc}" +
                                        (f" (signal {-rc})" if rc < 0 else ""))
        write()
    return 0 if any("median_step_s" in r for r in report["runs"]) else 1


def time_one(model, vocab, gen, impl, b, s, args, report, write):
    """Times generate() with cache `impl` on b random prompts of s tokens."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores, **kwargs):
            torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
            # never stops a sequence: one flag per row, as recent versions expect
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    run = {"cache_implementation": impl, "b": b, "s": s, "compile": False}
    try:
        ids = torch.randint(3, vocab, (b, s), generator=gen).to("cuda")
        clock = Clock()
        torch.cuda.synchronize()
        begin = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids),
                           max_new_tokens=args.warmup + args.steps + 1,
                           min_new_tokens=args.warmup + args.steps + 1, do_sample=False,
                           pad_token_id=0, cache_implementation=impl, disable_compile=True,
                           stopping_criteria=StoppingCriteriaList([clock]))
        every = [b2 - a for a, b2 in zip(clock.stamps, clock.stamps[1:])]
        run["warmup_step_s"] = every[:args.warmup]
        steps = every[args.warmup:]
        if not steps:
            raise RuntimeError(f"{len(clock.stamps)} timestamps: no decode step timed")
        run["prefill_s"] = clock.stamps[0] - begin
        run["step_s"] = steps
        run["median_step_s"] = statistics.median(steps)
        print(f"hf_peer {impl} b {b} s {s}: step {1e3 * run['median_step_s']:.2f} ms "
              f"(prefill {run['prefill_s']:.2f} s)", flush=True)
    except Exception as e:
        run["error"] = f"{type(e).__name__}: {e}"
        report["errors"].append(f"{impl} b {b} s {s}: {run['error']}")
        traceback.print_exc(limit=2)
        print(f"hf_peer {impl} b {b} s {s}: {run['error']}", flush=True)
    finally:
        torch.cuda.empty_cache()
    report["runs"].append(run)
    write()


if __name__ == "__main__":
    sys.exit(main())
