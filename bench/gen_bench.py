#!/usr/bin/env python3
"""Greedy generation on the CPU: llmt-engine `generate` against HF transformers + PEFT `generate`, side by side.

Same random LLaMA-shaped folders as bench/cpu_bench.py (20m, 120m; vocab 32000, LoRA r 16 on all seven linears,
fp32), the same prompt (--prompt tokens) and the same number of new tokens (--new; no EOS stop on either side:
HF gets min_new_tokens, the engine a generation_config.json without eos_token_id), repetition penalty 1, the same
thread count. Each side is timed twice — for one new token (load + prefill) and for --new — and the difference
gives the decoding rate; HF's load is outside its timing, the engine's cancels out. Prints tokens/s per side and
ours/HF; the last line is JSON.

  .venv-test/bin/python bench/gen_bench.py --threads 2 --sizes 20m,120m --prompt 32 --new 128
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_bench  # noqa: E402


def engine_time(engine, folder, prompt, new, threads):
    cmd = [engine, "generate", "--model", os.path.join(folder, "model"), "--adapter", os.path.join(folder, "adapter"),
           "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(new), "--greedy", "--threads", str(threads)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"llmt-engine generate failed: {r.stderr.strip()}")
    ids = json.loads(r.stdout)["ids"]
    if len(ids) != new:
        sys.exit(f"the engine generated {len(ids)} tokens, not {new} (an EOS stop?)")
    return dt, ids


def hf_time(model, prompt, new):
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, repetition_penalty=1.0)
        dt = time.perf_counter() - t0
    return dt, out[0, len(prompt):].tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--sizes", default="20m,120m")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--engine", default=cpu_bench.ENGINE)
    a = ap.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    rows = []
    for size in a.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"llmt-gen-{size}-") as d:
            peft_model, nparams = cpu_bench.build(size, d)
            del peft_model
            with open(os.path.join(d, "model", "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": 1}, f)  # no eos_token_id: neither side stops early
            cfg = json.load(open(os.path.join(d, "model", "config.json")))
            cfg.pop("eos_token_id", None)
            json.dump(cfg, open(os.path.join(d, "model", "config.json"), "w"))
            prompt = [1 + (i * 7919) % 31999 for i in range(a.prompt)]
            model = AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), torch_dtype=torch.float32)
            model = PeftModel.from_pretrained(model, os.path.join(d, "adapter")).eval()
            hf_time(model, prompt, 2)  # warm-up
            h1, _ = hf_time(model, prompt, 1)
            hn, hids = hf_time(model, prompt, a.new)
            e1, _ = engine_time(a.engine, d, prompt, 1, a.threads)
            en, eids = engine_time(a.engine, d, prompt, a.new, a.threads)
            hf_tps = (a.new - 1) / max(hn - h1, 1e-9)
            our_tps = (a.new - 1) / max(en - e1, 1e-9)
            same = next((i for i, (x, y) in enumerate(zip(hids, eids)) if x != y), len(hids))
            rows.append(dict(size=size, parameters=nparams, threads=a.threads, prompt=a.prompt, new=a.new,
                             hf_decode_tok_s=round(hf_tps, 2), engine_decode_tok_s=round(our_tps, 2),
                             decode_speedup=round(our_tps / hf_tps, 3), hf_first_token_s=round(h1, 4),
                             engine_load_and_first_token_s=round(e1, 4), same_tokens_before_first_difference=same))
    print(f"torch {torch.__version__}, {a.threads} threads, prompt {a.prompt}, {a.new} new tokens, greedy, LoRA r=16 on all linears")
    print(f"{'model':>6} {'HF tok/s':>9} {'ours tok/s':>11} {'ratio':>6} {'HF prefill+1':>13} {'ours load+prefill+1':>20} {'same ids':>9}")
    for r in rows:
        print(f"{r['size']:>6} {r['hf_decode_tok_s']:>9.1f} {r['engine_decode_tok_s']:>11.1f} {r['decode_speedup']:>6.2f} "
              f"{r['hf_first_token_s']:>12.3f}s {r['engine_load_and_first_token_s']:>19.3f}s {r['same_tokens_before_first_difference']:>9}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
