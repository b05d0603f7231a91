#!/usr/bin/env python3
"""Test-only reference: the seed project's PromptCBLUE preprocessing with an HF tokenizer, as its train.py
does it (raw template):

    a_ids = tokenizer.encode(text=prompt, add_special_tokens=False)[: max_source_length - 1]
    b_ids = tokenizer.encode(text=answer, add_special_tokens=False)[: max_target_length - 2]
    input_ids = a_ids + [eos, bos] + b_ids + [eos]
    labels = [-100] * (len(a_ids) + 1) + input_ids[len(a_ids) + 1:]

Usage: seed_preprocess.py --tokenizer DIR --data FILE.jsonl --max_source_length N --max_target_length N
Prints one JSON object per record: {"input_ids": [...], "labels": [...]}. Never runs code from DIR.
"""
import argparse
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_tokenizer(d):
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(d, trust_remote_code=False)
    from transformers import LlamaTokenizer

    return LlamaTokenizer(vocab_file=os.path.join(d, "tokenizer.model"), legacy=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max_source_length", type=int, required=True)
    ap.add_argument("--max_target_length", type=int, required=True)
    ap.add_argument("--prompt_column", default="input")
    ap.add_argument("--response_column", default="target")
    a = ap.parse_args()
    tok = load_tokenizer(a.tokenizer)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None or eos is None:
        sys.exit("the tokenizer has no bos/eos token")
    with open(a.data, encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            a_ids = tok.encode(text=rec[a.prompt_column], add_special_tokens=False)
            b_ids = tok.encode(text=rec[a.response_column], add_special_tokens=False)
            a_ids = a_ids[: a.max_source_length - 1]
            b_ids = b_ids[: a.max_target_length - 2]
            input_ids = a_ids + [eos, bos] + b_ids + [eos]
            labels = [-100] * (len(a_ids) + 1) + input_ids[len(a_ids) + 1:]
            print(json.dumps({"input_ids": input_ids, "labels": labels}))


if __name__ == "__main__":
    main()
