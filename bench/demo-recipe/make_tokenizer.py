#!/usr/bin/env python3
"""Train a small byte-level BPE tokenizer.json on the TRAIN split only (inputs + targets).
Specials: 0 <pad>, 1 <s>, 2 </s>, 3 <unk> (same ids as create-tiny's byte-level tokenizer).
usage: make_tokenizer.py --vocab 1024 --out DIR [--train FILE]"""
import argparse, json, os
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

ap = argparse.ArgumentParser()
ap.add_argument('--vocab', type=int, default=1024)
ap.add_argument('--out', required=True)
ap.add_argument('--train', default='/work/main/resources/datasets/promptcblue-demo/train.json')
a = ap.parse_args()
texts = []
for line in open(a.train, encoding='utf-8'):
    r = json.loads(line)
    texts += [r['input'], r['target']]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
tok.decoder = decoders.ByteLevel()
tr = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=['<pad>', '<s>', '</s>', '<unk>'],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2, show_progress=False)
tok.train_from_iterator(texts, tr)
os.makedirs(a.out, exist_ok=True)
tok.save(os.path.join(a.out, 'tokenizer.json'))
print('vocab', tok.get_vocab_size())
