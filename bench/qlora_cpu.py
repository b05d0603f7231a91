#!/usr/bin/env python3
"""CPU benchmark of QLoRA (issue 11): the same LoRA step (r=16 on every projection) on a ~120M-parameter random
LLaMA with the base weights in fp32, NF4 quantized on load, and NF4 loaded from a saved bnb 4-bit checkpoint
(`llmt-engine quantize --model`). For each: `llmt-engine bench` (median forward and forward+backward of a
micro-batch of random tokens), the process's peak resident memory (VmHWM, from getrusage of the child) and its
wall time (load included). Prints a table and JSON.

  .venv-test/bin/python bench/qlora_cpu.py [--engine native/build/bin/llmt-engine] [--threads 2] [--batch 1]
                                           [--seq 256] [--iters 3] [--work /tmp/llmt-qlora-bench]

Needs numpy (the reference venv) and a built engine. The model is the 120m shape of bench/cpu_bench.py.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHAPE = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000)
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_model(out, r):
    """A random LLaMA folder (fp32 safetensors) and a PEFT LoRA adapter (r, alpha 2r, every projection)."""
    if os.path.exists(os.path.join(out, "adapter", "adapter_config.json")):
        return
    H, I, L, V = (SHAPE[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s, dtype=np.float32) * 0.02)
    t = {"model.embed_tokens.weight": w(V, H), "model.norm.weight": np.ones(H, np.float32), "lm_head.weight": w(V, H)}
    lora = {}
    dims = {"q_proj": (H, H), "k_proj": (H, H), "v_proj": (H, H), "o_proj": (H, H), "gate_proj": (I, H),
            "up_proj": (I, H), "down_proj": (H, I)}
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(H, np.float32)
        for m in PROJ:
            sub = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            o, i = dims[m]
            t[f"{p}{sub}.{m}.weight"] = w(o, i)
            lora[f"base_model.model.{p}{sub}.{m}.lora_A.weight"] = w(r, i)
            lora[f"base_model.model.{p}{sub}.{m}.lora_B.weight"] = np.zeros((o, r), np.float32)
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
    save_file(t, os.path.join(out, "model", "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(SHAPE, model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu", rms_norm_eps=1e-6,
               max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="float32",
               bos_token_id=1, eos_token_id=2)
    json.dump(cfg, open(os.path.join(out, "model", "config.json"), "w"), indent=2)
    save_file(lora, os.path.join(out, "adapter", "adapter_model.safetensors"), metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0,
               "target_modules": PROJ, "bias": "none", "base_model_name_or_path": ""},
              open(os.path.join(out, "adapter", "adapter_config.json"), "w"), indent=2)


def run(cmd):
    """Runs one child; returns its stdout, wall seconds and peak RSS (bytes, ru_maxrss = the child's VmHWM)."""
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        fd = os.open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qlora-bench-{os.getpid()}.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.execv(cmd[0], cmd)
    _, status, ru = os.wait4(pid, 0)
    wall = time.time() - t0
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qlora-bench-{pid}.out")
    out = open(path).read()
    os.unlink(path)
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}\n{out}")
    return out, wall, ru.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=os.path.join(ROOT, "native", "build", "bin", "llmt-engine"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--work", default="/tmp/llmt-qlora-bench")
    a = ap.parse_args()
    make_model(a.work, a.r)
    model, adapter, q = (os.path.join(a.work, x) for x in ("model", "adapter", "model-nf4"))
    if not os.path.exists(os.path.join(q, "config.json")):
        _, qwall, qpeak = run([a.engine, "quantize", "--model", model, "--out", q, "--type", "nf4", "--threads", str(a.threads)])
    else:
        qwall, qpeak = None, None
    base = ["bench", "--adapter", adapter, "--batch", str(a.batch), "--seq", str(a.seq), "--iters", str(a.iters),
            "--warmup", "1", "--threads", str(a.threads)]
    rows = {}
    for name, extra in (("fp32 LoRA", ["--model", model]), ("bf16 LoRA (streamed in)", ["--model", model, "--precision", "bf16"]),
                        ("QLoRA nf4 (quantize on load)", ["--model", model, "--quantization", "nf4"]),
                        ("QLoRA nf4 (saved 4-bit folder)", ["--model", q])):
        out, wall, peak = run([a.engine] + base + extra)
        j = json.loads(out)
        rows[name] = dict(step_ms=j["train_step_ms"], forward_ms=j["forward_ms"], tokens_per_s=j["train_tokens_per_s"],
                          peak_mib=peak / 2**20, wall_s=wall, parameters=j["parameters"], trainable=j["trainable"])
    f = rows["fp32 LoRA"]
    for r in rows.values():
        r["step_vs_fp32"] = r["step_ms"] / f["step_ms"]
        r["peak_vs_fp32"] = r["peak_mib"] / f["peak_mib"]
    print(f"{'':32} {'step ms':>9} {'fwd ms':>8} {'tok/s':>7} {'peak MiB':>9} {'wall s':>7} {'step×':>6} {'peak×':>6}")
    for n, r in rows.items():
        print(f"{n:32} {r['step_ms']:9.0f} {r['forward_ms']:8.0f} {r['tokens_per_s']:7.1f} {r['peak_mib']:9.0f} "
              f"{r['wall_s']:7.1f} {r['step_vs_fp32']:6.2f} {r['peak_vs_fp32']:6.2f}")
    print(json.dumps({"threads": a.threads, "batch": a.batch, "seq": a.seq, "r": a.r, "quantize_wall_s": qwall,
                      "quantize_peak_mib": qpeak and qpeak / 2**20, "rows": rows}))


if __name__ == "__main__":
    main()
