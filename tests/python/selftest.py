#!/usr/bin/env python3
"""End-to-end self-test of hf_reference.py (test-only). Run with the venv python:

    "$(bash tests/python/setup.sh | tail -1)" tests/python/selftest.py [--keep DIR]

Prints one line per check and a closing 'N passed, N failed' line; exit 0 iff all pass.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(HERE, "hf_reference.py")

import torch  # noqa: E402
from safetensors.torch import load_file, safe_open  # noqa: E402

torch.set_num_threads(2)

RESULTS = []


def run(*args, expect=0):
    p = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)
    if p.returncode != expect:
        raise AssertionError(f"hf_reference {' '.join(args)} -> rc {p.returncode} (want {expect})\n"
                             f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def check(name, fn):
    try:
        fn()
        RESULTS.append((name, True))
        print(f"ok   {name}", flush=True)
    except Exception as e:  # noqa: BLE001
        RESULTS.append((name, False))
        print(f"FAIL {name}: {e}", flush=True)


def load_json(p):
    with open(p) as f:
        return json.load(f)


def max_diff(a, b):
    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work in this folder and keep it")
    args = ap.parse_args()
    w = args.keep or tempfile.mkdtemp(prefix="hfref-")
    os.makedirs(w, exist_ok=True)
    j = lambda *p: os.path.join(w, *p)  # noqa: E731

    toks = j("tokens.json")
    with open(toks, "w") as f:
        json.dump({"input_ids": [[1, 5, 9, 33, 70, 127, 4, 2], [1, 100, 3, 3, 64, 12, 99, 0]],
                   "labels": [[-100, 5, 9, 33, 70, 127, 4, 2], [-100, -100, 3, 3, 64, 12, 99, -100]]}, f)
    toks_nolab = j("tokens_nolabels.json")
    with open(toks_nolab, "w") as f:
        json.dump({"input_ids": [[1, 5, 9, 33, 70]]}, f)

    models = {
        "llama": ["--family", "llama"],
        "llama_tied": ["--family", "llama", "--tied"],
        "llama_rope": ["--family", "llama", "--rope-scaling-linear", "2.0"],
        "neox": ["--family", "gpt_neox"],
        "neox_seq": ["--family", "gpt_neox", "--sequential"],
        "baichuan": ["--family", "baichuan"],
    }
    for name, extra in models.items():
        check(f"make-tiny {name}", lambda n=name, e=extra: run("make-tiny", *e, "--out", j(n), "--seed", "1"))

    def deterministic():
        run("make-tiny", "--family", "llama", "--out", j("llama_again"), "--seed", "1")
        a = open(j("llama", "model.safetensors"), "rb").read()
        b = open(j("llama_again", "model.safetensors"), "rb").read()
        assert a == b, "same seed gave different bytes"
    check("make-tiny deterministic", deterministic)

    def tied_layout():
        keys = set(load_file(j("llama_tied", "model.safetensors")))
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys, sorted(keys)[:5]
        assert load_json(j("llama_tied", "config.json"))["tie_word_embeddings"] is True
    check("tied llama omits lm_head.weight", tied_layout)

    def baichuan_layout():
        cfg = load_json(j("baichuan", "config.json"))
        assert cfg["model_type"] == "baichuan" and cfg["architectures"] == ["BaiChuanForCausalLM"]
        sd = load_file(j("baichuan", "model.safetensors"))
        assert tuple(sd["model.layers.0.self_attn.W_pack.weight"].shape) == (192, 64)
        assert not any("q_proj" in k for k in sd)
    check("baichuan folder layout", baichuan_layout)

    adapters = {
        "llama_a": ("llama", "q_proj,v_proj", []),
        "llama_all": ("llama", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                      ["--modules-to-save", "lm_head"]),
        "llama_tied_a": ("llama_tied", "q_proj,v_proj", ["--modules-to-save", "lm_head,embed_tokens"]),
        "llama_rope_a": ("llama_rope", "q_proj,k_proj", []),
        "neox_a": ("neox", "query_key_value,dense,dense_h_to_4h,dense_4h_to_h",
                   ["--modules-to-save", "embed_out"]),
        "neox_seq_a": ("neox_seq", "query_key_value", []),
        "baichuan_a": ("baichuan", "W_pack,o_proj,down_proj", ["--modules-to-save", "lm_head"]),
    }
    for name, (m, t, extra) in adapters.items():
        check(f"make-adapter {name}", lambda n=name, m=m, t=t, e=extra: run(
            "make-adapter", "--model", j(m), "--out", j(n), "--targets", t, "--r", "4",
            "--alpha", "8", "--seed", "3", *e))

    def adapter_layout():
        sd = load_file(j("llama_all", "adapter_model.safetensors"))
        b = sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
        assert tuple(b.shape) == (64, 4) and float(b.abs().sum()) > 0, "lora_B zero or wrong shape"
        assert "base_model.model.lm_head.weight" in sd, sorted(sd)[:3]
        cfg = load_json(j("llama_all", "adapter_config.json"))
        assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"
        assert cfg["target_modules"] == sorted(cfg["target_modules"])
        sd = load_file(j("baichuan_a", "adapter_model.safetensors"))
        assert tuple(sd["base_model.model.model.layers.1.self_attn.W_pack.lora_A.weight"].shape) == (4, 64)
        assert tuple(sd["base_model.model.model.layers.1.self_attn.W_pack.lora_B.weight"].shape) == (192, 4)
        assert tuple(sd["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape) == (4, 96)
        cfg = load_json(j("baichuan_a", "adapter_config.json"))
        assert cfg["target_modules"] == ["W_pack", "down_proj", "o_proj"] and cfg["task_type"] == "CAUSAL_LM"
    check("adapter key names / shapes / config", adapter_layout)

    # forward: base and adapter; check-adapter on our own output must pass with diff 0.
    for m, a in [("llama", None), ("llama_tied", None), ("neox", None), ("neox_seq", None),
                 ("baichuan", None)] + [(m, a) for a, (m, _, _) in adapters.items()]:
        tag = f"{m}+{a}" if a else m
        out = j(f"fwd_{tag}.json")
        extra = ["--adapter", j(a)] if a else []
        check(f"forward {tag}", lambda m=m, e=extra, o=out: run(
            "forward", "--model", j(m), *e, "--tokens", toks, "--out", o))
        if a and m != "baichuan":
            check(f"check-adapter {tag} (self)", lambda m=m, a=a, o=out: run(
                "check-adapter", "--model", j(m), "--adapter", j(a), "--tokens", toks, "--logits", o,
                "--atol", "0"))

    def shapes_loss():
        o = load_json(j("fwd_llama.json"))
        lg = torch.tensor(o["logits"])
        assert tuple(lg.shape) == (2, 8, 128)
        assert 0.5 < float(lg.std()) < 20, f"logits std {float(lg.std())} not meaningful"
        # loss == shifted CE mean over non-ignored labels
        lab = torch.tensor(load_json(toks)["labels"])
        ce = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, 128), lab[:, 1:].reshape(-1),
                                               ignore_index=-100)
        assert abs(float(ce) - o["loss"]) < 1e-5, (float(ce), o["loss"])
        run("forward", "--model", j("llama"), "--tokens", toks_nolab, "--out", j("nolab.json"))
        assert load_json(j("nolab.json"))["loss"] is None
    check("forward shapes, loss definition, labels optional", shapes_loss)

    def adapter_changes_output():
        for m, a in [("llama", "llama_a"), ("neox", "neox_a"), ("baichuan", "baichuan_a")]:
            d = max_diff(load_json(j(f"fwd_{m}.json"))["logits"], load_json(j(f"fwd_{m}+{a}.json"))["logits"])
            assert d > 1e-2, f"{a} barely changes logits ({d})"
    check("adapters change the logits", adapter_changes_output)

    def check_adapter_fails():
        o = load_json(j("fwd_llama+llama_a.json"))
        o["logits"][0][3][7] += 1e-3
        with open(j("bad.json"), "w") as f:
            json.dump(o, f)
        p = run("check-adapter", "--model", j("llama"), "--adapter", j("llama_a"), "--tokens", toks,
                "--logits", j("bad.json"), expect=1)
        assert "max abs diff" in p.stdout, p.stdout
        run("check-adapter", "--model", j("llama"), "--adapter", j("llama_a"), "--tokens", toks,
            "--logits", j("bad.json"), "--atol", "1e-2")
        run("check-adapter", "--model", j("llama"), "--adapter", j("llama_a"), "--tokens", toks,
            "--logits", j("fwd_llama.json"), expect=1)
    check("check-adapter detects mismatches", check_adapter_fails)

    # grad: keys equal the adapter keys; finite differences on a few entries.
    for a, (m, _, _) in adapters.items():
        check(f"grad {m}+{a}", lambda m=m, a=a: run(
            "grad", "--model", j(m), "--adapter", j(a), "--tokens", toks, "--out", j(f"grad_{a}.safetensors")))

    def grad_keys():
        for a in adapters:
            g = load_file(j(f"grad_{a}.safetensors"))
            with safe_open(j(a, "adapter_model.safetensors"), "pt") as f:
                keys = set(f.keys())
                for k in keys:
                    assert g[k].shape == f.get_tensor(k).shape and g[k].dtype == torch.float32, k
            assert set(g) == keys, a
            assert all(float(t.abs().sum()) > 0 for t in g.values()), f"{a}: a zero gradient"
    check("grad keys/shapes match adapter", grad_keys)

    def finite_diff():
        # perturb one lora_B entry of the baichuan adapter, compare loss change to the gradient
        from safetensors.torch import save_file
        for m, a, key in [("llama", "llama_all", "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"),
                          ("baichuan", "baichuan_a", "base_model.model.model.layers.0.self_attn.W_pack.lora_A.weight"),
                          ("baichuan", "baichuan_a", "base_model.model.model.layers.1.self_attn.W_pack.lora_B.weight"),
                          ("neox", "neox_a", "base_model.model.embed_out.weight")]:
            g = load_file(j(f"grad_{a}.safetensors"))[key].double()
            idx = tuple(int(i) for i in torch.nonzero(g.abs() == g.abs().max())[0])
            sd = load_file(j(a, "adapter_model.safetensors"))
            eps = 1e-3  # 1e-2 is too coarse: curvature gives ~2% error
            losses = []
            for s in (+1, -1):
                d = j(f"{a}_fd")
                shutil.copytree(j(a), d, dirs_exist_ok=True)
                sd2 = {k: v.clone() for k, v in sd.items()}
                sd2[key][idx] += s * eps
                save_file(sd2, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
                run("forward", "--model", j(m), "--adapter", d, "--tokens", toks, "--out", j("fd.json"))
                losses.append(load_json(j("fd.json"))["loss"])
            fd = (losses[0] - losses[1]) / (2 * eps)
            assert abs(fd - float(g[idx])) < 2e-3 * max(1.0, abs(fd)), (a, key, fd, float(g[idx]))
    check("grad matches finite differences", finite_diff)

    # baichuan vs the equivalent llama folder (q/k/v split, adapter through PeftModel.from_pretrained)
    def baichuan_cross():
        run("baichuan-to-llama", "--model", j("baichuan"), "--out", j("bc_llama"),
            "--adapter", j("baichuan_a"), "--adapter-out", j("bc_llama_a"))
        cfg = load_json(j("bc_llama", "config.json"))
        assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 4
        run("forward", "--model", j("bc_llama"), "--tokens", toks, "--out", j("bcl.json"))
        run("forward", "--model", j("bc_llama"), "--adapter", j("bc_llama_a"), "--tokens", toks,
            "--out", j("bcl_a.json"))
        for x, y in [("fwd_baichuan.json", "bcl.json"), ("fwd_baichuan+baichuan_a.json", "bcl_a.json")]:
            ox, oy = load_json(j(x)), load_json(j(y))
            assert max_diff(ox["logits"], oy["logits"]) == 0.0, (x, max_diff(ox["logits"], oy["logits"]))
            assert ox["loss"] == oy["loss"]
        run("check-adapter", "--model", j("bc_llama"), "--adapter", j("bc_llama_a"), "--tokens", toks,
            "--logits", j("fwd_baichuan+baichuan_a.json"), "--atol", "0")
        run("grad", "--model", j("bc_llama"), "--adapter", j("bc_llama_a"), "--tokens", toks,
            "--out", j("grad_bcl.safetensors"))
        gl = load_file(j("grad_bcl.safetensors"))
        gb = load_file(j("grad_baichuan_a.safetensors"))
        for i in range(2):
            p = f"base_model.model.model.layers.{i}.self_attn."
            A = sum(gl[p + f"{x}_proj.lora_A.weight"] for x in "qkv")
            B = torch.cat([gl[p + f"{x}_proj.lora_B.weight"] for x in "qkv"], 0)
            assert torch.allclose(A, gb[p + "W_pack.lora_A.weight"], atol=1e-6, rtol=1e-5)
            assert torch.equal(B, gb[p + "W_pack.lora_B.weight"])
        for k in gb:
            if "W_pack" not in k:
                assert torch.equal(gb[k], gl[k]), k
    check("baichuan == equivalent llama (forward, adapter, grad)", baichuan_cross)

    def bad_inputs():
        def bad(*a):
            p = run(*a, expect=2)
            assert "error" in p.stderr, p.stderr
        with open(j("t_bad1.json"), "w") as f:
            json.dump({"input_ids": [[1, 2, 3], [1, 2]]}, f)
        with open(j("t_bad2.json"), "w") as f:
            json.dump({"input_ids": [[1, 2, 500]]}, f)
        with open(j("t_bad3.json"), "w") as f:
            json.dump({"input_ids": [[1, 2, 3]], "labels": [[-100, -100, -100]]}, f)
        with open(j("t_bad4.json"), "w") as f:
            f.write("{nope")
        bad("forward", "--model", j("nope"), "--tokens", toks, "--out", j("x.json"))
        for t in ("t_bad1.json", "t_bad2.json", "t_bad3.json", "t_bad4.json", "missing.json"):
            bad("forward", "--model", j("llama"), "--tokens", j(t), "--out", j("x.json"))
        bad("grad", "--model", j("llama"), "--adapter", j("llama_a"), "--tokens", toks_nolab, "--out", j("x.st"))
        bad("make-adapter", "--model", j("llama"), "--out", j("x_a"), "--targets", "nonexistent_proj")
        bad("make-adapter", "--model", j("baichuan"), "--out", j("x_a"), "--targets", "q_proj")
        bad("make-tiny", "--family", "llama", "--out", j("x_m"), "--rope-scaling-linear", "0.5")
        bad("make-tiny", "--family", "opt", "--out", j("x_m"))
        bad("check-adapter", "--model", j("baichuan"), "--adapter", j("baichuan_a"), "--tokens", toks,
            "--logits", j("fwd_baichuan.json"))
        bad("forward", "--model", j("llama"), "--adapter", j("neox_a"), "--tokens", toks, "--out", j("x.json"))
        bad()
    check("bad input exits 2 with a message", bad_inputs)

    if not args.keep:
        shutil.rmtree(w, ignore_errors=True)
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
