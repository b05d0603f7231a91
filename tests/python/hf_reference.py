#!/usr/bin/env python3
"""Test-only reference tool: HF transformers + PEFT numerics for LLMs-train tests.

Subcommands (all float32, eval mode, dropout off, offline, never trust_remote_code):
  make-tiny      write a tiny random model folder (llama | gpt_neox | baichuan)
  make-adapter   write a PEFT LoRA adapter (non-zero lora_B) for such a folder (--use-dora: a DoRA adapter)
  forward        logits (+ HF loss when labels are given), base or base+adapter
  grad           gradients of the loss w.r.t. every trainable adapter tensor
  check-adapter  load an adapter with the unchanged PEFT API, compare logits
  merge-weights  PeftModel.from_pretrained(...).merge_and_unload() weights as float32 safetensors
  baichuan-to-llama  write the llama folder (and adapter) equivalent to a baichuan one

Exit codes: 0 ok, 1 check-adapter mismatch, 2 bad input / usage, 3 internal error.
Run it with the venv that tests/python/setup.sh prints.
"""

import argparse
import json
import math
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

PROG = "hf_reference"

# Tiny shapes shared by the families.
VOCAB = 128
HIDDEN = 64
LAYERS = 2
HEADS = 4
INIT_RANGE = 0.2  # large on purpose: logits are O(1), not ~0
MAX_POS = 256

BAICHUAN_LINEARS = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
BAICHUAN_EMBEDS = ("embed_tokens", "lm_head")


class UserError(Exception):
    """Bad input: reported as one clear line, exit code 2."""


def fail(msg):
    raise UserError(msg)


# --------------------------------------------------------------------------- imports

def _import_stack():
    global torch, transformers, peft, safetensors_torch
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import peft  # noqa: F401
        import safetensors.torch as safetensors_torch  # noqa: F401
    except ImportError as e:  # pragma: no cover
        raise UserError(
            f"cannot import the reference stack ({e}); run tests/python/setup.sh "
            f"and use the python it prints (this is {sys.executable})")
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)
    transformers.logging.set_verbosity_error()


# --------------------------------------------------------------------------- helpers

def read_json(path, what):
    if not os.path.isfile(path):
        fail(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{what} {path} is not valid JSON: {e}")


def write_json(path, obj, indent=None):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)
        f.write("\n")


def prepare_out_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"--out {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)


def model_config_dict(model_dir):
    if not os.path.isdir(model_dir):
        fail(f"model folder not found: {model_dir}")
    cfg = read_json(os.path.join(model_dir, "config.json"), "model config.json")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        fail(f"{model_dir}/config.json has no model_type")
    has_weights = any(os.path.isfile(os.path.join(model_dir, n)) for n in (
        "model.safetensors", "model.safetensors.index.json"))
    if not has_weights:
        fail(f"{model_dir} has no model.safetensors (or model.safetensors.index.json)")
    return cfg


def load_safetensors_dir(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return safetensors_torch.load_file(single)
    index = read_json(os.path.join(model_dir, "model.safetensors.index.json"), "safetensors index")
    out = {}
    for shard in sorted(set(index.get("weight_map", {}).values())):
        out.update(safetensors_torch.load_file(os.path.join(model_dir, shard)))
    return out


def adapter_config_dict(adapter_dir):
    if not os.path.isdir(adapter_dir):
        fail(f"adapter folder not found: {adapter_dir}")
    cfg = read_json(os.path.join(adapter_dir, "adapter_config.json"), "adapter_config.json")
    if not isinstance(cfg, dict):
        fail(f"{adapter_dir}/adapter_config.json is not an object")
    if cfg.get("peft_type") != "LORA":
        fail(f"{adapter_dir}: only peft_type LORA is supported (got {cfg.get('peft_type')!r})")
    if not os.path.isfile(os.path.join(adapter_dir, "adapter_model.safetensors")):
        fail(f"{adapter_dir} has no adapter_model.safetensors")
    return cfg


def sort_adapter_config(adapter_dir):
    """PEFT stores target_modules as a set: its JSON order follows the string hash seed.
    Sort it so the written file is deterministic (content is unchanged)."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    cfg = read_json(path, "adapter_config.json")
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(path, cfg, indent=2)


def read_tokens(path, vocab_size, need_labels=False):
    obj = read_json(path, "tokens file")
    if not isinstance(obj, dict):
        fail(f"{path}: expected an object with input_ids (and optional labels)")
    extra = set(obj) - {"input_ids", "labels"}
    if extra:
        fail(f"{path}: unsupported keys {sorted(extra)} (only input_ids, labels; no attention mask)")

    def matrix(key, allow_ignore):
        rows = obj[key]
        if not isinstance(rows, list) or not rows:
            fail(f"{path}: {key} must be a non-empty list of rows")
        width = None
        for r, row in enumerate(rows):
            if not isinstance(row, list) or not row:
                fail(f"{path}: {key}[{r}] must be a non-empty list of ints")
            if width is None:
                width = len(row)
            elif len(row) != width:
                fail(f"{path}: {key} rows differ in length ({width} vs {len(row)} at row {r})")
            for c, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, int):
                    fail(f"{path}: {key}[{r}][{c}] is not an int: {v!r}")
                if allow_ignore and v == -100:
                    continue
                if v < 0 or v >= vocab_size:
                    fail(f"{path}: {key}[{r}][{c}] = {v} out of range [0, {vocab_size})"
                         + (" (use -100 to ignore)" if allow_ignore else ""))
        return torch.tensor(rows, dtype=torch.long)

    if "input_ids" not in obj:
        fail(f"{path}: missing input_ids")
    ids = matrix("input_ids", False)
    labels = None
    if "labels" in obj and obj["labels"] is not None:
        labels = matrix("labels", True)
        if labels.shape != ids.shape:
            fail(f"{path}: labels shape {list(labels.shape)} != input_ids shape {list(ids.shape)}")
        if ids.shape[1] < 2 or not bool((labels[:, 1:] != -100).any()):
            fail(f"{path}: after the causal shift no label is left (all -100 or length < 2): "
                 "the loss would be NaN")
    elif need_labels:
        fail(f"{path}: labels are required for this subcommand")
    return ids, labels


def parse_list(s):
    if s is None:
        return None
    items = [x.strip() for x in s.split(",") if x.strip()]
    return items or None


# --------------------------------------------------------------------------- models

def family_of(cfg):
    mt = cfg.get("model_type")
    if mt in ("llama", "gpt_neox", "baichuan", "mistral", "qwen2"):
        return mt
    fail(f"unsupported model_type {mt!r} (llama, mistral, qwen2, gpt_neox, baichuan)")


def perturb_vectors(model, gen):
    """Norm weights ~ 1 +- 0.1 and biases ~ 0 +- 0.1, so loaders that skip them fail."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def tiny_llama_config(args, kv_heads, tied, rope_scaling):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=kv_heads,
        hidden_act="silu", max_position_embeddings=MAX_POS, rms_norm_eps=1e-6,
        rope_theta=10000.0, rope_scaling=rope_scaling, initializer_range=INIT_RANGE,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        torch_dtype="float32", use_cache=True)


def build_random(config_obj, cls, seed):
    torch.manual_seed(seed)
    model = cls(config_obj)
    gen = torch.Generator().manual_seed(seed + 1)
    perturb_vectors(model, gen)
    model.eval()
    return model


def baichuan_state_from_llama(sd, n_layers):
    out = {}
    for k, v in sd.items():
        if ".self_attn.q_proj." in k or ".self_attn.k_proj." in k or ".self_attn.v_proj." in k:
            continue
        if k.endswith("rotary_emb.inv_freq"):
            continue
        out[k] = v.contiguous()
    for i in range(n_layers):
        p = f"model.layers.{i}.self_attn."
        out[p + "W_pack.weight"] = torch.cat(
            [sd[p + "q_proj.weight"], sd[p + "k_proj.weight"], sd[p + "v_proj.weight"]], 0).contiguous()
    return out


def llama_state_from_baichuan(sd, n_layers, hidden):
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        if ".self_attn.W_pack." in k:
            continue
        out[k] = v
    for i in range(n_layers):
        p = f"model.layers.{i}.self_attn."
        w = sd.get(p + "W_pack.weight")
        if w is None:
            fail(f"baichuan weights lack {p}W_pack.weight")
        if tuple(w.shape) != (3 * hidden, hidden):
            fail(f"{p}W_pack.weight has shape {list(w.shape)}, expected [{3 * hidden}, {hidden}]")
        q, k, v = w.split(hidden, 0)
        out[p + "q_proj.weight"] = q.contiguous()
        out[p + "k_proj.weight"] = k.contiguous()
        out[p + "v_proj.weight"] = v.contiguous()
    return out


def baichuan_llama_config(cfg):
    from transformers import LlamaConfig
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for k in need:
        if not isinstance(cfg.get(k), int):
            fail(f"baichuan config.json lacks integer {k}")
    if cfg.get("hidden_act", "silu") != "silu":
        fail("baichuan config: only hidden_act silu is supported")
    if cfg.get("tie_word_embeddings", False):
        fail("baichuan config: tie_word_embeddings must be false")
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_attention_heads"], hidden_act="silu",
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=10000.0, rope_scaling=None,
        initializer_range=cfg.get("initializer_range", 0.02), tie_word_embeddings=False,
        bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 0))


def load_base(model_dir):
    """Returns (model, family, config dict). Baichuan folders become an equivalent Llama."""
    cfg = model_config_dict(model_dir)
    fam = family_of(cfg)
    if fam == "baichuan":
        from transformers import LlamaForCausalLM
        lcfg = baichuan_llama_config(cfg)
        sd = llama_state_from_baichuan(load_safetensors_dir(model_dir), lcfg.num_hidden_layers,
                                       lcfg.hidden_size)
        torch.manual_seed(0)
        model = LlamaForCausalLM(lcfg)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            fail(f"baichuan weights do not match the config: missing {missing[:5]}, "
                 f"unexpected {unexpected[:5]}")
        model = model.float()
    else:
        from transformers import AutoModelForCausalLM
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, torch_dtype=torch.float32, local_files_only=True,
                trust_remote_code=False)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            fail(f"cannot load model {model_dir}: {e}")
    model.eval()
    window_qwen2_layers(model, cfg)
    return model, fam, cfg


def window_qwen2_layers(model, cfg):
    """Qwen2 with use_sliding_window: transformers >= 4.53 windows the layers from max_window_layers on (layer_types,
    the sliding-window causal mask: key j visible to query i iff i - window < j <= i); 4.45 does so only in its
    flash-attention path and runs eager/SDPA fully causal, with a warning. On such a transformers the same mask is
    given here to those layers' attention, so the reference computes what current transformers does."""
    if cfg.get("model_type") != "qwen2" or not cfg.get("use_sliding_window") or not cfg.get("sliding_window"):
        return
    if getattr(model.config, "layer_types", None) is not None:
        return  # this transformers windows them itself
    window, first = int(cfg["sliding_window"]), int(cfg.get("max_window_layers", 28))
    for idx, layer in enumerate(model.model.layers):
        if idx < first:
            continue
        attn = layer.self_attn

        def windowed(*args, _orig=attn.forward, **kw):
            hs = kw["hidden_states"] if "hidden_states" in kw else args[0]
            T = hs.shape[1]
            i = torch.arange(T)[:, None]
            j = torch.arange(T)[None, :]
            allowed = (j <= i) & (j > i - window)
            mask = torch.zeros(T, T, dtype=hs.dtype).masked_fill(~allowed, torch.finfo(hs.dtype).min)
            mask = mask[None, None].expand(hs.shape[0], 1, T, T)
            given = kw.get("attention_mask")
            kw["attention_mask"] = mask if given is None else torch.minimum(mask, given)
            return _orig(*args, **kw)

        attn.forward = windowed


# --------------------------------------------------------------------------- adapters

def saved_name(param_name, adapter="default"):
    """PEFT's in-memory parameter name -> the key PEFT writes in adapter_model.safetensors."""
    n = param_name.replace(f".modules_to_save.{adapter}.", ".")
    n = n.replace(f".{adapter}.", ".")
    if n.endswith(f".{adapter}"):  # ParameterDict entries (lora_embedding_A/B)
        n = n[: -len(adapter) - 1]
    if n.endswith(".lora_magnitude_vector.weight"):  # DoRA: saved without the module's parameter name
        n = n[: -len(".weight")]
    return n


def adapter_state_from_peft(pm):
    """Adapter params of a PeftModel (LoRA + modules_to_save copies) keyed by saved names,
    i.e. the keys save_pretrained writes."""
    out = {}
    for name, p in pm.named_parameters():
        if ".lora_" in name or ".modules_to_save.default." in name:
            out[saved_name(name)] = p
    return out


def expand_baichuan_targets(targets):
    if not isinstance(targets, list):
        fail("baichuan adapter: target_modules must be a list of module names (not a regex)")
    out = []
    for t in targets:
        if t == "W_pack":
            out += ["q_proj", "k_proj", "v_proj"]
        elif t in BAICHUAN_LINEARS:
            out.append(t)
        else:
            fail(f"baichuan adapter: unsupported target module {t!r} (allowed: {', '.join(BAICHUAN_LINEARS)})")
    return out


def baichuan_lora_to_llama(sd, hidden):
    """Fused W_pack LoRA -> q/k/v LoRA with shared A and row blocks of B."""
    out = {}
    for k, v in sd.items():
        if ".W_pack.lora_A." in k:
            for proj in ("q_proj", "k_proj", "v_proj"):
                out[k.replace(".W_pack.", f".{proj}.")] = v.clone()
        elif ".W_pack.lora_B." in k:
            if v.shape[0] != 3 * hidden:
                fail(f"{k} has {v.shape[0]} rows, expected 3*hidden = {3 * hidden}")
            for proj, blk in zip(("q_proj", "k_proj", "v_proj"), v.split(hidden, 0)):
                out[k.replace(".W_pack.", f".{proj}.")] = blk.contiguous().clone()
        elif ".W_pack." in k:
            fail(f"baichuan adapter: unsupported W_pack tensor {k}")
        else:
            out[k] = v
    return out


def llama_lora_to_baichuan(sd, check_shared=False):
    out = {}
    groups = {}
    for k, v in sd.items():
        for proj in ("q_proj", "k_proj", "v_proj"):
            tag = f".self_attn.{proj}."
            if tag in k:
                groups.setdefault(k.replace(tag, ".self_attn.W_pack."), {})[proj] = v
                break
        else:
            out[k] = v
    for k, parts in groups.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise RuntimeError(f"incomplete q/k/v group for {k}: {sorted(parts)}")
        q, kk, vv = parts["q_proj"], parts["k_proj"], parts["v_proj"]
        if ".lora_A." in k:
            if check_shared and not (torch.equal(q, kk) and torch.equal(q, vv)):
                raise RuntimeError(f"lora_A of q/k/v differ for {k}")
            out[k] = q if check_shared else (q + kk + vv)  # grads of a shared A add up
        else:
            out[k] = torch.cat([q, kk, vv], 0)
    return {k: v.contiguous() for k, v in out.items()}


def load_adapter(model, fam, adapter_dir, trainable):
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    acfg = adapter_config_dict(adapter_dir)
    if fam != "baichuan":
        try:
            pm = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
        except (ValueError, TypeError, KeyError, RuntimeError, OSError) as e:
            fail(f"PEFT cannot load adapter {adapter_dir}: {type(e).__name__}: {e}")
        pm.eval()
        return pm
    # Baichuan: PEFT would wrap W_pack; we attach the identical math to q/k/v of the Llama.
    for key in ("rank_pattern", "alpha_pattern"):
        if acfg.get(key):
            fail(f"baichuan adapter: {key} is not supported")
    if acfg.get("layers_to_transform") is not None:
        fail("baichuan adapter: layers_to_transform is not supported")
    hidden = model.config.hidden_size
    fields = dict(acfg)
    fields["target_modules"] = expand_baichuan_targets(acfg.get("target_modules"))
    fields["inference_mode"] = not trainable
    allowed = set(LoraConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        fail(f"baichuan adapter: fields unknown to this PEFT: {unknown}")
    lcfg = LoraConfig(**fields)
    pm = get_peft_model(model, lcfg)
    sd = safetensors_torch.load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    sd = baichuan_lora_to_llama(sd, hidden)
    expected = set(adapter_state_from_peft(pm))
    if set(sd) != expected:
        fail(f"baichuan adapter tensors do not match its config: missing "
             f"{sorted(expected - set(sd))[:4]}, unexpected {sorted(set(sd) - expected)[:4]}")
    cur = adapter_state_from_peft(pm)
    for k, v in sd.items():
        if tuple(v.shape) != tuple(cur[k].shape):
            fail(f"adapter tensor {k} has shape {list(v.shape)}, expected {list(cur[k].shape)}")
    set_peft_model_state_dict(pm, {k: v.float() for k, v in sd.items()})
    for name, p in pm.named_parameters():
        p.requires_grad_(trainable and (".lora_" in name or ".modules_to_save." in name))
    pm.eval()
    return pm


def run_forward(model, ids, labels, grad=False):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                    use_cache=False, return_dict=True)
    return out.logits, out.loss


# --------------------------------------------------------------------------- subcommands

def cmd_make_tiny(a):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaForCausalLM
    prepare_out_dir(a.out)
    rope_scaling = None
    if a.rope_scaling_linear is not None:
        if a.family == "baichuan":
            fail("--rope-scaling-linear is not supported for baichuan")
        if not (a.rope_scaling_linear > 1.0) or math.isinf(a.rope_scaling_linear):
            fail("--rope-scaling-linear must be a finite factor > 1")
        rope_scaling = {"type": "linear", "factor": float(a.rope_scaling_linear)}
    if a.sequential and a.family != "gpt_neox":
        fail("--sequential only applies to gpt_neox")
    if a.family == "llama":
        model = build_random(tiny_llama_config(a, 2, a.tied, rope_scaling), LlamaForCausalLM, a.seed)
        model.save_pretrained(a.out, safe_serialization=True)
    elif a.family == "gpt_neox":
        cfg = GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, intermediate_size=128, hidden_act="gelu",
            rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=MAX_POS,
            initializer_range=INIT_RANGE, layer_norm_eps=1e-5,
            use_parallel_residual=not a.sequential, rope_scaling=rope_scaling,
            tie_word_embeddings=a.tied, bos_token_id=0, eos_token_id=2, torch_dtype="float32")
        model = build_random(cfg, GPTNeoXForCausalLM, a.seed)
        model.save_pretrained(a.out, safe_serialization=True)
    else:
        if a.tied:
            fail("--tied is not supported for baichuan (Baichuan-7B has an untied lm_head)")
        lcfg = tiny_llama_config(a, HEADS, False, None)
        model = build_random(lcfg, LlamaForCausalLM, a.seed)
        sd = baichuan_state_from_llama(model.state_dict(), LAYERS)
        safetensors_torch.save_file(dict(sorted(sd.items())), os.path.join(a.out, "model.safetensors"),
                                    metadata={"format": "pt"})
        cfg = {
            "architectures": ["BaiChuanForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                         "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"},
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": INIT_RANGE,
            "intermediate_size": lcfg.intermediate_size, "max_position_embeddings": MAX_POS,
            "model_type": "baichuan", "num_attention_heads": HEADS,
            "num_hidden_layers": LAYERS, "rms_norm_eps": lcfg.rms_norm_eps,
            "tie_word_embeddings": False, "torch_dtype": "float32",
            "transformers_version": transformers.__version__, "use_cache": True,
            "vocab_size": VOCAB,
        }
        write_json(os.path.join(a.out, "config.json"), cfg, indent=2)
    print(f"wrote {a.family} model to {a.out}")


def randomize_adapter(tensors, seed):
    """lora_A ~ N(0, 0.2), lora_B ~ N(0, 0.2) (non-zero!), modules_to_save copies perturbed.
    Tensors are visited in sorted key order with one seeded generator: deterministic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k in sorted(tensors):
            p = tensors[k]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if ".lora_A." in k or ".lora_B." in k:
                p.copy_(0.2 * noise)
            else:
                p.add_(0.05 * noise)


def cmd_make_adapter(a):
    from peft import LoraConfig, get_peft_model
    targets = parse_list(a.targets)
    if not targets:
        fail("--targets must name at least one module")
    mts = parse_list(a.modules_to_save)
    if a.r <= 0:
        fail("--r must be > 0")
    if a.dropout < 0 or a.dropout >= 1:
        fail("--dropout must be in [0, 1)")
    cfg = model_config_dict(a.model)
    fam = family_of(cfg)
    prepare_out_dir(a.out)
    torch.manual_seed(a.seed)
    if fam != "baichuan":
        model, _, _ = load_base(a.model)
        lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                          target_modules=targets, modules_to_save=mts, bias="none",
                          task_type="CAUSAL_LM", use_dora=a.use_dora, use_rslora=a.use_rslora)
        try:
            pm = get_peft_model(model, lcfg)
        except ValueError as e:
            fail(f"PEFT rejects the targets for {fam}: {e}")
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        for m in (mts or []):
            if m not in names:
                fail(f"--modules-to-save {m!r} is not a module of this {fam} model")
        randomize_adapter(adapter_state_from_peft(pm), a.seed)
        pm.save_pretrained(a.out, safe_serialization=True)
        sort_adapter_config(a.out)
    else:
        if a.use_dora or a.use_rslora:
            fail("baichuan: --use-dora / --use-rslora are not supported here")
        for t in targets:
            if t not in BAICHUAN_LINEARS:
                fail(f"baichuan: unsupported target {t!r} (allowed: {', '.join(BAICHUAN_LINEARS)})")
        for m in (mts or []):
            if m not in BAICHUAN_EMBEDS:
                fail(f"baichuan: unsupported modules_to_save {m!r} (allowed: {', '.join(BAICHUAN_EMBEDS)})")
        H, I, L, V = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                      cfg["vocab_size"])
        shapes = {"W_pack": (H, 3 * H), "o_proj": (H, H), "gate_proj": (H, I),
                  "up_proj": (H, I), "down_proj": (I, H)}  # (in, out)
        sub = {"W_pack": "self_attn", "o_proj": "self_attn", "gate_proj": "mlp",
               "up_proj": "mlp", "down_proj": "mlp"}
        tensors = {}
        for i in range(L):
            for t in targets:
                fin, fout = shapes[t]
                base = f"base_model.model.model.layers.{i}.{sub[t]}.{t}"
                tensors[base + ".lora_A.weight"] = torch.zeros(a.r, fin)
                tensors[base + ".lora_B.weight"] = torch.zeros(fout, a.r)
        base_sd = load_safetensors_dir(a.model)
        for m in (mts or []):
            path = "lm_head" if m == "lm_head" else "model.embed_tokens"
            w = base_sd.get(path + ".weight")
            if w is None:
                fail(f"baichuan model lacks {path}.weight")
            tensors[f"base_model.model.{path}.weight"] = w.float().clone()
        randomize_adapter(tensors, a.seed)
        safetensors_torch.save_file(dict(sorted(tensors.items())),
                                    os.path.join(a.out, "adapter_model.safetensors"),
                                    metadata={"format": "pt"})
        lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                          target_modules=targets, modules_to_save=mts, bias="none",
                          task_type="CAUSAL_LM", fan_in_fan_out=False, init_lora_weights=True,
                          base_model_name_or_path=a.model, inference_mode=True)
        lcfg.save_pretrained(a.out)
        sort_adapter_config(a.out)
    print(f"wrote {'DoRA' if a.use_dora else 'LoRA'} adapter for {fam} to {a.out}")


def cmd_forward(a):
    model, fam, cfg = load_base(a.model)
    ids, labels = read_tokens(a.tokens, int(model.config.vocab_size))
    if a.adapter:
        model = load_adapter(model, fam, a.adapter, trainable=False)
    logits, loss = run_forward(model, ids, labels)
    logits = logits.detach().float()
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError("non-finite logits")
    write_json(a.out, {"loss": None if loss is None else float(loss.item()),
                       "logits": logits.tolist()})
    print(f"wrote logits {list(logits.shape)}"
          + ("" if loss is None else f" loss {float(loss.item()):.6f}") + f" to {a.out}")


def cmd_grad(a):
    model, fam, cfg = load_base(a.model)
    ids, labels = read_tokens(a.tokens, int(model.config.vocab_size), need_labels=True)
    for p in model.parameters():
        p.requires_grad_(False)
    pm = load_adapter(model, fam, a.adapter, trainable=True)
    pm.eval()  # dropout off
    params = adapter_state_from_peft(pm)
    if not params:
        fail(f"adapter {a.adapter} has no trainable tensors")
    _, loss = run_forward(pm, ids, labels, grad=True)
    loss.backward()
    grads = {}
    for k, p in params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[k] = g.detach().float().contiguous()
    if fam == "baichuan":
        grads = llama_lora_to_baichuan(grads)
    with safetensors_torch.safe_open(os.path.join(a.adapter, "adapter_model.safetensors"), "pt") as f:
        # (an embedding or head with LoRA: PEFT's save_embedding_layers also writes its frozen base weight)
        saved = {k for k in f.keys() if not k.endswith(".base_layer.weight")}
    if set(grads) != saved:
        raise RuntimeError(f"grad keys differ from the adapter file keys: "
                           f"{sorted(set(grads) ^ saved)[:6]}")
    d = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(d, exist_ok=True)
    safetensors_torch.save_file(dict(sorted(grads.items())), a.out, metadata={"format": "pt"})
    print(f"wrote {len(grads)} gradients (loss {float(loss.item()):.6f}) to {a.out}")


def cmd_check_adapter(a):
    cfg = model_config_dict(a.model)
    if family_of(cfg) == "baichuan":
        fail("check-adapter does not support baichuan (PEFT has no class for it)")
    other = read_json(a.logits, "logits file")
    if not isinstance(other, dict) or "logits" not in other:
        fail(f"{a.logits}: expected an object with a logits key")
    try:
        theirs = torch.tensor(other["logits"], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        fail(f"{a.logits}: logits is not a rectangular [B][T][V] number array: {e}")
    model, fam, _ = load_base(a.model)
    ids, labels = read_tokens(a.tokens, int(model.config.vocab_size))
    model = load_adapter(model, fam, a.adapter, trainable=False)
    logits, _ = run_forward(model, ids, None)
    ours = logits.detach().double()
    if tuple(theirs.shape) != tuple(ours.shape):
        print(f"check-adapter: FAIL shape {list(theirs.shape)} != expected {list(ours.shape)}")
        return EXIT_MISMATCH
    if not bool(torch.isfinite(theirs).all()):
        print("check-adapter: FAIL non-finite logits in " + a.logits)
        return EXIT_MISMATCH
    diff = float((ours - theirs).abs().max().item())
    if diff <= a.atol:
        print(f"check-adapter: OK max abs diff {diff:.3e} <= atol {a.atol:g}")
        return 0
    print(f"check-adapter: FAIL max abs diff {diff:.3e} > atol {a.atol:g}")
    return EXIT_MISMATCH


def cmd_merge_weights(a):
    """PEFT's own merge: the base loaded in float32 (a bf16/f16 folder's values exactly), the adapter loaded with
    PeftModel.from_pretrained, merge_and_unload(); every weight of the merged model written as float32."""
    model, fam, _ = load_base(a.model)
    if fam == "baichuan":
        fail("merge-weights does not support baichuan (PEFT has no class for it)")
    pm = load_adapter(model, fam, a.adapter, trainable=False)
    with torch.no_grad():
        merged = pm.merge_and_unload(safe_merge=True)
        sd = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in merged.state_dict().items()}
    d = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(d, exist_ok=True)
    safetensors_torch.save_file(dict(sorted(sd.items())), a.out, metadata={"format": "pt"})
    print(f"wrote {len(sd)} merged tensors to {a.out}")


def cmd_baichuan_to_llama(a):
    """Writes the Llama folder (and LoRA adapter) equivalent to a baichuan one, for cross-checks."""
    cfg = model_config_dict(a.model)
    if family_of(cfg) != "baichuan":
        fail("baichuan-to-llama needs a baichuan model folder")
    if a.adapter and not a.adapter_out:
        fail("--adapter needs --adapter-out")
    model, _, _ = load_base(a.model)
    prepare_out_dir(a.out)
    model.save_pretrained(a.out, safe_serialization=True)
    if a.adapter:
        acfg = adapter_config_dict(a.adapter)
        prepare_out_dir(a.adapter_out)
        sd = safetensors_torch.load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
        sd = baichuan_lora_to_llama(sd, model.config.hidden_size)
        safetensors_torch.save_file(dict(sorted(sd.items())),
                                    os.path.join(a.adapter_out, "adapter_model.safetensors"),
                                    metadata={"format": "pt"})
        acfg["target_modules"] = sorted(set(expand_baichuan_targets(acfg.get("target_modules"))))
        acfg["base_model_name_or_path"] = a.out
        write_json(os.path.join(a.adapter_out, "adapter_config.json"), acfg, indent=2)
    print(f"wrote llama equivalent to {a.out}" + (f" and {a.adapter_out}" if a.adapter else ""))


# --------------------------------------------------------------------------- CLI

class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser():
    p = Parser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    s = sub.add_parser("make-tiny", help="write a tiny random model folder")
    s.add_argument("--family", required=True, choices=["llama", "gpt_neox", "baichuan"])
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tied", action="store_true", help="tie lm_head to the input embeddings")
    s.add_argument("--rope-scaling-linear", type=float, metavar="F",
                   help="rope_scaling {type: linear, factor: F} (llama, gpt_neox)")
    s.add_argument("--sequential", action="store_true",
                   help="gpt_neox: use_parallel_residual false")
    s.set_defaults(fn=cmd_make_tiny)

    s = sub.add_parser("make-adapter", help="write a PEFT LoRA adapter with non-zero lora_B")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--targets", required=True, help="comma list, e.g. q_proj,v_proj")
    s.add_argument("--r", type=int, default=4)
    s.add_argument("--alpha", type=float, default=8)
    s.add_argument("--dropout", type=float, default=0.0,
                   help="lora_dropout written to the config (the tools always run with dropout off)")
    s.add_argument("--modules-to-save", help="comma list, e.g. lm_head,embed_tokens")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--use-dora", action="store_true",
                   help="LoraConfig(use_dora=True): DoRA magnitude vectors, perturbed like the other tensors")
    s.add_argument("--use-rslora", action="store_true", help="LoraConfig(use_rslora=True): scale alpha/sqrt(r)")
    s.set_defaults(fn=cmd_make_adapter)

    s = sub.add_parser("forward", help="logits and HF loss as JSON")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_forward)

    s = sub.add_parser("grad", help="loss gradients of the adapter tensors as safetensors")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_grad)

    s = sub.add_parser("check-adapter", help="PeftModel.from_pretrained logits vs a JSON")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--logits", required=True)
    s.add_argument("--atol", type=float, default=1e-4)
    s.set_defaults(fn=cmd_check_adapter)

    s = sub.add_parser("merge-weights", help="PEFT merge_and_unload() weights as float32 safetensors")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter", required=True)
    s.add_argument("--out", required=True, help="a .safetensors file")
    s.set_defaults(fn=cmd_merge_weights)

    s = sub.add_parser("baichuan-to-llama", help="equivalent llama folder (+ adapter) of a baichuan one")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--adapter")
    s.add_argument("--adapter-out")
    s.set_defaults(fn=cmd_baichuan_to_llama)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _import_stack()
        rc = args.fn(args)
        return 0 if rc is None else rc
    except UserError as e:
        print(f"{PROG} {args.cmd}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        print(f"{PROG} {args.cmd}: internal error (see traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
