#!/usr/bin/env python3
"""Padding-free micro-batches (training.padding_free) against padded rows: the same LoRA training job on ragged data,
run twice by `llmt-engine train` on the same machine, once with each setting; reports the tokens computed (rows ×
row length, what the GEMMs and attention process), the wall time of the steps and the ratio.

The model is bench/cpu_bench.py's 20m LLaMA shape (random weights, a PEFT LoRA r 16 on all linears for the folder
layout; the job adds its own); the data are token rows with lengths drawn from a long-tailed distribution like an
instruction set's (most samples short, a few near the maximum): prompt tokens masked, answer tokens trained.

  python bench/padding_free.py [--threads 2] [--size 20m] [--samples 256] [--max-len 512] [--micro-batch 8] [--steps 8]

Needs the reference venv (tests/python/setup.sh) and a built engine (npm run build:native). Both runs give the same
losses (tests/integration/model-variants.test.ts checks that; this script fails if they differ by more than 1e-4
relative); it measures the time.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def ragged_rows(n, max_len, vocab, seed):
    """n samples: length = prompt + answer, log-normal-ish (median ≈ max_len/5), capped at max_len."""
    rnd = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        length = int(min(max_len, max(16, rnd.lognormvariate(0, 0.75) * max_len / 5)))
        prompt = max(4, int(length * rnd.uniform(0.3, 0.7)))
        row = [rnd.randrange(3, vocab) for _ in range(length)]
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return ids, labels


def run(engine, folder, data, out, pf, a):
    job = {"model": os.path.join(folder, "model"),
           "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
           "data": {"train": data},
           "training": {"max_steps": a.steps, "micro_batch_size": a.micro_batch, "gradient_accumulation_steps": 1,
                        "learning_rate": 1e-4, "seed": 1, "padding_free": pf},
           "output": {"dir": out, "logging_steps": 1, "save_steps": 100000}, "threads": a.threads}
    jf = out + ".job.json"
    with open(jf, "w") as f:
        json.dump(job, f)
    t0 = time.perf_counter()
    r = subprocess.run([engine, "train", "--job", jf], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"llmt-engine train failed: {r.stderr.strip()[-2000:]}")
    steps = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    steps = [e for e in steps if e.get("event") == "step"]
    # the first step also pays for warm-up (thread pool, first allocations): steps 2… are compared
    t = [e for e in steps[1:]]
    tokens = sum(e["tokens"] for e in t)
    secs = sum(e["tokens"] / e["tokens_per_s"] for e in t if e.get("tokens_per_s"))
    return {"steps": len(steps), "tokens_computed": tokens, "step_seconds": secs, "wall_s": wall,
            "losses": [round(e["loss"], 6) for e in steps]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="20m")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--engine", default=os.path.join(ROOT, "native", "build", "bin", "llmt-engine"))
    a = ap.parse_args()
    import cpu_bench

    with tempfile.TemporaryDirectory(prefix="llmt-pf-") as tmp:
        folder = os.path.join(tmp, a.size)
        cpu_bench.build(a.size, folder)
        ids, labels = ragged_rows(a.samples, a.max_len, cpu_bench.SIZES[a.size]["vocab_size"], 5)
        data = os.path.join(tmp, "ragged.json")
        with open(data, "w") as f:
            json.dump({"input_ids": ids, "labels": labels}, f)
        padded = run(a.engine, folder, data, os.path.join(tmp, "padded"), False, a)
        free = run(a.engine, folder, data, os.path.join(tmp, "free"), True, a)
    lens = sorted(len(r) for r in ids)
    res = {"size": a.size, "threads": a.threads, "samples": a.samples, "micro_batch": a.micro_batch, "steps": a.steps,
           "length_median": lens[len(lens) // 2], "length_max": lens[-1], "padded": padded, "padding_free": free,
           "tokens_ratio": free["tokens_computed"] / padded["tokens_computed"],
           "speedup": padded["step_seconds"] / free["step_seconds"],
           "max_loss_rel_diff": max(abs(x - y) / abs(x) for x, y in zip(padded["losses"], free["losses"]))}
    print(f"{a.size}, micro-batch {a.micro_batch}, {a.threads} threads, sample lengths median {res['length_median']}, "
          f"max {res['length_max']} (steps 2-{a.steps}):")
    print(f"  padded rows:  {padded['tokens_computed']} tokens computed, {padded['step_seconds']:.2f} s")
    print(f"  padding-free: {free['tokens_computed']} tokens computed, {free['step_seconds']:.2f} s")
    print(f"  tokens {res['tokens_ratio']:.2f}x, speed-up {res['speedup']:.2f}x, losses within {res['max_loss_rel_diff']:.1e}")
    print(json.dumps(res))
    if res["max_loss_rel_diff"] > 1e-4:  # the same job: packing must not change what is learnt
        sys.exit(f"the padded and padding-free losses differ by {res['max_loss_rel_diff']:.1e} (relative): a bug, not a speed figure")


if __name__ == "__main__":
    main()
