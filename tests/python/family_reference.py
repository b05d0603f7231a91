#!/usr/bin/env python3
"""Test-only reference tool for the families added in issue 10 (tests/integration/families.test.ts).

One process per family does everything the parity test needs (importing torch costs seconds):
  bundle --model DIR --tokens T.json --targets a,b --out DIR [--r 4 --alpha 8 --seed 3]
         [--check-adapter DIR --check-logits O.json]
writes, under --out: base.json and lora.json ({loss, logits}), adapter/ (a PEFT LoRA adapter with non-zero
lora_B, the family's PEFT key names), grads.safetensors (loss gradients of every adapter tensor) and, with
--check-adapter, check.json ({max_abs_diff} between that adapter's logits here and --check-logits).

References (float32, eval mode): HF transformers 4.45.2 + PEFT for bloom and falcon (AutoModelForCausalLM,
get_peft_model / PeftModel.from_pretrained, never trust_remote_code); the faithful ports in ref_models/ of the
published remote code for chatglm (v1), chatglm2, baichuan-13b and minicpm, with PEFT's own LoRA layers injected
(peft.inject_adapter_in_model) so the adapter math and key names are PEFT's.
Exit codes: 0 ok, 2 bad input, 3 internal error.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as H  # noqa: E402  (sets the offline environment)

PROG = "family_reference"


def family_of(cfg):
    mt = cfg.get("model_type")
    if mt in ("bloom", "falcon", "RefinedWebModel", "RefinedWeb"):
        return "hf"
    if mt == "minicpm":
        return "minicpm"
    if mt == "baichuan":
        if "max_position_embeddings" in cfg or "model_max_length" not in cfg:
            H.fail("this is a Baichuan-7B config (RoPE); use hf_reference.py")
        return "baichuan13b"
    if mt == "chatglm":
        v2 = any(k in cfg for k in ("padded_vocab_size", "multi_query_attention", "kv_channels", "ffn_hidden_size", "rmsnorm"))
        return "chatglm2" if v2 else "chatglm"
    H.fail(f"unsupported model_type {mt!r}")


def load_port(kind, model_dir):
    from ref_models import baichuan13b, chatglm, chatglm2, minicpm
    mod = {"minicpm": minicpm, "baichuan13b": baichuan13b, "chatglm": chatglm, "chatglm2": chatglm2}[kind]
    return mod.load(model_dir)


def wrap(port):
    """base_model.model.<port>: PEFT's saved-key prefix, so parameter names give the saved keys directly."""
    torch = H.torch
    root = torch.nn.Module()
    root.base_model = torch.nn.Module()
    root.base_model.model = port
    return root


def port_state(root):
    return {H.saved_name(n): p for n, p in root.named_parameters() if ".lora_" in n}


def run(kind, model, ids, labels, grad=False):
    torch = H.torch
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        if kind == "hf":
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False,
                        return_dict=True)
            return out.logits, out.loss
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def write_logits(path, logits, loss):
    torch = H.torch
    logits = logits.detach().float()
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError("non-finite logits")
    H.write_json(path, {"loss": None if loss is None else float(loss.item()), "logits": logits.tolist()})


def lora_config(fields, trainable):
    from peft import LoraConfig
    allowed = set(LoraConfig.__dataclass_fields__)
    f = {k: v for k, v in fields.items() if k in allowed}
    f["inference_mode"] = not trainable
    return LoraConfig(**f)


def attach_port_adapter(kind, model_dir, adapter_dir, trainable):
    """A fresh port with the adapter at adapter_dir injected; the adapter's keys must be exactly PEFT's."""
    import safetensors.torch as st
    from peft import inject_adapter_in_model
    acfg = H.adapter_config_dict(adapter_dir)
    if acfg.get("modules_to_save"):
        H.fail("modules_to_save is not supported with the ported families")
    port = load_port(kind, model_dir)
    port = inject_adapter_in_model(lora_config(acfg, trainable), port)
    root = wrap(port)
    sd = st.load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    cur = port_state(root)
    if set(sd) != set(cur):
        H.fail(f"adapter keys differ from PEFT's for this model: missing {sorted(set(cur) - set(sd))[:4]}, "
               f"unexpected {sorted(set(sd) - set(cur))[:4]}")
    with H.torch.no_grad():
        for k, v in sd.items():
            if tuple(v.shape) != tuple(cur[k].shape):
                H.fail(f"adapter tensor {k} has shape {list(v.shape)}, expected {list(cur[k].shape)}")
            cur[k].copy_(v.float())
    for n, p in root.named_parameters():
        p.requires_grad_(trainable and ".lora_" in n)
    port.eval()
    return port, root


def cmd_bundle(a):
    torch = H.torch
    from peft import LoraConfig
    cfg = H.read_json(os.path.join(a.model, "config.json"), "model config.json")
    kind = family_of(cfg)
    vocab = cfg.get("padded_vocab_size", cfg.get("vocab_size"))
    ids, labels = H.read_tokens(a.tokens, int(vocab), need_labels=True)
    H.prepare_out_dir(a.out)
    targets = H.parse_list(a.targets)
    if not targets:
        H.fail("--targets must name at least one module")

    def base():
        return load_hf(a.model) if kind == "hf" else load_port(kind, a.model)

    model = base()
    logits, loss = run(kind, model, ids, labels)
    write_logits(os.path.join(a.out, "base.json"), logits, loss)

    if a.check_adapter:
        other = H.read_json(a.check_logits, "logits file")
        theirs = torch.tensor(other["logits"], dtype=torch.float64)
        if kind == "hf":
            from peft import PeftModel
            pm = PeftModel.from_pretrained(base(), a.check_adapter, is_trainable=False)
            pm.eval()
            lg, _ = run(kind, pm, ids, None)
        else:
            port, _ = attach_port_adapter(kind, a.model, a.check_adapter, False)
            lg, _ = run(kind, port, ids, None)
        diff = float((lg.detach().double() - theirs).abs().max().item()) if tuple(lg.shape) == tuple(theirs.shape) else float("inf")
        H.write_json(os.path.join(a.out, "check.json"), {"max_abs_diff": diff})

    adir = os.path.join(a.out, "adapter")
    H.prepare_out_dir(adir)
    torch.manual_seed(a.seed)
    lcfg = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")
    if kind == "hf":
        from peft import get_peft_model
        pm = get_peft_model(model, lcfg)
        H.randomize_adapter(H.adapter_state_from_peft(pm), a.seed)
        pm.save_pretrained(adir, safe_serialization=True)
        H.sort_adapter_config(adir)
        from peft import PeftModel
        lm = PeftModel.from_pretrained(base(), adir, is_trainable=True)
        lm.eval()
        params = H.adapter_state_from_peft(lm)
    else:
        from peft import inject_adapter_in_model
        import safetensors.torch as st
        port = inject_adapter_in_model(lcfg, load_port(kind, a.model))
        root = wrap(port)
        state = port_state(root)
        if not state:
            H.fail(f"no module of this {kind} model matches {targets}")
        H.randomize_adapter(state, a.seed)
        st.save_file({k: v.detach().contiguous() for k, v in sorted(state.items())},
                     os.path.join(adir, "adapter_model.safetensors"), metadata={"format": "pt"})
        lcfg.base_model_name_or_path = a.model
        lcfg.inference_mode = True
        lcfg.save_pretrained(adir)
        H.sort_adapter_config(adir)
        lm, root = attach_port_adapter(kind, a.model, adir, True)
        params = port_state(root)
    logits, loss = run(kind, lm, ids, labels)
    write_logits(os.path.join(a.out, "lora.json"), logits, loss)
    _, loss = run(kind, lm, ids, labels, grad=True)
    loss.backward()
    grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().contiguous()
             for k, p in params.items()}
    H.safetensors_torch.save_file(dict(sorted(grads.items())), os.path.join(a.out, "grads.safetensors"),
                                  metadata={"format": "pt"})
    print(f"{kind}: wrote base/lora logits, an adapter with {len(grads)} tensors and their gradients to {a.out}")


def load_hf(model_dir):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=H.torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        H.fail(f"cannot load model {model_dir}: {e}")
    m.eval()
    return m


def build_parser():
    p = H.Parser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=H.Parser)
    sub.required = True
    s = sub.add_parser("bundle", help="reference logits, a PEFT adapter and its gradients for one tiny model")
    s.add_argument("--model", required=True)
    s.add_argument("--tokens", required=True)
    s.add_argument("--targets", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--r", type=int, default=4)
    s.add_argument("--alpha", type=float, default=8)
    s.add_argument("--seed", type=int, default=3)
    s.add_argument("--check-adapter")
    s.add_argument("--check-logits")
    s.set_defaults(fn=cmd_bundle)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        H._import_stack()
        rc = args.fn(args)
        return 0 if rc is None else rc
    except H.UserError as e:
        print(f"{PROG} {args.cmd}: error: {e}", file=sys.stderr)
        return H.EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        print(f"{PROG} {args.cmd}: internal error (see traceback above)", file=sys.stderr)
        return H.EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
