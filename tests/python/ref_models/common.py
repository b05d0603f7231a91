"""Shared helpers of the ports: a config object from config.json, loading safetensors weights, the causal-LM loss."""
import json
import os

import torch
from torch.nn import CrossEntropyLoss


class Config:
    """config.json as attributes (remote-code PretrainedConfig subclasses only store their fields)."""

    def __init__(self, d, defaults):
        merged = dict(defaults)
        merged.update({k: v for k, v in d.items()})
        for k, v in merged.items():
            setattr(self, k, v)
        self.raw = d

    @classmethod
    def from_dir(cls, model_dir, defaults):
        with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
            return cls(json.load(f), defaults)


def causal_lm_loss(logits, labels):
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    return CrossEntropyLoss(ignore_index=-100)(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))


def load_weights(model, model_dir, tied=()):
    """Loads model.safetensors strictly (tied keys may be absent); returns the model in eval mode."""
    import safetensors.torch as st
    sd = st.load_file(os.path.join(model_dir, "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m not in tied and not m.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the port: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model
