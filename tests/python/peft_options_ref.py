"""PEFT's LoRA options as PEFT itself computes them: the reference side of tests/integration/peft-options.test.ts.

  adapters --model NAME=DIR [--model …] --tokens T.json --out DIR
      writes one PEFT adapter per case of CASES (get_peft_model + save_pretrained; lora_A/lora_B, biases and
      modules_to_save copies randomised so every part of the adapter moves the logits) and DIR/manifest.json:
      {case: {"model", "adapter", "logits" (PEFT's, [B][T][V]), "base_diff" (how far the adapter moves them)}};
      a case PEFT itself refuses is recorded as {"peft_error"}.
  peft-logits --model DIR --adapter DIR --tokens T.json --out O.json
      PeftModel.from_pretrained(model, adapter) logits: how PEFT reads an adapter this engine wrote.
  hf-logits --model DIR --tokens T.json --out O.json
      transformers' logits of a model folder (a merged one).

Only safetensors are read and written; nothing from the model folders is executed.
"""
import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

# case -> (model name, LoraConfig keyword arguments)
CASES = {
    "plain": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "alpha_pattern_regex": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          alpha_pattern={r"layers\.1\.self_attn\.v_proj": 64})),
    "alpha_pattern_alternation": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                alpha_pattern={"(q|v)_proj": 40})),
    "rank_pattern_regex": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                         rank_pattern={r"layers\.1\.self_attn\.(q|v)_proj": 2})),
    "target_regex_named_group": ("llama", dict(r=4, lora_alpha=8, target_modules=r".*\.(?P<which>q|v)_proj")),
    "all_linear": ("llama", dict(r=2, lora_alpha=4, target_modules="all-linear")),
    "exclude_modules": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      exclude_modules=["model.layers.0.self_attn.q_proj"])),
    "exclude_regex": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                    exclude_modules=r".*layers\.1\..*")),
    "layers_to_transform": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], layers_to_transform=[1])),
    "layers_pattern": ("llama", dict(r=4, lora_alpha=8, target_modules=["v_proj"], layers_to_transform=0, layers_pattern="layers")),
    "mts_overlaps_target": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                                          modules_to_save=["model.layers.1.mlp.up_proj"])),
    "bias_all": ("bloom", dict(r=4, lora_alpha=8, target_modules=["query_key_value"], bias="all")),
    "bias_lora_only": ("bloom", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "dense_h_to_4h"], bias="lora_only")),
    "bias_all_neox": ("gpt_neox", dict(r=4, lora_alpha=8, target_modules=["query_key_value"], bias="all")),
    "tied_head_copy": ("bloom", dict(r=4, lora_alpha=8, target_modules=["query_key_value"], modules_to_save=["lm_head"])),
    "tied_embed_copy": ("bloom", dict(r=4, lora_alpha=8, target_modules=["query_key_value"], modules_to_save=["word_embeddings"])),
    # LoRA on the input embedding (PEFT's lora.Embedding) and the LM head (a Linear): untied, tied, GPT-NeoX's names,
    # with rank/alpha patterns on them
    "embed_head": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens", "lm_head"])),
    "embed_head_patterns": ("llama", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head"],
                                          rank_pattern={"lm_head": 2}, alpha_pattern={"embed_tokens": 32})),
    "embed_head_tied": ("bloom", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "word_embeddings", "lm_head"])),
    "embed_head_neox": ("gpt_neox", dict(r=4, lora_alpha=8, target_modules=["query_key_value", "embed_in", "embed_out"])),
    # options the engine refuses by name
    "lookbehind": ("llama", dict(r=4, lora_alpha=8, target_modules=r".*(?<!k)_proj")),
    "lora_bias": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"], lora_bias=True)),
    "trainable_tokens": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"], trainable_token_indices=[5, 17])),
    "layer_replication": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"], layer_replication=[[0, 2], [1, 2]])),
    "target_parameters": ("llama", dict(r=4, lora_alpha=8, target_modules=[], target_parameters=["self_attn.q_proj.weight"])),
}


def load_tokens(path):
    with open(path) as f:
        return json.load(f)["input_ids"]


def hf_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, use_safetensors=True).eval()


def logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens)).logits.float()


def cmd_adapters(a):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    models = dict(m.split("=", 1) for m in a.model)
    tokens = load_tokens(a.tokens)
    os.makedirs(a.out, exist_ok=True)
    base_logits = {name: logits(hf_model(d), tokens) for name, d in models.items()}
    manifest = {}
    for case, (name, kw) in CASES.items():
        if name not in models:
            continue
        out = os.path.join(a.out, case)
        entry = {"model": models[name], "adapter": out}
        try:
            torch.manual_seed(0)
            pm = get_peft_model(hf_model(models[name]), LoraConfig(task_type="CAUSAL_LM", **kw))
            with torch.no_grad():
                for n, p in pm.named_parameters():
                    if "lora_A" in n or "lora_B" in n:
                        torch.nn.init.normal_(p, std=0.2)
                    elif p.requires_grad:  # trained biases, modules_to_save copies, trainable tokens
                        p.add_(torch.randn_like(p) * 0.5)
            pm.save_pretrained(out, safe_serialization=True)
            ref = logits(PeftModel.from_pretrained(hf_model(models[name]), out).eval(), tokens)
            entry["logits"] = ref.tolist()
            entry["base_diff"] = float((ref - base_logits[name]).abs().max())
        except Exception as e:  # an option this PEFT does not have
            entry["peft_error"] = f"{type(e).__name__}: {e}"[:300]
        manifest[case] = entry
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def cmd_peft_logits(a):
    from peft import PeftModel

    m = PeftModel.from_pretrained(hf_model(a.model), a.adapter).eval()
    with open(a.out, "w") as f:
        json.dump({"logits": logits(m, load_tokens(a.tokens)).tolist()}, f)


def cmd_hf_logits(a):
    with open(a.out, "w") as f:
        json.dump({"logits": logits(hf_model(a.model), load_tokens(a.tokens)).tolist()}, f)


def main():
    import torch

    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("adapters")
    s.add_argument("--model", action="append", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("peft-logits")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("hf-logits")
    s.add_argument("--model", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    a = p.parse_args()
    {"adapters": cmd_adapters, "peft-logits": cmd_peft_logits, "hf-logits": cmd_hf_logits}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
