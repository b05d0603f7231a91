#!/usr/bin/env python3
"""Write a random-init llama HF folder (config.json + model.safetensors + tokenizer files), the same layout
as `llmt-engine create-tiny --family llama`. Init: HF's LlamaPreTrainedModel (normal(0, init_std) for linear
and embedding weights, RMSNorm weights = 1).
usage: make_model.py --out DIR --tokenizer DIR_OR_JSON [--hidden 128 --layers 2 --inter 256 --heads 4 --kv 4]"""
import argparse, json, os, shutil
import numpy as np
from safetensors.numpy import save_file

ap = argparse.ArgumentParser()
ap.add_argument('--out', required=True)
ap.add_argument('--tokenizer', required=True, help='folder holding tokenizer.json (or the file)')
ap.add_argument('--hidden', type=int, default=128)
ap.add_argument('--layers', type=int, default=2)
ap.add_argument('--inter', type=int, default=256)
ap.add_argument('--heads', type=int, default=4)
ap.add_argument('--kv', type=int, default=0, help='kv heads (0 = heads)')
ap.add_argument('--ctx', type=int, default=512)
ap.add_argument('--init-std', type=float, default=0.02)
ap.add_argument('--tie', action='store_true')
ap.add_argument('--seed', type=int, default=1)
a = ap.parse_args()
kv = a.kv or a.heads
tj = a.tokenizer if a.tokenizer.endswith('.json') else os.path.join(a.tokenizer, 'tokenizer.json')
t = json.load(open(tj, encoding='utf-8'))
V = len(t['model']['vocab']) + sum(1 for x in t.get('added_tokens', []) if x['content'] not in t['model']['vocab'])
V = max(V, 1 + max([x['id'] for x in t.get('added_tokens', [])] + list(t['model']['vocab'].values())))
os.makedirs(a.out, exist_ok=True)
shutil.copy(tj, os.path.join(a.out, 'tokenizer.json'))
H, I, L, hd = a.hidden, a.inter, a.layers, a.hidden // a.heads
cfg = {"model_type": "llama", "intermediate_size": I, "num_key_value_heads": kv, "hidden_act": "silu",
       "rms_norm_eps": 1e-06, "rope_theta": 10000, "architectures": ["LlamaForCausalLM"], "vocab_size": V,
       "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": a.heads, "max_position_embeddings": a.ctx,
       "tie_word_embeddings": bool(a.tie), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
       "torch_dtype": "float32", "initializer_range": a.init_std}
json.dump(cfg, open(os.path.join(a.out, 'config.json'), 'w'), indent=2)
json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, open(os.path.join(a.out, 'generation_config.json'), 'w'), indent=2)
json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
          open(os.path.join(a.out, 'special_tokens_map.json'), 'w'), indent=2)
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
           "unk_token": "<unk>", "model_max_length": a.ctx, "clean_up_tokenization_spaces": False},
          open(os.path.join(a.out, 'tokenizer_config.json'), 'w'), indent=2)
rng = np.random.default_rng(a.seed)
n = lambda *s: (rng.standard_normal(s) * a.init_std).astype(np.float32)
w = {'model.embed_tokens.weight': n(V, H), 'model.norm.weight': np.ones(H, np.float32)}
if not a.tie:
    w['lm_head.weight'] = n(V, H)
for l in range(L):
    p = f'model.layers.{l}.'
    w[p + 'input_layernorm.weight'] = np.ones(H, np.float32)
    w[p + 'post_attention_layernorm.weight'] = np.ones(H, np.float32)
    w[p + 'self_attn.q_proj.weight'] = n(a.heads * hd, H)
    w[p + 'self_attn.k_proj.weight'] = n(kv * hd, H)
    w[p + 'self_attn.v_proj.weight'] = n(kv * hd, H)
    w[p + 'self_attn.o_proj.weight'] = n(H, a.heads * hd)
    w[p + 'mlp.gate_proj.weight'] = n(I, H)
    w[p + 'mlp.up_proj.weight'] = n(I, H)
    w[p + 'mlp.down_proj.weight'] = n(H, I)
save_file(w, os.path.join(a.out, 'model.safetensors'), metadata={'format': 'pt'})
print(json.dumps({'out': a.out, 'vocab': V, 'params': int(sum(x.size for x in w.values()))}))
