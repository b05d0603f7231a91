#!/usr/bin/env python3
"""hf_peft_bench.py — the HF transformers + PEFT peer of bench/gpu.sh, and the driver of llmt-engine's side.

LLaMA-7B shape (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000; LLMT_BENCH_LAYERS shrinks it for a
smoke run), random bf16 weights made in memory, LoRA r=16 (alpha 32) on every linear layer, micro-batch 1, gradient
checkpointing, SDPA attention; one step = forward + backward (no optimizer step: the same as `llmt-engine bench`).
The same weights are written once as an HF folder + PEFT adapter for llmt-engine (`bench --device cuda`).

MFU = tokens/s * F / peak, with F (FLOPs per token) = 4N + 6*L*d*T/2*2 + 6*r*S:
  4N      frozen base: forward 2N + input-gradient backward 2N (no weight gradients; recomputation not counted)
  attn    causal attention, QK^T and PV: forward 2*2*d*(T/2) per layer and token, x3 for forward+backward
  LoRA    S = sum over adapted linears of (in + out); forward 2rS, backward 4rS
peak = 989e12 (H100/H200 dense bf16) unless LLMT_PEAK_FLOPS is set.
Our side runs the same recipe: `--precision bf16` (frozen weights bf16, GEMMs on cublasGemmEx with bf16 inputs and fp32
accumulation, LoRA fp32) and `--checkpointing`; activations and attention are fp32 today (docs/cuda.md). Then, for
issue 11, QLoRA (`--quantization nf4 --precision bf16`: double-quantized, quantized on load, its 4-bit GEMMs computing
in bf16 on tensor cores as bitsandbytes' compute_dtype=bfloat16 does) at the first sequence length: its peak
memory (target <= 6 GB at seq 512) and its tokens/s relative to our bf16 LoRA (target >= 0.9x).

Profiles (profile.md, "profile" in results.json): after the timed steps, one more step per length on each side with its
device time broken down — torch.profiler's kernel table for HF+PEFT, `llmt-engine bench --profile` (an event pair
around every kernel and cuBLAS call, GEMM TFLOP/s per shape) for ours — so the run that measures the ratios also says
where each side's time goes (--no-profile skips them).
"""
import argparse, contextlib, json, os, subprocess, sys, tempfile, threading, time, traceback

def flops_per_token(L, d, inter, vocab, T, r):
    N = L * (4 * d * d + 3 * d * inter) + 2 * vocab * d  # linear params incl. embeddings/head as matmuls
    attn = 6 * L * d * T  # forward 2 matmuls x 2 FLOPs x d x T/2 causal keys = 2*d*T per layer, x3 with the backward
    S = L * (4 * (d + d) + 2 * (d + inter) + (inter + d))
    return 4 * N + attn + 6 * r * S

def hf_profile(model, ids, dev, cuda, sync, top=25):
    """One HF+PEFT step under torch.profiler: the kernels (self device time; CPU ops in a CPU smoke run), longest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    t = time.time()
    with profile(activities=acts) as prof:
        with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        sync()
    wall = (time.time() - t) * 1000
    model.zero_grad(set_to_none=True)
    def dev_us(e):
        for k in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
            v = getattr(e, k, None)
            if v is not None:
                return float(v)
        return 0.0
    rows = [{"name": e.key, "calls": int(e.count), "ms": dev_us(e) / 1000} for e in prof.key_averages()]
    rows = [r for r in rows if r["ms"] > 0]
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    rest = rows[top:]
    return {"step": "forward+backward", "wall_ms": wall, "kernel_ms": total, "rows": rows[:top],
            "rest_ms": sum(r["ms"] for r in rest), "rest_calls": sum(r["calls"] for r in rest),
            "time": "self device time per kernel" if cuda else "self CPU time per op (smoke run)"}

def profile_md(T, side, p, top=25):
    """A markdown section for one profile (either side)."""
    if not p:
        return []
    if "error" in p:
        return [f"### {side}, seq {T}: profile failed: {p['error']}", ""]
    busy = p["kernel_ms"] / p["wall_ms"] if p.get("wall_ms") else 0
    calls = sum(r["calls"] for r in p["rows"]) + p.get("rest_calls", 0)
    out = [f"### {side}, seq {T}: {p['kernel_ms']:.1f} ms of device time in a {p['wall_ms']:.1f} ms step "
           f"({busy:.0%} busy), {calls} calls", "", "| name | calls | ms | share | TFLOP/s |", "|---|---:|---:|---:|---:|"]
    for r in p["rows"][:top]:
        tf = r.get("tflops")
        out.append(f"| `{r['name'][:90]}` | {r['calls']} | {r['ms']:.2f} | {r['ms'] / p['kernel_ms']:.1%} | "
                   f"{'%.1f' % tf if tf else ''} |")
    if p.get("rest_ms"):
        out.append(f"| (the rest) | {p['rest_calls']} | {p['rest_ms']:.2f} | {p['rest_ms'] / p['kernel_ms']:.1%} | |")
    return out + [""]

def gpu_mem_used():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout.split()
        return int(out[0]) * 1024 * 1024
    except Exception:
        return 0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parity", default="unknown")
    ap.add_argument("--seqs", default="512,2048")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="torch device of the HF side (cpu: a smoke run of this script)")
    ap.add_argument("--engine-device", default="cuda", help="llmt-engine's --device")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled extra step of each side")
    ap.add_argument("--dims", default=os.environ.get("LLMT_BENCH_DIMS", ""),
                    help="layers,hidden,heads,intermediate,vocab instead of LLaMA-7B's (smoke runs)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    L = int(os.environ.get("LLMT_BENCH_LAYERS", "32"))
    d, inter, vocab, heads, r = 4096, 11008, 32000, 32, 16
    if a.dims:
        L, d, heads, inter, vocab = (int(x) for x in a.dims.split(","))
    dev = a.device
    cuda = dev.startswith("cuda")
    def sync():
        if cuda:
            torch.cuda.synchronize()
    seqs = [int(s) for s in a.seqs.split(",")]
    peak = float(os.environ.get("LLMT_PEAK_FLOPS", "989e12"))
    import transformers, peft
    gpu = torch.cuda.get_device_name(0) if cuda else "CPU (smoke run: " + dev + ")"
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu, "layers": L, "dims": [L, d, heads, inter, vocab],
           "parity": a.parity, "hf": {}, "ours": {},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
           "flops_formula": "4N + 6*L*d*T + 6*r*S (see bench/hf_peft_bench.py)",
           "memory": "peak_mem = bytes the allocator held from the device (torch max_memory_reserved; ours: the engine's "
                     "caching allocator, the same notion); peak_alloc = bytes handed out (torch max_memory_allocated); "
                     "the memory ratio is peak_mem / peak_mem. The CUDA context is in neither."}
    # SDPA (the peer's fast attention); a torch without it (< 2.0: CI's smoke run) falls back to eager, recorded
    attn = "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"
    res["hf_attention"] = attn
    cfg = LlamaConfig(hidden_size=d, intermediate_size=inter, num_hidden_layers=L, num_attention_heads=heads,
                      num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=4096,
                      attn_implementation=attn)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with (torch.device(dev) if cuda else contextlib.nullcontext()):  # (torch < 2 has no device context: CPU is its default)
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    work = tempfile.mkdtemp(prefix="llmt-bench-", dir=os.environ.get("LLMT_BENCH_TMP"))
    t0 = time.time()
    # safetensors is the default (and, from transformers 5, the only format: its save_pretrained has no
    # safe_serialization argument any more)
    model.save_pretrained(os.path.join(work, "base"))
    print(f"wrote the base model for llmt-engine in {time.time() - t0:.0f} s", flush=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    for n, p in model.named_parameters():  # LoRA masters fp32 (mixed precision as in HF's usual LoRA recipe)
        if p.requires_grad:
            p.data = p.data.float()
    model.save_pretrained(os.path.join(work, "adapter"))
    # (an API change in the GPU server's transformers must not cost our side's figures: recorded, and the run goes on)
    try:
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.base_model.model.enable_input_require_grads()
        res["hf_checkpointing"] = True
    except Exception as e:
        res["hf_checkpointing"] = "could not be enabled: " + repr(e)[:300]
        traceback.print_exc()
    model.train()

    def hf_step(model, ids):
        """One warm-up and a.iters timed bf16-autocast training steps: the median step, tokens/s, loss, peak memory."""
        T = ids.shape[1]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(1 + a.iters):
            sync(); t = time.time()
            with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            sync()
            if i: times.append(time.time() - t)
            model.zero_grad(set_to_none=True)
        ms = sorted(times)[len(times) // 2] * 1000
        out = {"step_ms": ms, "tokens_per_s": T / (ms / 1000), "loss": float(loss)}
        if cuda:
            out.update(peak_mem=torch.cuda.max_memory_reserved(), peak_alloc=torch.cuda.max_memory_allocated())
        return out

    for T in seqs:
        ids = torch.randint(0, vocab, (1, T), device=dev)
        try:
            res["hf"][T] = hf_step(model, ids)
            res["hf"][T]["mfu"] = res["hf"][T]["tokens_per_s"] * flops_per_token(L, d, inter, vocab, T, r) / peak
        except (torch.cuda.OutOfMemoryError if cuda else MemoryError) as e:
            res["hf"][T] = {"error": "OOM: " + str(e)[:200]}
        except Exception as e:  # anything else on the HF side: recorded; our side still runs
            traceback.print_exc()
            res["hf"][T] = {"error": repr(e)[:200]}
            model.zero_grad(set_to_none=True)
        print("HF+PEFT", T, res["hf"][T], flush=True)
        if not a.no_profile and "error" not in res["hf"][T]:
            try:
                res.setdefault("profile", {}).setdefault(str(T), {})["hf"] = hf_profile(model, ids, dev, cuda, sync)
            except Exception as e:  # a profiler failure must not cost the figures
                res.setdefault("profile", {}).setdefault(str(T), {})["hf"] = {"error": repr(e)[:300]}
    # DoRA (PEFT's use_dora) at the first length, time permitting: the same base with its LoRA layers removed, a DoRA
    # adapter of the same shape (magnitudes from the weights' column norms), saved for our side's DoRA row
    T0 = seqs[0]
    if time.time() - t_start < float(os.environ.get("LLMT_DORA_HF_BEFORE_S", "240")):
        try:
            base = model.unload()
            del model
            if cuda:
                torch.cuda.empty_cache()
            model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0, use_dora=True))
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            model.save_pretrained(os.path.join(work, "adapter_dora"))
            model.train()
            res["hf_dora"] = {T0: hf_step(model, torch.randint(0, vocab, (1, T0), device=dev))}
        except (torch.cuda.OutOfMemoryError if cuda else MemoryError) as e:
            res["hf_dora"] = {T0: {"error": "OOM: " + str(e)[:200]}}
        except Exception as e:  # recorded; the rest of the run goes on
            traceback.print_exc()
            res["hf_dora"] = {T0: {"error": repr(e)[:200]}}
        print("HF+PEFT DoRA", T0, res["hf_dora"][T0], flush=True)
    del model
    if cuda:
        torch.cuda.empty_cache()
    base_mem = gpu_mem_used()
    def ours(T, extra, label, prof=False, adapter="adapter"):
        peak_used = [0]
        stop = threading.Event()
        def poll():
            while not stop.is_set():
                peak_used[0] = max(peak_used[0], gpu_mem_used()); time.sleep(0.2)
        th = threading.Thread(target=poll, daemon=True); th.start()
        cmd = [a.engine, "bench", "--model", os.path.join(work, "base"), "--adapter", os.path.join(work, adapter),
               "--batch", "1", "--seq", str(T), "--iters", "2", "--warmup", "1", "--device", a.engine_device,
               "--checkpointing"] + extra + (["--profile"] if prof and not a.no_profile else [])
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=int(os.environ.get("LLMT_OUR_TIMEOUT", "150")))
            if p.returncode == 0:
                j = json.loads(p.stdout.strip().splitlines()[-1])
                tps = j.get("train_tokens_per_s", 0.0)
                dm = j.get("device_memory") or {}
                out = {"step_ms": j.get("train_step_ms"), "tokens_per_s": tps, "device": j.get("device"),
                       "peak_mem": dm.get("peak_reserved"), "peak_alloc": dm.get("peak_allocated"),
                       "process_gpu_mem": max(0, peak_used[0] - base_mem) or None,  # nvidia-smi: + CUDA context
                       "mfu": tps * flops_per_token(L, d, inter, vocab, T, r) / peak, "precision": label}
                if not out["peak_mem"]:
                    out["peak_mem"] = out["process_gpu_mem"]
                if "q4_gemm" in j:  # --q4-gemm both: the step with each 4-bit GEMM path
                    out["q4_gemm"] = j["q4_gemm"]
                if "attn_tc" in j:  # --attn both: the step with each version of the tensor-core attention kernels
                    out["attn_tc"] = j["attn_tc"]
                if "profile" in j:
                    res.setdefault("profile", {}).setdefault(str(T), {})["ours " + label] = j["profile"]
            else:
                out = {"error": (p.stderr or p.stdout)[-400:]}
        except subprocess.TimeoutExpired:
            out = {"error": "timed out"}
        stop.set(); th.join()
        print("llmt-engine", label, T, out, flush=True)
        return out
    for T in seqs:
        # --attn both: the step again with the 4-warp attention kernels (the default) and with the 2-warp v1
        res["ours"][T] = ours(T, ["--precision", "bf16", "--attn", "both"], "bf16 weights, fp32 activations", prof=True)
    # bitsandbytes' QLoRA recipe computes in bf16 (bnb_4bit_compute_dtype): the 4-bit GEMMs on tensor cores
    # --q4-gemm both: the GPU's default 4-bit path, then the fused kernels and the sliced decode + cuBLAS each
    res["ours_qlora"] = {T0: ours(T0, ["--quantization", "nf4", "--precision", "bf16", "--q4-gemm", "both"],
                                  "QLoRA nf4 (double quant), bf16 compute (tensor cores), fp32 activations", prof=True)}
    # and, time permitting, the longest sequence with the checkpointed block inputs in host memory (offload_checkpoints)
    T1 = seqs[-1]
    if time.time() - t_start < float(os.environ.get("LLMT_OFFLOAD_ROW_BEFORE_S", "420")):
        res["ours_offload"] = {T1: ours(T1, ["--precision", "bf16", "--offload-checkpoints"],
                                        "bf16 weights, fp32 activations, checkpoints in host memory")}
    # and, time permitting, QLoRA with the 4-bit layer cache (each recomputed block's weights decoded to bf16 once for
    # its recomputation and backward: one layer's weights in bf16 at a time), in its own process so that the row above
    # keeps the default's peak memory
    if time.time() - t_start < float(os.environ.get("LLMT_Q4CACHE_ROW_BEFORE_S", "450")):
        res["ours_qlora_cache"] = {T0: ours(T0, ["--quantization", "nf4", "--precision", "bf16", "--q4-cache", "on"],
                                            "QLoRA nf4 (double quant), bf16 compute, 4-bit layer cache")}
    # and, time permitting, DoRA against PEFT's DoRA (the adapter the HF side saved)
    if "hf_dora" in res and "error" not in res["hf_dora"][T0] and \
            time.time() - t_start < float(os.environ.get("LLMT_DORA_ROW_BEFORE_S", "480")):
        res["ours_dora"] = {T0: ours(T0, ["--precision", "bf16"], "DoRA, bf16 weights, fp32 activations", adapter="adapter_dora")}
    q, b = res["ours_qlora"][T0], res["ours"].get(T0, {})
    # the QLoRA memory target is about fitting a GPU: the larger of the allocator's peak and the process's use (nvidia-smi,
    # with the CUDA context)
    qpeak = max(q.get("peak_mem") or 0, q.get("process_gpu_mem") or 0)
    res["qlora_targets"] = {"seq": T0, "peak_mem_gb": qpeak / 1e9 if qpeak else None,
                            "speed_vs_our_bf16": q["tokens_per_s"] / b["tokens_per_s"] if "tokens_per_s" in q and b.get("tokens_per_s") else None}
    for path, key in (("dequant", "speed_vs_our_bf16_dequant_cublas"), ("fused", "speed_vs_our_bf16_fused")):
        v = (q.get("q4_gemm") or {}).get(path, {}).get("train_tokens_per_s")
        res["qlora_targets"][key] = v / b["tokens_per_s"] if v and b.get("tokens_per_s") else None
    qc = (res.get("ours_qlora_cache") or {}).get(T0) or {}
    res["qlora_targets"]["speed_vs_our_bf16_layer_cache"] = qc["tokens_per_s"] / b["tokens_per_s"] if qc.get("tokens_per_s") and b.get("tokens_per_s") else None
    qcpeak = max(qc.get("peak_mem") or 0, qc.get("process_gpu_mem") or 0)
    res["qlora_targets"]["peak_mem_gb_layer_cache"] = qcpeak / 1e9 if qcpeak else None
    lines = [f"# LoRA step, LLaMA-7B shape ({L} layers), r=16 all linear, micro-batch 1 — {gpu}, {res['date']}",
             f"parity checks: {a.parity}", "",
             "| seq | HF+PEFT tok/s | ours tok/s | speed ratio | HF peak GiB | ours peak GiB | memory ratio | allocated ratio | HF MFU | ours MFU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for T in seqs:
        h, o = res["hf"].get(T, {}), res["ours"].get(T, {})
        sr = o["tokens_per_s"] / h["tokens_per_s"] if "tokens_per_s" in o and "tokens_per_s" in h else None
        mr = o["peak_mem"] / h["peak_mem"] if o.get("peak_mem") and h.get("peak_mem") else None
        ar = o["peak_alloc"] / h["peak_alloc"] if o.get("peak_alloc") and h.get("peak_alloc") else None
        res.setdefault("ratios", {})[T] = {"speed": sr, "memory": mr, "memory_allocated": ar}
        f = lambda x, k, s=1.0, fmt="{:.1f}": fmt.format(x[k] / s) if k in x and x[k] is not None else x.get("error", "-")[:40]
        lines.append(f"| {T} | {f(h,'tokens_per_s')} | {f(o,'tokens_per_s')} | {sr and f'{sr:.2f}x'} | "
                     f"{f(h,'peak_mem',2**30,'{:.1f}')} | {f(o,'peak_mem',2**30,'{:.1f}')} | {mr and f'{mr:.2f}x'} | {ar and f'{ar:.2f}x'} | "
                     f"{f(h,'mfu',0.01,'{:.0f}%')} | {f(o,'mfu',0.01,'{:.0f}%')} |")
    qt = res["qlora_targets"]
    qmem = "-" if qt["peak_mem_gb"] is None else "%.2f GB" % qt["peak_mem_gb"]
    qspd = "-" if qt["speed_vs_our_bf16"] is None else "%.2fx" % qt["speed_vs_our_bf16"]
    qerr = res["ours_qlora"][qt["seq"]].get("error", "")[:80]
    qdq, qfu = qt.get("speed_vs_our_bf16_dequant_cublas"), qt.get("speed_vs_our_bf16_fused")
    pct = lambda v: "-" if v is None else "%.2fx" % v
    lines += ["", "QLoRA (nf4, bf16 compute, seq %d): peak %s (target <= 6 GB), tokens/s vs our bf16 LoRA %s (target >= 0.9x) %s"
              % (qt["seq"], qmem, qspd, qerr),
              "  by 4-bit GEMM path (the figure above: this GPU's default): the fused tensor-core kernels (LLMT_Q4_GEMM=fused) %s; "
              "L2-sized slices decoded to bf16, then cuBLAS (LLMT_Q4_GEMM=dequant): %s" % (pct(qfu), pct(qdq)),
              "  with the 4-bit layer cache (--q4-cache on: each recomputed block's weights decoded to bf16 once for its "
              "recomputation and backward, one layer's weights in bf16 at a time): %s, peak %s %s"
              % (pct(qt.get("speed_vs_our_bf16_layer_cache")),
                 "-" if qt.get("peak_mem_gb_layer_cache") is None else "%.2f GB" % qt["peak_mem_gb_layer_cache"],
                 "" if "ours_qlora_cache" in res else "(not run: out of time)")]
    for T in seqs:
        at = (res["ours"].get(T) or {}).get("attn_tc") or {}
        v1, v2 = (at.get("v1") or {}).get("train_tokens_per_s"), (at.get("v2") or {}).get("train_tokens_per_s")
        if v1 and v2:
            res.setdefault("attn_tc", {})[T] = {"v2": v2, "v1": v1}
            lines += ["", "seq %d: our step with the 2-warp attention kernels (LLMT_ATTN_TC=v1): %.1f tok/s; with the default "
                      "4-warp ones: %.1f tok/s (%.2fx)" % (T, v1, v2, v2 / v1)]
    if "ours_offload" in res:
        o1, h1 = res["ours_offload"][T1], res["hf"].get(T1, {})
        om = o1["peak_mem"] / h1["peak_mem"] if o1.get("peak_mem") and h1.get("peak_mem") else None
        os_ = o1["tokens_per_s"] / h1["tokens_per_s"] if o1.get("tokens_per_s") and h1.get("tokens_per_s") else None
        res.setdefault("ratios", {})[f"{T1}_offload_checkpoints"] = {"speed": os_, "memory": om}
        lines += ["", "ours with --offload-checkpoints at seq %d: %s tok/s (%s of HF), peak %s GiB (%s of HF) %s" % (
            T1, "%.1f" % o1["tokens_per_s"] if o1.get("tokens_per_s") else "-", "%.2fx" % os_ if os_ else "-",
            "%.1f" % (o1["peak_mem"] / 2**30) if o1.get("peak_mem") else "-", "%.2fx" % om if om else "-", o1.get("error", "")[:80])]
    if "hf_dora" in res:
        hd, od = res["hf_dora"][T0], (res.get("ours_dora") or {}).get(T0, {})
        dsr = od["tokens_per_s"] / hd["tokens_per_s"] if od.get("tokens_per_s") and hd.get("tokens_per_s") else None
        dmr = od["peak_mem"] / hd["peak_mem"] if od.get("peak_mem") and hd.get("peak_mem") else None
        res.setdefault("ratios", {})[f"{T0}_dora"] = {"speed": dsr, "memory": dmr}
        fmt = lambda x, k, s=1.0, f="{:.1f}": f.format(x[k] / s) if x.get(k) else "-"
        lines += ["", "DoRA (use_dora, r=16 all linear) at seq %d: HF+PEFT %s tok/s, ours %s tok/s (%s); peak HF %s GiB, ours %s GiB (%s) %s" % (
            T0, fmt(hd, "tokens_per_s"), fmt(od, "tokens_per_s"), "%.2fx" % dsr if dsr else "-",
            fmt(hd, "peak_mem", 2**30), fmt(od, "peak_mem", 2**30), "%.2fx" % dmr if dmr else "-",
            (hd.get("error") or od.get("error") or ("" if "ours_dora" in res else "(ours not run: out of time)"))[:80])]
    if res.get("hf_checkpointing") is not True:
        lines += ["", "NOTE: HF+PEFT ran WITHOUT gradient checkpointing (%s): its figures are not comparable" % res.get("hf_checkpointing")]
    lines += ["", "peak GiB: what each allocator held from the GPU (torch max_memory_reserved; ours the same), CUDA context "
              "excluded; allocated ratio: torch max_memory_allocated vs ours. Versions: " +
              ", ".join(f"{k} {v}" for k, v in res["versions"].items())]
    with open(os.path.join(a.out, "results.json"), "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(os.path.join(a.out, "results.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if res.get("profile"):
        pl = [f"# Where the time goes: one profiled step per side and length — {gpu}, {res['date']}", "",
              "HF+PEFT: torch.profiler, self device time per kernel. Ours: `llmt-engine bench --profile`, an event pair "
              "around every kernel, cuBLAS call and copy (GEMM rows carry their M x N x K and TFLOP/s). Busy = device time "
              "/ the profiled step's wall time (the profiled step is slower than the timed ones).", ""]
        for T, sides in res["profile"].items():
            for side, p in sides.items():
                pl += profile_md(T, "HF+PEFT" if side == "hf" else side, p)
        with open(os.path.join(a.out, "profile.md"), "w") as fh:
            fh.write("\n".join(pl) + "\n")
    print("\n".join(lines))
    subprocess.run(["rm", "-rf", work])

if __name__ == "__main__":
    sys.exit(main())
