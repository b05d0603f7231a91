#!/usr/bin/env python3
"""Test-only references for the model manager (tests/integration/model-manager.test.ts).

  torch-save   --model DIR --out DIR2 [--shards N] [--dtype f32|f16|bf16]
               the folder's weights written by torch.save as pytorch_model.bin (or N shards + index), one tensor
               saved as a non-contiguous view (transposed storage) so the reader's stride handling is exercised
  evil         --out DIR --marker PATH    a pytorch_model.bin whose pickle would run `touch PATH` (os.system)
  vocab-delta  --model DIR --out ADIR [--extra N] [--seed S]
               a Chinese-LLaMA-Alpaca style delta saved by PEFT as adapter_model.bin: LoRA on q/v plus full
               embed_tokens/lm_head for a vocabulary extended by N tokens, with the extended tokenizer
  peft-merge   --model DIR --adapter ADIR --tokens T.json --out O.json
               logits of PEFT's merge_and_unload (after resize_token_embeddings to the adapter's tokenizer when it
               is larger, as merge_llama_with_chinese_lora.py does)
  gguf-dump    --file F --out O.json      metadata and tensor list read by llama.cpp's gguf-py reader

All float32 on CPU, offline; exit 2 on bad input.
"""
import argparse
import json
import os
import shutil
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def torch_stack():
    import torch
    torch.set_num_threads(2)
    return torch


def load_state(d):
    from safetensors.torch import load_file
    return load_file(os.path.join(d, "model.safetensors"))


def cmd_torch_save(a):
    torch = torch_stack()
    sd = load_state(a.model)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    out = {}
    for i, (k, v) in enumerate(sorted(sd.items())):
        v = v.to(dt)
        if i == 1 and v.dim() == 2:
            v = v.t().contiguous().t()  # same values, transposed storage: a non-contiguous view
            assert not v.is_contiguous()
        out[k] = v
    os.makedirs(a.out, exist_ok=True)
    for f in os.listdir(a.model):
        if f != "model.safetensors" and os.path.isfile(os.path.join(a.model, f)):
            shutil.copy(os.path.join(a.model, f), a.out)
    keys = list(out)
    if a.shards <= 1:
        torch.save(out, os.path.join(a.out, "pytorch_model.bin"))
        return
    per = (len(keys) + a.shards - 1) // a.shards
    wm = {}
    for s in range(a.shards):
        name = f"pytorch_model-{s + 1:05d}-of-{a.shards:05d}.bin"
        part = {k: out[k] for k in keys[s * per:(s + 1) * per]}
        torch.save(part, os.path.join(a.out, name))
        wm.update({k: name for k in part})
    with open(os.path.join(a.out, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def cmd_evil(a):
    torch = torch_stack()
    os.makedirs(a.out, exist_ok=True)
    torch.save({"w": torch.ones(2, 2), "x": Evil(a.marker)}, os.path.join(a.out, "pytorch_model.bin"))


def cmd_vocab_delta(a):
    torch = torch_stack()
    import transformers
    import peft
    transformers.logging.set_verbosity_error()
    torch.manual_seed(a.seed)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    tok.add_tokens([f"<zh{i}>" for i in range(a.extra)])
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    model.resize_token_embeddings(len(tok))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
            elif "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(a.out, safe_serialization=False)
    tok.save_pretrained(a.out)
    if not os.path.exists(os.path.join(a.out, "adapter_model.bin")):
        sys.exit("PEFT wrote no adapter_model.bin")


def cmd_peft_merge(a):
    torch = torch_stack()
    import transformers
    import peft
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    if any(os.path.exists(os.path.join(a.adapter, f)) for f in ("tokenizer.json", "tokenizer.model")):
        tok = transformers.AutoTokenizer.from_pretrained(a.adapter)
        if len(tok) != model.get_input_embeddings().weight.size(0):
            model.resize_token_embeddings(len(tok))
    model = peft.PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
    model.eval()
    ids = json.load(open(a.tokens))["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    json.dump({"logits": logits.tolist()}, open(a.out, "w"))


def cmd_gguf_dump(a):
    import gguf
    r = gguf.GGUFReader(a.file)
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            v = f.contents()
        except Exception:  # noqa: BLE001
            v = None
        if isinstance(v, list) and len(v) > 8:
            v = {"len": len(v), "head": v[:8]}
        fields[k] = v
    tensors = [{"name": t.name, "shape": [int(x) for x in t.shape], "type": t.tensor_type.name} for t in r.tensors]
    json.dump({"fields": fields, "tensors": tensors}, open(a.out, "w"), default=str)


def main():
    p = argparse.ArgumentParser(prog="model_manager_ref")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("torch-save")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    s = sub.add_parser("evil")
    s.add_argument("--out", required=True)
    s.add_argument("--marker", required=True)
    s = sub.add_parser("vocab-delta")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--extra", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("peft-merge")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("gguf-dump")
    s.add_argument("--file", required=True)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    {"torch-save": cmd_torch_save, "evil": cmd_evil, "vocab-delta": cmd_vocab_delta, "peft-merge": cmd_peft_merge,
     "gguf-dump": cmd_gguf_dump}[a.cmd](a)


if __name__ == "__main__":
    main()
