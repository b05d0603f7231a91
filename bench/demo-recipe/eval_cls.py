#!/usr/bin/env python3
"""Greedy-generation accuracy on the cls records of a PromptCBLUE split.
Prompt ids come from the split's .tok file (data prepare, raw template) so they match training exactly:
prompt(truncated) + [eos, bos]. Prediction = the answer_choice occurring earliest in the decoded output
(ties -> longest choice); also reports exact match (output up to eos == target).
usage: eval_cls.py --model DIR [--adapter DIR] --tok TEST.tok --data test.json [--jobs 2] [--max-new 8]"""
import argparse, json, os, struct, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from tokenizers import Tokenizer

ENGINE = '/work/main/native/build/bin/llmt-engine'

def read_tok(path):
    b = open(path, 'rb').read()
    assert b[:8] == b'LLMTTOK1'
    ver, h = struct.unpack_from('<II', b, 8)
    hdr = json.loads(b[16:16 + h])
    o = 16 + h
    o += (-o) % 8
    n, m = hdr['num_samples'], hdr['num_tokens']
    offs = np.frombuffer(b, '<u8', n + 1, o); o += 8 * (n + 1)
    ids = np.frombuffer(b, '<i4', m, o); o += 4 * m
    mask = np.frombuffer(b, 'u1', m, o)
    return hdr, [(ids[offs[i]:offs[i + 1]].tolist(), mask[offs[i]:offs[i + 1]].tolist()) for i in range(n)]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', required=True)
    ap.add_argument('--adapter')
    ap.add_argument('--tok', required=True)
    ap.add_argument('--data', required=True)
    ap.add_argument('--tokenizer', help='folder with tokenizer.json (default: --model)')
    ap.add_argument('--jobs', type=int, default=2)
    ap.add_argument('--max-new', type=int, default=24)
    ap.add_argument('--limit', type=int, default=0)
    ap.add_argument('--show', type=int, default=5)
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.data, encoding='utf-8')]
    hdr, samples = read_tok(a.tok)
    assert len(samples) == len(recs), 'tok file and data disagree (skipped records?)'
    tk = Tokenizer.from_file(os.path.join(a.tokenizer or a.model, 'tokenizer.json'))
    eos = hdr.get('eos_id', 2)
    items = [(r, s) for r, s in zip(recs, samples) if r['type'] == 'cls']
    if a.limit: items = items[:a.limit]

    def run(item):
        r, (ids, mask) = item
        k = mask.index(1)  # bos: the first labelled token
        prompt = ids[:k + 1]
        cmd = [ENGINE, 'generate', '--model', a.model, '--prompt-ids', ','.join(map(str, prompt)),
               '--greedy', '--max-new-tokens', str(a.max_new), '--threads', '1']
        if a.adapter: cmd += ['--adapter', a.adapter]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)['ids']
        if out[:len(prompt)] == prompt: out = out[len(prompt):]  # in case the engine echoes the prompt
        if eos in out: out = out[:out.index(eos)]
        text = tk.decode(out, skip_special_tokens=True)
        hits = [(text.find(c), -len(c), c) for c in r['answer_choices'] if c in text]
        pred = min(hits)[2] if hits else None
        return r['target'], pred, text

    t0 = time.time()
    with ThreadPoolExecutor(a.jobs) as ex:
        res = list(ex.map(run, items))
    dt = time.time() - t0
    acc = sum(p == t for t, p, _ in res) / len(res)
    exact = sum(x.strip() == t for t, _, x in res) / len(res)
    nolabel = sum(p is None for _, p, _ in res) / len(res)
    for t, p, x in res[:a.show]:
        print(f'  target={t} pred={p} out={x!r}', file=sys.stderr)
    print(json.dumps({'n': len(res), 'accuracy': round(acc, 4), 'exact_match': round(exact, 4),
                      'no_label': round(nolabel, 4), 'eval_seconds': round(dt, 1)}))

main()
