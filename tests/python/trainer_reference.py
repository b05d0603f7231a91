#!/usr/bin/env python3
"""Test-only reference: multi-step LoRA (or full) training with HF transformers' Trainer + PEFT, fed exactly the samples
our engine trains on, for tests/integration/trainer-parity.test.ts.

  trainer_reference.py run --spec SPEC.json --out RESULTS.json
  trainer_reference.py order --n N --seed S --epochs E      the engine's sample order, one epoch per line

SPEC: {"threads": 1, "variants": [{"name", "model", "method" ("lora" | "full"), "init_adapter" (lora), "train", "eval"?, "out",
  "micro_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "warmup_steps",
  "warmup_ratio", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon", "max_steps" | "num_epochs",
  "logging_steps", "eval_steps", "eval_batch_size", "seed", "loss_normalization",
  "save_steps"?, "save_total_limit"?, "load_best_model_at_end"?, "early_stopping_patience"?, "early_stopping_threshold"?}, ...]}
(with save_steps: HF's checkpoints, rotation, best checkpoint and EarlyStoppingCallback, metric eval_loss; the result
 then also has "checkpoints" (the steps of the checkpoint-N folders left), "best_model_checkpoint" and "global_step").
(train/eval: the engine's JSON tokens files, {"input_ids": [[...]], "labels": [[...]], "pad_id"?}).

What is HF's own code and what is ours:
  - the model, PEFT, TrainingArguments, the Trainer loop, AdamW (adamw_torch), the schedule, clipping, logging
    and evaluation are HF's, unchanged (transformers 4.45.2, peft 0.21.2, accelerate 0.34.2);
  - the sampler is ours: it yields, per epoch, the order of native/engine/train.cpp's epoch_order (a port, below),
    instead of torch's RandomSampler, so both sides see the same micro-batches (checked: the order the collator
    saw is returned);
  - the collator pads each micro-batch to its longest row with pad_id (labels -100, attention_mask 0) — what the
    engine's make_batch does;
  - loss_normalization "token_mean" (the engine's default for llama): transformers >= 4.46 divides the summed token
    losses of a gradient-accumulation window by the window's number of predicted tokens (num_items_in_batch). The
    pinned 4.45.2 cannot, so training_step is overridden to do exactly that (counting the SHIFTED labels: what
    upstream counts since huggingface/transformers#46204; before it, position 0's label was counted too).
    "mean_of_means" runs 4.45.2's own training_step (the mean of the micro-batches' mean losses). (Micro-batches of
    equal label-token counts would make both rules agree with 4.45.2 unchanged, but would hide the very weighting
    that token_mean is about: the test's micro-batches differ in length and masks on purpose.);
  - recorded per optimizer step: the loss (the sum of training_step's returns over the window, unrounded), the
    learning rate the update used (param_groups before scheduler.step()) and the one 4.45.2 logs (after it), the
    pre-clip gradient norm Trainer gets from clip_grad_norm_, state.epoch; per log: the window mean of the loss
    (tr_loss / steps, before Trainer rounds it to 4 decimals); per evaluation: Trainer's eval_loss and, from the
    same model, the per-batch losses (so the test can tell the token mean from Trainer's batch-size-weighted mean).
"""

import argparse
import json
import math
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

M64 = (1 << 64) - 1


# --------------------------------------------------------------------------- the engine's data order

def mix64(z):
    """splitmix64's finaliser (native/engine/rng.hpp mix64)."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def engine_epoch_order(n, seed, epoch):
    """native/engine/train.cpp epoch_order: Fisher-Yates over 0..n-1 with Rng(seed ^ mix64(0xDA7A0000 + epoch)),
    whose k-th draw is mix64(seed' ^ mix64(k)) and below(m) = draw % m."""
    p = list(range(n))
    s = (seed ^ mix64((0xDA7A0000 + epoch) & M64)) & M64
    counter = 0
    for i in range(n - 1, 0, -1):
        j = mix64(s ^ mix64(counter)) % (i + 1)
        counter += 1
        p[i], p[j] = p[j], p[i]
    return p


# --------------------------------------------------------------------------- data

def read_tokens(path):
    with open(path, "r", encoding="utf-8") as f:
        obj = json.load(f)
    ids = obj["input_ids"]
    labels = obj.get("labels") or [list(r) for r in ids]
    rows = [{"input_ids": list(a), "labels": list(b)} for a, b in zip(ids, labels)]
    return rows, int(obj.get("pad_id", 0))


def shifted_count(rows):
    return sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)


class Collator:
    """Right-pads a micro-batch to its longest row (ids: pad_id, labels: -100, attention_mask: 0), and keeps
    the rows it was given, in order (DataLoader rows carry their dataset index in "_idx")."""

    def __init__(self, pad_id):
        self.pad_id = pad_id
        self.seen = []

    def __call__(self, rows):
        T = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
            mask[i, :n] = 1
        if all("_idx" in r for r in rows):
            self.seen.append([r["_idx"] for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- the run

def run_variant(v):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

    train_rows, pad_id = read_tokens(v["train"])
    for i, r in enumerate(train_rows):
        r["_idx"] = i
    eval_rows = None
    if v.get("eval"):
        eval_rows, _ = read_tokens(v["eval"])
    n = len(train_rows)
    b = int(v["micro_batch_size"])
    ga = int(v.get("gradient_accumulation_steps", 1))
    seed = int(v.get("seed", 42))
    max_steps = int(v.get("max_steps", -1))
    epochs = float(v.get("num_epochs", 3))
    if max_steps <= 0:  # what Trainer derives from num_train_epochs (4.45: len(dataloader) // GA update steps an epoch)
        max_steps = math.ceil(epochs * max(math.ceil(n / b) // ga, 1))
    norm = v.get("loss_normalization", "token_mean")

    class EngineOrder(torch.utils.data.Sampler):
        """The engine's per-epoch permutation (set_epoch is called by accelerate's DataLoaderShard)."""

        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return n

        def __iter__(self):
            return iter(engine_epoch_order(n, seed, self.epoch))

    class ListDataset(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    if ga > 1 and math.ceil(n / b) % ga:
        # 4.45.2 runs an accumulation window on across the end of an epoch; >= 4.46 and the engine end the epoch with
        # a shorter step (checked on the engine alone in the test)
        raise SystemExit(f"{v['name']}: {math.ceil(n / b)} micro-batches an epoch is not a multiple of GA {ga}")
    # the micro-batches in training order, for the token_mean windows (and to check what HF saw)
    batches = []
    epoch = 0
    while len(batches) < max_steps * ga:
        order = engine_epoch_order(n, seed, epoch)
        batches += [order[i:i + b] for i in range(0, n, b)]
        epoch += 1
    batches = batches[:max_steps * ga]
    window_counts = [shifted_count([train_rows[i] for bb in batches[k * ga:(k + 1) * ga] for i in bb])
                     for k in range(max_steps)]

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(v["model"], torch_dtype=torch.float32, local_files_only=True)
    if v.get("method", "lora") == "full":
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = PeftModel.from_pretrained(base, v["init_adapter"], is_trainable=True)
    for mod in model.modules():  # dropout off (the adapters say 0 already; the tiny model has none)
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0

    rec = {"steps": [], "logs": [], "evals": []}
    pending = {}

    class Trainer_(Trainer):
        micro = 0

        def _get_train_sampler(self):
            return EngineOrder()

        def training_step(self, model, inputs):
            k = self.micro
            self.micro += 1
            if norm != "token_mean" or ga == 1:
                out = super().training_step(model, inputs)
            else:
                # transformers >= 4.46 for models that take num_items_in_batch (llama): each micro-batch's summed
                # token losses over the window's predicted-token count, no further division by the GA steps
                model.train()
                inputs = self._prepare_inputs(inputs)
                logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
                V = logits.shape[-1]
                s = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), inputs["labels"][:, 1:].reshape(-1),
                                                      ignore_index=-100, reduction="sum")
                loss = s / window_counts[k // ga]
                loss.backward()
                out = loss.detach()
            pending["loss"] = pending.get("loss", 0.0) + float(out.item())
            return out

        def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval):
            gs, last = self.state.global_step, self._globalstep_last_logged
            if self.control.should_log and gs > last:
                rec["logs"].append({"step": gs, "loss": float(tr_loss.item()) / (gs - last)})
            return super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval)

    class Recorder(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
            pending["lr_used"] = float(optimizer.param_groups[0]["lr"])

        def on_step_end(self, args, state, control, **kw):
            rec["steps"].append({"step": state.global_step, "loss": pending.pop("loss"), "lr_used": pending.pop("lr_used"),
                                 "epoch": float(state.epoch)})

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:
                for lg in rec["logs"]:
                    if lg["step"] == state.global_step:
                        lg["loss_rounded"] = logs["loss"]
                        lg["learning_rate"] = logs.get("learning_rate")
                        gn = logs.get("grad_norm")
                        lg["grad_norm"] = None if gn is None else float(gn)

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
            # the same model, batch by batch: each batch's summed token loss and count
            per = []
            was = model.training
            model.eval()
            col = Collator(pad_id)
            with torch.no_grad():
                eb = int(v.get("eval_batch_size", b))
                for i in range(0, len(eval_rows), eb):
                    batch = col(eval_rows[i:i + eb])
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
                    V = logits.shape[-1]
                    s = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), batch["labels"][:, 1:].reshape(-1),
                                                          ignore_index=-100, reduction="sum")
                    per.append({"size": int(batch["input_ids"].shape[0]), "sum": float(s.item()),
                                "count": int((batch["labels"][:, 1:] != -100).sum().item())})
            model.train(was)
            rec["evals"].append({"step": state.global_step, "eval_loss": float(metrics["eval_loss"]), "batches": per})

    eval_steps = int(v.get("eval_steps", 0) or 0)
    save_steps = int(v.get("save_steps", 0) or 0)
    args = TrainingArguments(
        output_dir=v["out"] + "-trainer",
        overwrite_output_dir=True,
        per_device_train_batch_size=b,
        per_device_eval_batch_size=int(v.get("eval_batch_size", b)),
        gradient_accumulation_steps=ga,
        learning_rate=float(v["learning_rate"]),
        lr_scheduler_type=v.get("lr_scheduler", "linear"),
        warmup_steps=int(v.get("warmup_steps", 0)),
        warmup_ratio=float(v.get("warmup_ratio", 0.0)),
        weight_decay=float(v.get("weight_decay", 0.0)),
        max_grad_norm=float(v.get("max_grad_norm", 1.0)),
        adam_beta1=float(v.get("adam_beta1", 0.9)),
        adam_beta2=float(v.get("adam_beta2", 0.999)),
        adam_epsilon=float(v.get("adam_epsilon", 1e-8)),
        max_steps=int(v.get("max_steps", -1)),
        num_train_epochs=epochs,
        logging_strategy="steps",
        logging_steps=int(v.get("logging_steps", 1)),
        eval_strategy="steps" if (eval_rows and eval_steps > 0) else "no",
        eval_steps=eval_steps if eval_steps > 0 else None,
        save_strategy="steps" if save_steps else "no",
        **({"save_steps": save_steps, "save_total_limit": int(v.get("save_total_limit", 0)) or None,
            "load_best_model_at_end": bool(v.get("load_best_model_at_end", False)),
            "metric_for_best_model": "eval_loss", "greater_is_better": False,
            "save_safetensors": True} if save_steps else {}),
        report_to=[],
        seed=seed,
        optim="adamw_torch",
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        prediction_loss_only=True,
        disable_tqdm=True,
    )
    collator = Collator(pad_id)
    optimizer = None
    if float(v.get("loraplus_lr_ratio", 0) or 0) > 0:
        # LoRA+: PEFT's own optimizer factory (lora_B and 1-D parameters at lr × ratio), handed to the stock Trainer
        from peft.optimizers import create_loraplus_optimizer
        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=float(v["learning_rate"]),
                                              loraplus_lr_ratio=float(v["loraplus_lr_ratio"]),
                                              loraplus_weight_decay=float(v.get("weight_decay", 0.0)),
                                              betas=(float(v.get("adam_beta1", 0.9)), float(v.get("adam_beta2", 0.999))),
                                              eps=float(v.get("adam_epsilon", 1e-8)))
    trainer = Trainer_(model=model, args=args, train_dataset=ListDataset(train_rows),
                       eval_dataset=ListDataset(eval_rows) if eval_rows else None, data_collator=collator,
                       callbacks=[Recorder()] + ([EarlyStoppingCallback(int(v["early_stopping_patience"]), float(v.get("early_stopping_threshold", 0.0)))]
                                                 if int(v.get("early_stopping_patience", 0) or 0) > 0 else []),
                       optimizers=(optimizer, None))
    trainer.create_optimizer()
    if optimizer is None:
        # the two parameter groups create_optimizer makes (get_decay_parameter_names: not LayerNorm/RMSNorm, not bias)
        decayed = set(id(p) for p in trainer.optimizer.param_groups[0]["params"])
        assert all(id(p) not in decayed for p in trainer.optimizer.param_groups[1]["params"])
    else:
        decayed = set(id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])
    names = {"decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            names["decay" if id(p) in decayed else "no_decay"].append(name)
    trainer.train()
    # grad norms as Trainer logged them (logging_steps 1 gives every step's)
    model.save_pretrained(v["out"], safe_serialization=True)
    rec["order_seen"] = collator.seen[:max_steps * ga]
    rec["order_expected"] = batches
    rec["window_counts"] = window_counts
    rec["decay_groups"] = names
    rec["adapter"] = v["out"]  # adapter_model.safetensors, or model.safetensors for "full"
    rec["transformers"] = transformers.__version__
    if save_steps:
        ck = args.output_dir
        rec["checkpoints"] = sorted(int(n[len("checkpoint-"):]) for n in os.listdir(ck) if n.startswith("checkpoint-"))
        best = trainer.state.best_model_checkpoint
        rec["best_model_checkpoint"] = int(os.path.basename(best)[len("checkpoint-"):]) if best else None
        rec["global_step"] = trainer.state.global_step
    return rec


def cmd_run(a):
    with open(a.spec, "r", encoding="utf-8") as f:
        spec = json.load(f)
    torch.set_num_threads(int(spec.get("threads", 1)))
    out = {}
    for v in spec["variants"]:
        out[v["name"]] = run_variant(v)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print(f"wrote {len(out)} variants to {a.out}")
    return 0


def cmd_order(a):
    for e in range(a.epochs):
        print(json.dumps(engine_epoch_order(a.n, a.seed, e)))
    return 0


def main(argv=None):
    global torch, transformers
    p = argparse.ArgumentParser(prog="trainer_reference")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("run", help="train every variant of SPEC with HF Trainer + PEFT")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("order", help="the engine's sample order")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--epochs", type=int, default=1)
    a = p.parse_args(argv)
    if a.cmd == "order":
        return cmd_order(a)
    import warnings
    warnings.filterwarnings("ignore")
    import torch  # noqa: F811
    import transformers  # noqa: F811
    globals()["torch"] = torch
    globals()["transformers"] = transformers
    transformers.logging.set_verbosity_error()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
