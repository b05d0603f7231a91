// The metrics agree with the established implementations (tests/python/metrics_reference.py): sacrebleu's
// corpus BLEU (tokenize 'zh' / '13a'), rouge-score's ROUGE-1/2/L F (characters for Chinese) and scikit-learn's
// accuracy and micro/macro F1, on seeded random corpora that exercise the tokenizers' edge cases (punctuation,
// numbers, full-width forms, characters outside the BMP, empty predictions, repeated n-grams).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { classificationScores, corpusBleu, rougeL, rougeN, rougeTokens, type Lang } from '../../src-main/core/eval/metrics';
import { ROOT } from '../helpers/app';

const PY = process.env.LLMT_PY || path.join(ROOT, '.venv-test', 'bin', 'python');
const REF = path.join(ROOT, 'tests', 'python', 'metrics_reference.py');

function rng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20240607);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const int = (a: number, b: number) => a + Math.floor(rand() * (b - a + 1));

const ZH = [...'患者有高血压病史无过敏药物治疗手术检查年龄性别', '，', '。', '“', '”', '—', '…', '（', '）', '、', '％', 'Ａ', '𠀀', ' ', '3', '.', '5', 'mg', '-', '%', 'HbA1c', '>', '&'];
const EN = ['the', 'The', 'patient', 'has', 'no', 'history', 'of', 'drug', 'allergy', ',', '.', '3.5', '1-2', 'x-y', '&amp;', '"', "it's", '(', ')', 'mg/dL', '<skipped>', '!'];

function zhText(): string {
  const n = int(0, 14);
  let s = '';
  for (let i = 0; i < n; i++) s += pick(ZH);
  return s;
}
function enText(): string {
  const n = int(0, 12);
  const w: string[] = [];
  for (let i = 0; i < n; i++) w.push(pick(EN));
  return w.join(rand() < 0.8 ? ' ' : '');
}
/** A prediction near the reference: some tokens dropped, replaced or repeated; sometimes empty or unrelated. */
function mutate(ref: string, lang: Lang): string {
  const r = rand();
  if (r < 0.08) return '';
  if (r < 0.15) return lang === 'zh' ? zhText() : enText();
  const parts = lang === 'zh' ? Array.from(ref) : ref.split(' ');
  const out: string[] = [];
  for (const p of parts) {
    const x = rand();
    if (x < 0.1) continue;
    if (x < 0.2) out.push(lang === 'zh' ? pick(ZH) : pick(EN));
    else if (x < 0.25) out.push(p, p);
    else out.push(p);
  }
  return out.join(lang === 'zh' ? '' : ' ');
}

interface Req {
  bleu: { lang: Lang; hyps: string[]; refs: string[] }[];
  rouge: { lang: Lang; target: string; prediction: string }[];
  f1: { y_true: string[]; y_pred: string[]; labels: string[] }[];
}

const req: Req = { bleu: [], rouge: [], f1: [] };
for (const lang of ['zh', 'en'] as const) {
  for (let c = 0; c < 40; c++) {
    const refs: string[] = [];
    const hyps: string[] = [];
    const n = int(1, 8);
    for (let i = 0; i < n; i++) {
      let ref = lang === 'zh' ? zhText() : enText();
      if (!ref.trim()) ref = lang === 'zh' ? '高血压' : 'no history';
      refs.push(ref);
      hyps.push(mutate(ref, lang));
    }
    req.bleu.push({ lang, hyps, refs });
  }
  for (let c = 0; c < 150; c++) {
    const target = lang === 'zh' ? zhText() : enText();
    req.rouge.push({ lang, target, prediction: mutate(target, lang) });
  }
}
const NONE = '\u0000unmatched';
for (let c = 0; c < 40; c++) {
  const labels = ['A', 'B', 'C', 'D', 'E'].slice(0, int(2, 5));
  const n = int(1, 25);
  const yt: string[] = [];
  const yp: (string | null)[] = [];
  for (let i = 0; i < n; i++) {
    const g = pick(labels);
    yt.push(g);
    const x = rand();
    yp.push(x < 0.5 ? g : x < 0.65 ? null : x < 0.75 ? 'Z' : pick(labels));
  }
  const union = [...new Set([...yt, ...yp.filter((p): p is string => p !== null)])].sort();
  req.f1.push({ y_true: yt, y_pred: yp.map((p) => p ?? NONE), labels: union });
}

let ref: { bleu: number[]; rouge: number[][]; f1: number[][]; versions: Record<string, string> };

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  const r = spawnSync(PY, [REF], { input: JSON.stringify(req), encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`metrics_reference.py failed (${r.status}): ${r.stderr}\n(run \`bash tests/python/setup.sh\`: it installs sacrebleu, rouge-score and scikit-learn)`);
  ref = JSON.parse(r.stdout);
});

describe('metrics against sacrebleu, rouge-score and scikit-learn', () => {
  it('corpus BLEU-4 equals sacrebleu (tokenize zh and 13a) on 80 random corpora', () => {
    expect(ref.versions.sacrebleu).toBe('2.4.3');
    let nonzero = 0;
    req.bleu.forEach((c, i) => {
      const ours = corpusBleu(c.hyps.map((h, k) => ({ hyp: h, ref: c.refs[k]!, lang: c.lang })));
      expect(ours, `${c.lang} corpus ${i}: ${JSON.stringify(c)}`).toBeCloseTo(ref.bleu[i]!, 10);
      if (ours > 0) nonzero++;
    });
    expect(nonzero).toBeGreaterThan(40); // the cases are not all trivial zeros
  });

  it('ROUGE-1/2/L F equal rouge-score (characters for Chinese, its tokenizer for English) on 300 pairs', () => {
    req.rouge.forEach((c, i) => {
      const t = rougeTokens(c.target, c.lang);
      const p = rougeTokens(c.prediction, c.lang);
      const ours = [rougeN(t, p, 1).fmeasure, rougeN(t, p, 2).fmeasure, rougeL(t, p).fmeasure];
      ours.forEach((x, k) => expect(x, `${c.lang} pair ${i} metric ${k}: ${JSON.stringify(c)}`).toBeCloseTo(ref.rouge[i]![k]!, 12));
    });
  });

  it('accuracy, micro-F1 and macro-F1 equal scikit-learn (labels = union, unmatched = no label) on 40 cases', () => {
    req.f1.forEach((c, i) => {
      const m = classificationScores(c.y_true.map((g, k) => ({ gold: g, pred: c.y_pred[k] === NONE ? null : c.y_pred[k]!, goldOutside: false })));
      const [acc, micro, macro] = ref.f1[i]!;
      expect(m.accuracy, `case ${i}`).toBeCloseTo(acc!, 12);
      expect(m.microF1, `case ${i}`).toBeCloseTo(micro!, 12);
      expect(m.macroF1, `case ${i}`).toBeCloseTo(macro!, 12);
    });
  });
});
