#!/usr/bin/env python3
"""TEST-ONLY: checks that a folder written by `llmt-engine quantize --model` is what transformers 4.45 loads as a
bitsandbytes 4-bit checkpoint, as far as that can be checked without bitsandbytes (it needs torch >= 2.4; the test
venv has 1.13):
  - config.json "quantization_config" round-trips through transformers' BitsAndBytesConfig.from_dict().to_dict();
  - the key set is exactly what Bnb4BitHfQuantizer expects: every nn.Linear that replace_with_bnb_linear converts
    (all but get_keys_to_not_convert(model), i.e. lm_head) carries `weight` (uint8 [(n+1)/2, 1]) and the
    quant-state tensors; every other state_dict key is plain with the model's shape;
  - each weight's state passes bitsandbytes' QuantState.from_dict() checks (ported: one packed
    quant_state.bitsandbytes__<type> tensor, stripped keys within valid_qs_keys, torch dtypes by name, shape);
  - dequantizing the stored state (numpy, bitsandbytes' formula) stays close to the original weight.
Usage: bnb_layout_check.py QUANTIZED_DIR ORIGINAL_DIR → prints a JSON report; exit 1 on any mismatch.
"""
import importlib.metadata
import json
import sys

import numpy as np
from safetensors.numpy import load_file

VALID_QS_KEYS = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type", "blocksize",
                 "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]  # bitsandbytes QuantState


def main():
    qdir, odir = sys.argv[1], sys.argv[2]
    errors = []
    real_version = importlib.metadata.version
    # BitsAndBytesConfig.post_init asks for bitsandbytes' version; it is not installed (see the docstring)
    importlib.metadata.version = lambda name: "0.44.1" if name == "bitsandbytes" else real_version(name)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import get_keys_to_not_convert

    cfg = json.load(open(f"{qdir}/config.json"))
    qc = cfg["quantization_config"]
    rt = BitsAndBytesConfig.from_dict(dict(qc)).to_dict()
    if json.loads(json.dumps(rt)) != qc:
        errors.append(f"quantization_config does not round-trip: {qc} vs {rt}")
    qtype = qc["bnb_4bit_quant_type"]

    config = AutoConfig.from_pretrained(odir)
    model = AutoModelForCausalLM.from_config(config)
    skip = get_keys_to_not_convert(model)
    sd = model.state_dict()
    expected = {}
    converted = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not any(k in name for k in skip):  # replace_with_bnb_linear's rule
            converted.append(name + ".weight")
    for k, v in sd.items():
        if k in converted:
            continue
        if k == "lm_head.weight" and config.tie_word_embeddings:
            continue
        expected[k] = tuple(v.shape)
    got = load_file(f"{qdir}/model.safetensors")
    orig = load_file(f"{odir}/model.safetensors")
    want_keys = set(expected)
    suffixes = [".absmax", ".quant_map", f".quant_state.bitsandbytes__{qtype}"]
    if qc["bnb_4bit_use_double_quant"]:
        suffixes += [".nested_absmax", ".nested_quant_map"]
    for w in converted:
        want_keys |= {w} | {w + s for s in suffixes}
    if set(got) != want_keys:
        errors.append(f"keys: missing {sorted(want_keys - set(got))[:8]}, unexpected {sorted(set(got) - want_keys)[:8]}")
    for k, shape in expected.items():
        if k in got and tuple(got[k].shape) != shape:
            errors.append(f"{k}: shape {got[k].shape} != {shape}")
    worst = 0.0
    for w in converted:
        if w not in got:
            continue
        # Bnb4BitHfQuantizer.create_quantized_param: every key containing "<param>." is a quantized stat
        qs = {k: v for k, v in got.items() if w + "." in k}
        qs_key = [k for k in qs if "quant_state" in k]
        if len(qs_key) != 1 or qs_key[0].split(".")[-1] not in ("bitsandbytes__nf4", "bitsandbytes__fp4"):
            errors.append(f"{w}: quant_state keys {qs_key}")
            continue
        packed = qs.pop(qs_key[0])
        if packed.dtype != np.uint8:
            errors.append(f"{w}: quant_state dtype {packed.dtype}")
        qs.update(json.loads(bytes(packed).decode("utf-8")))
        qs = {k.split(".")[-1]: v for k, v in qs.items()}
        if not set(qs).issubset(VALID_QS_KEYS):
            errors.append(f"{w}: keys {sorted(set(qs) - set(VALID_QS_KEYS))} not in QuantState.valid_qs_keys")
        for d in ("dtype", "nested_dtype"):
            if d in qs and not isinstance(getattr(torch, qs[d], None), torch.dtype):
                errors.append(f"{w}: {d} {qs[d]!r} is not a torch dtype")
        shape = tuple(sd[w].shape)
        n = int(np.prod(shape))
        if tuple(qs["shape"]) != shape or qs["quant_type"] != qtype or qs["blocksize"] != 64:
            errors.append(f"{w}: state {qs['shape']}, {qs['quant_type']}, {qs['blocksize']}")
        data = got[w]
        if data.dtype != np.uint8 or data.shape != ((n + 1) // 2, 1):
            errors.append(f"{w}: weight {data.dtype} {data.shape}")
            continue
        # dequantize as bitsandbytes does (dequantize_4bit: absmax = dequantize_blockwise(absmax, state2) + offset)
        absmax = qs["absmax"]
        if "nested_offset" in qs:
            nb = absmax.shape[0]
            scale2 = np.repeat(qs["nested_absmax"], qs["nested_blocksize"])[:nb]
            absmax = qs["nested_quant_map"][absmax] * scale2 + np.float32(qs["nested_offset"])
        codes = np.empty(n + (n & 1), dtype=np.uint8)
        codes[0::2] = data[:, 0] >> 4
        codes[1::2] = data[:, 0] & 15
        deq = qs["quant_map"][codes[:n]] * np.repeat(absmax.astype(np.float32), 64)[:n]
        w0 = orig[w].astype(np.float32).reshape(-1)
        rel = float(np.abs(deq - w0).mean() / np.abs(w0).mean())
        worst = max(worst, rel)
        if rel > 0.15:
            errors.append(f"{w}: dequantized mean relative error {rel:.3f}")
    print(json.dumps({"ok": not errors, "errors": errors[:20], "converted": len(converted), "skipped": skip,
                      "worst_mean_rel_error": worst}))
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()
