#!/usr/bin/env python3
"""CPU benchmark: LLMs-train's engine vs PyTorch + PEFT, side by side on the same machine in one run.

For each model size it builds one random LLaMA-shaped HF folder (safetensors) and one PEFT LoRA adapter, then
times, with the same number of threads, the same batch of random tokens:
  - a forward pass with the adapter (no grad), and
  - a LoRA training step's forward + backward (gradients of the LoRA parameters only),
in PyTorch + PEFT (eager, fp32) and in `llmt-engine bench`. Prints a table and JSON with the ratios
(> 1 means LLMs-train is faster), and the peak resident memory of each side's training process (the engine's
`bench` run; a child Python that loads the same folders with transformers + PEFT and runs two steps): the
footprint a user sees, libraries included.

  python bench/cpu_bench.py [--threads 2] [--sizes 20m,120m] [--batch 1] [--seq 256] [--iters 5] [--engine PATH ...] [--dora]

--dora: the adapter is DoRA (PEFT's use_dora: a magnitude per output row; PEFT recomputes ‖W + s·B·A‖ from the
full-size W + s·B·A in every forward, the engine from ‖W‖² and two rank-sized products).
--engine (repeatable) times other builds of llmt-engine on the same folders in the same run, e.g. the last release's
against this tree's; one row per engine (default: native/build/bin/llmt-engine).

Needs the reference venv (tests/python/setup.sh) and a built engine (npm run build:native).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ENGINE = os.path.join(ROOT, "native", "build", "bin", "llmt-engine")

# LLaMA shapes with about 20M and 120M parameters (vocab 32000 as LLaMA's tokenizer).
SIZES = {
    "20m": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, vocab_size=32000),
    "120m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12, num_key_value_heads=12, vocab_size=32000),
}


def build(size, out, dora=False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, **SIZES[size])
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM", use_dora=dora)
    peft_model = get_peft_model(model, lcfg)
    peft_model.save_pretrained(os.path.join(out, "adapter"), safe_serialization=True)
    return peft_model, sum(p.numel() for p in model.parameters())


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_torch(peft_model, batch, seq, iters, vocab):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    peft_model.eval()  # dropout is 0 anyway; eval keeps both sides identical
    fwd, step = [], []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            peft_model(input_ids=ids)
        if i:
            fwd.append(time.perf_counter() - t0)
    for i in range(iters + 1):
        peft_model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        if i:
            step.append(time.perf_counter() - t0)
    return median(fwd) * 1000, median(step) * 1000


# Peak memory is each child's own VmHWM (/proc/self/status: its own pages): getrusage's ru_maxrss of a child keeps
# the size of this process at the fork, which holds a PyTorch model by then.
def vmhwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def time_engine(engine, folder, batch, seq, iters, threads):
    r = subprocess.run([engine, "bench", "--model", os.path.join(folder, "model"), "--adapter", os.path.join(folder, "adapter"),
                        "--batch", str(batch), "--seq", str(seq), "--iters", str(iters), "--warmup", "1", "--threads", str(threads)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"llmt-engine bench failed: {r.stderr.strip()}")
    j = json.loads(r.stdout)
    return j["forward_ms"], j["train_step_ms"], j.get("host_peak_mib", float("nan"))


def torch_peak(folder, batch, seq, threads):
    """Peak resident MiB of a fresh Python that loads the folders (transformers + PEFT, fp32) and runs two LoRA steps."""
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", folder, "--batch", str(batch),
                        "--seq", str(seq), "--threads", str(threads)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"the PyTorch memory run failed: {r.stderr.strip()[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def torch_worker(folder, batch, seq, threads):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "model"), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, os.path.join(folder, "adapter"), is_trainable=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
    print(vmhwm_mib())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sizes", default="20m,120m")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--engine", action="append", help="an llmt-engine binary to time (repeatable)")
    ap.add_argument("--dora", action="store_true", help="a DoRA adapter (use_dora) on both sides")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        return torch_worker(a.torch_worker, a.batch, a.seq, a.threads)
    engines = a.engine or [ENGINE]
    for e in engines:
        if not os.path.exists(e):
            sys.exit(f"no engine at {e}: build it first (npm run build:native)")
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    for size in a.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"llmt-bench-{size}-") as d:
            peft_model, nparams = build(size, d, a.dora)
            tf, ts = time_torch(peft_model, a.batch, a.seq, a.iters, SIZES[size]["vocab_size"])
            del peft_model
            tm = torch_peak(d, a.batch, a.seq, a.threads)
            for e in engines:
                ef, es, em = time_engine(e, d, a.batch, a.seq, a.iters, a.threads)
                row = dict(size=size, parameters=nparams, batch=a.batch, seq=a.seq, threads=a.threads,
                           torch_forward_ms=round(tf, 2), engine_forward_ms=round(ef, 2), forward_speedup=round(tf / ef, 3),
                           torch_step_ms=round(ts, 2), engine_step_ms=round(es, 2), step_speedup=round(ts / es, 3),
                           torch_peak_mib=round(tm), engine_peak_mib=round(em), memory_ratio=round(em / tm, 3))
                if len(engines) > 1:
                    row["engine"] = e
                rows.append(row)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch} x seq {a.seq}, {'DoRA' if a.dora else 'LoRA'} r=16 on all linear modules")
    print(f"{'model':>8} {'params':>12} {'fwd torch':>10} {'fwd ours':>10} {'ratio':>6} {'step torch':>11} {'step ours':>10} {'ratio':>6}"
          f" {'peak torch':>11} {'peak ours':>10} {'ours/torch':>10}")
    for r in rows:
        if "engine" in r:
            print(f"  ({r['engine']})")
        print(f"{r['size']:>8} {r['parameters']:>12,} {r['torch_forward_ms']:>9.1f}ms {r['engine_forward_ms']:>9.1f}ms {r['forward_speedup']:>6.2f} "
              f"{r['torch_step_ms']:>10.1f}ms {r['engine_step_ms']:>9.1f}ms {r['step_speedup']:>6.2f}"
              f" {r['torch_peak_mib']:>8}MiB {r['engine_peak_mib']:>7}MiB {r['memory_ratio']:>10.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
