#!/usr/bin/env python3
"""TEST-ONLY: checks the engine's 4-bit quantization (llmt-engine quantize) against bitsandbytes.

bitsandbytes (PyPI 0.50.2) needs torch >= 2.4, and our test venv has Debian's torch 1.13, so the Python package
cannot be imported here. What is used instead:
  1. bitsandbytes' own native CPU library (libbitsandbytes_cpu.so from the pinned wheel, loaded with ctypes, no
     torch): cquantize_blockwise_cpu_fp32 (the 8-bit blockwise quantization that double quantization runs on
     the absmax values on CPU), cdequantize_blockwise_cpu_fp32 and cdequantize_blockwise_cpu_{nf4,fp4}_fp32 (the
     dequantization bitsandbytes runs on CPU). Fetched by tests/python/fetch_bnb.sh; skipped (reported) if absent.
  2. Faithful numpy ports of the 4-bit quantization, which has no native CPU kernel:
       - "cuda": csrc/kernels.cu kQuantizeBlockwise (absmax, x·(1/absmax), the dQuantizeNF4/dQuantizeFP4 trees,
         high nibble first) — what QLoRA users get on a GPU;
       - "cpu": bitsandbytes/backends/default/ops.py quantize_4bit of 0.50.2 (torch.bucketize on the code
         midpoints; partial last block divided by absmax) — what bitsandbytes does on CPU.
  3. create_dynamic_map() run verbatim on torch (its torch.linspace in fp32 decides the last bits), compared with
     the file's nested_quant_map; the offset as torch's fp32 mean (bitsandbytes: _absmax.mean()).
Usage: bnb_reference.py ENGINE WORKDIR  → prints a JSON report; exit 1 on any mismatch.
"""
import ctypes
import glob
import json
import os
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
# get_4bit_type("fp4"): torch.tensor(data) / data.abs().max() in fp32
FP4 = (np.array([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0],
                dtype=np.float32) / np.float32(12.0)).astype(np.float32)


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes/functional.py create_dynamic_map, verbatim (needs torch for linspace's fp32 rounding)."""
    import torch
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data += [0] * (256 - len(data))
    data.sort()
    return np.array(data, dtype=np.float32)


def f32(x):
    return np.float32(x)


def nf4_tree(x):
    """dQuantizeNF4 (fp32 comparisons against fp32 literals; NaN falls through to 0)."""
    t = [f32(v) for v in (0.03979014977812767, 0.3893125355243683, 0.6427869200706482, 0.8614784181118011,
                          0.5016634166240692, 0.2035212516784668, 0.2920137718319893, 0.1202552504837513,
                          -0.33967943489551544, -0.13791173323988914, -0.045525018125772476, -0.23460740596055984,
                          -0.6106329262256622, -0.4599952697753906, -0.8480964004993439)]
    if x > t[0]:
        if x > t[1]:
            if x > t[2]:
                return 15 if x > t[3] else 14
            return 13 if x > t[4] else 12
        if x > t[5]:
            return 11 if x > t[6] else 10
        return 9 if x > t[7] else 8
    if x > t[8]:
        if x > t[9]:
            return 7 if x > t[10] else 6
        return 5 if x > t[11] else 4
    if x > t[12]:
        return 3 if x > t[13] else 2
    return 1 if x > t[14] else 0


def fp4_tree(x):
    sign = 8 if x < 0 else 0
    x = abs(x)
    if x > f32(0.29166667):
        if x > f32(0.583333):
            return (3 if x > f32(0.8333333) else 2) + sign
        return (5 if x > f32(0.4166667) else 4) + sign
    if x > f32(0.0859375):
        return (7 if x > f32(0.20833333) else 6) + sign
    return (1 if x > f32(0.00260417) else 0) + sign


def quantize_4bit_cuda(a, qt, bs=64):
    """kQuantizeBlockwise<T, 64, 2, 0, NF4|FP4>: returns (packed uint8[(n+1)//2], absmax f32[nb])."""
    a = a.reshape(-1).astype(np.float32)
    n = a.size
    nb = (n + bs - 1) // bs
    tree = nf4_tree if qt == "nf4" else fp4_tree
    absmax = np.zeros(nb, np.float32)
    codes = np.zeros(nb * bs, np.uint8)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for b in range(nb):
            blk = np.zeros(bs, np.float32)
            v = a[b * bs:(b + 1) * bs]
            blk[:v.size] = v
            m = np.float32(np.max(np.abs(v)))
            absmax[b] = m
            inv = np.float32(1.0) / m
            sc = (blk * inv).astype(np.float32)
            codes[b * bs:(b + 1) * bs] = [tree(x) for x in sc]
    codes = codes[:n + (n % 2)]
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    return packed, absmax


def quantize_4bit_cpu(a, qt, bs=64):
    """bitsandbytes 0.50.2 backends/default/ops.py quantize_4bit (torch ops ported to numpy fp32)."""
    code = NF4 if qt == "nf4" else FP4
    order = np.argsort(code, kind="stable")
    bounds = ((code[order[:-1]] + code[order[1:]]) / np.float32(2)).astype(np.float32)
    a = a.reshape(-1).astype(np.float32)
    n = a.size
    rem = n % bs
    full = n - rem
    blocks = a[:full].reshape(-1, bs)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32) if full else np.zeros(0, np.float32)
    inv = (np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    scaled = np.clip(blocks * inv[:, None], -1, 1).reshape(-1).astype(np.float32)
    if rem:
        am = np.float32(max(np.abs(a[full:]).max(), np.float32(1e-38)))
        absmax = np.concatenate([absmax, [am]]).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip(a[full:] / am, -1, 1)]).astype(np.float32)
    if scaled.size % 2:
        scaled = np.concatenate([scaled, [np.float32(0)]]).astype(np.float32)
    q = np.searchsorted(bounds, scaled, side="left")  # torch.bucketize(right=False)
    if qt != "nf4":
        q = order[q]
    q = q.astype(np.uint8)
    return ((q[0::2] << 4) | q[1::2]).astype(np.uint8), absmax


def dquantize_cuda(code, x):
    """dQuantize<0>: binary search with midpoints."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = f32(-1.0), f32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        mid = f32((upper + val) * f32(0.5))
        return upper_pivot if x > mid else pivot
    mid = f32((lower + val) * f32(0.5))
    return lower_pivot if x < mid else pivot


def quantize_blockwise_cuda(a, code, bs=256):
    with np.errstate(divide="ignore", invalid="ignore"):
        return _quantize_blockwise_cuda(a, code, bs)


def _quantize_blockwise_cuda(a, code, bs):
    n = a.size
    nb = (n + bs - 1) // bs
    q = np.zeros(n, np.uint8)
    absmax = np.zeros(nb, np.float32)
    for b in range(nb):
        v = a[b * bs:(b + 1) * bs]
        m = np.float32(np.max(np.abs(v)))
        absmax[b] = m
        inv = np.float32(1.0) / m
        q[b * bs:b * bs + v.size] = [dquantize_cuda(code, np.float32(x * inv)) for x in v]
    return q, absmax


def load_native():
    path = os.environ.get("LLMT_BNB_CPU_LIB")
    if not path:
        cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llmt-bnb-0.50.2")
        found = glob.glob(os.path.join(cache, "**", "libbitsandbytes_cpu.so"), recursive=True)
        path = found[0] if found else None
    if not path or not os.path.exists(path):
        return None, None
    lib = ctypes.CDLL(path)
    return lib, path


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def native_quantize_blockwise(lib, code, a, bs=256):
    a = np.ascontiguousarray(a, np.float32)
    n = a.size
    nb = (n + bs - 1) // bs
    absmax = np.zeros(nb, np.float32)
    out = np.zeros(n, np.uint8)
    c = code.copy()  # the native function overwrites code[0] with -1
    lib.cquantize_blockwise_cpu_fp32(ptr(c), ptr(a), ptr(absmax), ptr(out), ctypes.c_longlong(bs), ctypes.c_longlong(n))
    return out, absmax


def native_dequantize_blockwise(lib, code, q, absmax, bs=256):
    out = np.zeros(q.size, np.float32)
    c = code.copy()
    lib.cdequantize_blockwise_cpu_fp32(ptr(c), ptr(q), ptr(absmax), ptr(out), ctypes.c_longlong(bs), ctypes.c_longlong(q.size))
    return out


def native_dequantize_4bit(lib, qt, packed, absmax, n, bs=64):
    # the kernel walks m·n elements in blocks, two per byte (bitsandbytes reshapes to (m, n//2): even n only)
    out = np.zeros(n, np.float32)
    fn = lib.cdequantize_blockwise_cpu_nf4_fp32 if qt == "nf4" else lib.cdequantize_blockwise_cpu_fp4_fp32
    fn(ptr(packed), ptr(absmax), ptr(out), ctypes.c_longlong(bs), ctypes.c_longlong(1), ctypes.c_longlong(n))
    return out


def main():
    engine, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(1234)
    bf16 = lambda x: (x.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)  # bf16-valued
    tensors = {
        "a.q_proj.weight": (rng.standard_normal((64, 64)) * 0.02).astype(np.float32),
        "b.down_proj.weight": (rng.standard_normal((96, 352)) * 0.05).astype(np.float32),
        "c.not_multiple_of_64": (rng.standard_normal((100, 37)) * 0.1).astype(np.float32),   # n = 3700
        "d.odd": (rng.standard_normal((3, 7))).astype(np.float32),                          # n = 21, odd
        "e.bf16_values": bf16(rng.standard_normal((256, 300)) * 0.03),                       # > 256 blocks
        "f.heavy_tails": (rng.standard_t(2, (128, 200)) * 0.01).astype(np.float32),
    }
    z = (rng.standard_normal((8, 64)) * 0.02).astype(np.float32)
    z[3] = 0.0  # one all-zero block
    tensors["g.zero_block"] = z
    src = os.path.join(work, "in.safetensors")
    save_file(tensors, src)
    lib, libpath = load_native()
    dynmap = create_dynamic_map()
    report = {"native_lib": libpath, "tensors": {}}
    ok = True
    for qt in ("nf4", "fp4"):
        for dq in (True, False):
            out = os.path.join(work, f"out-{qt}-{int(dq)}.safetensors")
            cmd = [engine, "quantize", "--in", src, "--out", out, "--quantization", qt, "--dequantized"]
            if not dq:
                cmd.append("--no-double-quant")
            subprocess.run(cmd, check=True)
            got = load_file(out)
            for name, a in tensors.items():
                key = f"{name}/{qt}/{'dq' if dq else 'plain'}"
                r = {}
                n = a.size
                packed_c, absmax_c = quantize_4bit_cuda(a, qt)
                packed_p, absmax_p = quantize_4bit_cpu(a, qt)
                g_packed = got[name].reshape(-1)
                r["codes_eq_cuda"] = bool(np.array_equal(g_packed, packed_c))
                r["codes_eq_cpu_default"] = bool(np.array_equal(g_packed, packed_p))
                if not r["codes_eq_cpu_default"]:
                    r["codes_differing_vs_cpu_default"] = int(np.sum(g_packed != packed_p))
                # FP4 has +0 and -0: CUDA's tree gives small negatives -0 (0b1000), the CPU path +0; same values
                cp = np.zeros(packed_p.size * 2, np.uint8)
                cp[0::2], cp[1::2] = packed_p >> 4, packed_p & 0xF
                cg = np.zeros(g_packed.size * 2, np.uint8)
                cg[0::2], cg[1::2] = g_packed >> 4, g_packed & 0xF
                tbl = NF4 if qt == "nf4" else FP4
                r["code_values_eq_cpu_default"] = bool(np.array_equal(tbl[cp], tbl[cg]))
                r["quant_map_eq"] = bool(np.array_equal(got[name + ".quant_map"], NF4 if qt == "nf4" else FP4))
                state = json.loads(bytes(got[f"{name}.quant_state.bitsandbytes__{qt}"]).decode())
                r["state_ok"] = state["quant_type"] == qt and state["blocksize"] == 64 and state["shape"] == list(a.shape)
                if dq:
                    import torch
                    offset_t = float(torch.from_numpy(absmax_c).mean())  # bitsandbytes: _absmax.mean() in fp32
                    offset = np.float32(state["nested_offset"])
                    r["offset_eq_torch_mean"] = bool(offset == np.float32(offset_t))
                    centered = (absmax_c - offset).astype(np.float32)
                    q8, am2 = quantize_blockwise_cuda(centered, dynmap)
                    r["nested_quant_map_eq"] = bool(np.array_equal(got[name + ".nested_quant_map"], dynmap))
                    r["nested_codes_eq_cuda"] = bool(np.array_equal(got[name + ".absmax"], q8))
                    r["nested_absmax_eq"] = bool(np.array_equal(got[name + ".nested_absmax"], am2))
                    if lib is not None:
                        q8n, am2n = native_quantize_blockwise(lib, dynmap, centered)
                        # bitsandbytes' CPU library searches the map its own way (BinSearch, code[0] := -1); it can
                        # pick the other neighbour where CUDA's midpoint search does not: informational
                        r["nested_codes_eq_native"] = bool(np.array_equal(got[name + ".absmax"], q8n))
                        r["nested_codes_differing_vs_native"] = int(np.sum(got[name + ".absmax"] != q8n))
                        r["nested_absmax_eq_native"] = bool(np.array_equal(got[name + ".nested_absmax"], am2n))
                        scale = native_dequantize_blockwise(lib, dynmap, got[name + ".absmax"], got[name + ".nested_absmax"])
                    else:
                        scale = (dynmap[q8] * np.repeat(am2, 256)[:q8.size]).astype(np.float32)
                    scale = (scale + offset).astype(np.float32)  # absmax += offset
                else:
                    r["absmax_eq"] = bool(np.array_equal(got[name + ".absmax"], absmax_c))
                    scale = got[name + ".absmax"]
                # dequantized values: code[q] * scale (fp32), as bitsandbytes' CPU kernel / CUDA kernel
                codes = np.zeros(packed_c.size * 2, np.uint8)
                codes[0::2], codes[1::2] = packed_c >> 4, packed_c & 0xF
                table = NF4 if qt == "nf4" else FP4
                ref = (table[codes[:n]] * np.repeat(scale, 64)[:n]).astype(np.float32)
                if lib is not None and n % 2 == 0:
                    ref_n = native_dequantize_4bit(lib, qt, np.ascontiguousarray(g_packed), np.ascontiguousarray(scale, np.float32), n)
                    r["values_eq_native"] = bool(np.array_equal(got[name + ".dequantized"].reshape(-1), ref_n))
                dv = got[name + ".dequantized"].reshape(-1)
                r["values_eq"] = bool(np.array_equal(dv, ref))
                r["max_abs_diff"] = float(np.max(np.abs(dv - ref)))
                r["rel_error_vs_input"] = float(np.abs(dv - a.reshape(-1)).mean() / max(np.abs(a).mean(), 1e-30))
                must = ["codes_eq_cuda", "quant_map_eq", "state_ok", "values_eq"]
                must += ["nested_quant_map_eq", "nested_codes_eq_cuda", "nested_absmax_eq"] if dq else ["absmax_eq"]
                if lib is not None:
                    must += ["nested_absmax_eq_native"] if dq else []
                    must += ["values_eq_native"] if n % 2 == 0 else []
                # the CPU default differs from CUDA only on an all-zero block (it clamps absmax to 1e-38)
                # FP4 on CPU compares against computed midpoints, CUDA against rounded literals (0.583333f vs
                # 0.58333334f): values between them (e.g. bf16 weights at exactly 7/12 of absmax) differ; informational
                if name != "g.zero_block" and qt == "nf4":
                    must.append("codes_eq_cpu_default")
                bad = [k for k in must if not r.get(k)]
                r["ok"] = not bad
                if bad:
                    r["failed"] = bad
                    ok = False
                report["tensors"][key] = r
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
