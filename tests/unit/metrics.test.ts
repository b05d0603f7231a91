// Evaluation metrics (src-main/core/eval/metrics.ts) against hand-computed cases: the numbers docs/metrics.md
// promises, including ties, empty predictions, unknown labels and unmatched predictions.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  bleuTokens,
  classificationScores,
  computeMetrics,
  corpusBleu,
  detectLanguage,
  evaluateFiles,
  exactMatch,
  formatMetricsTable,
  pickChoice,
  rougeL,
  rougeN,
  rougeTokens,
  tokenize13a,
  tokenizeZh,
} from '../../src-main/core/eval/metrics';

const cls = (pairs: [string, string | null][]) => classificationScores(pairs.map(([gold, pred]) => ({ gold, pred, goldOutside: false })));

describe('pickChoice: the answer choice a prediction names', () => {
  const choices = ['疾病', '药物', '怀孕', '怀孕相关', '实验室检查'];
  it('an exact match wins, after trimming', () => {
    expect(pickChoice('  药物\n', choices)).toBe('药物');
    expect(pickChoice('怀孕相关', choices)).toBe('怀孕相关');
  });
  it('otherwise the earliest occurrence; at the same start, the longest', () => {
    expect(pickChoice('答：药物，不是疾病', choices)).toBe('药物');
    expect(pickChoice('属于怀孕相关类别', choices)).toBe('怀孕相关');
    expect(pickChoice('实验室检查和疾病', choices)).toBe('实验室检查');
  });
  it('null when no choice occurs, also for an empty prediction; empty choices are ignored', () => {
    expect(pickChoice('不知道', choices)).toBeNull();
    expect(pickChoice('', choices)).toBeNull();
    expect(pickChoice('   ', ['', ' '])).toBeNull();
  });
  it('equal choices listed twice: the first', () => {
    expect(pickChoice('是', ['是', '是'])).toBe('是');
  });
});

describe('classification scores (scikit-learn f1_score semantics over the union of labels)', () => {
  it('accuracy, micro-F1 and macro-F1 by hand', () => {
    // labels {A, B, C}: A tp1 fp0 fn1 → 2/3; B tp1 fp1 fn0 → 2/3; C tp0 fp0 fn1 → 0
    const m = cls([
      ['A', 'A'],
      ['A', 'B'],
      ['B', 'B'],
      ['C', null],
    ]);
    expect(m.count).toBe(4);
    expect(m.correct).toBe(2);
    expect(m.accuracy).toBe(0.5);
    expect(m.unmatched).toBe(1);
    expect(m.labels).toBe(3);
    expect(m.macroF1).toBeCloseTo(4 / 9, 12);
    // micro: TP 2, FP 1 (the matched wrong one), FN 2 (wrong + unmatched) → 4 / 7
    expect(m.microF1).toBeCloseTo(4 / 7, 12);
  });
  it('a predicted label that no gold record has joins the labels with F1 0', () => {
    const m = cls([
      ['A', 'A'],
      ['A', 'D'],
    ]);
    expect(m.labels).toBe(2);
    expect(m.macroF1).toBeCloseTo(1 / 3, 12); // A: 2/(2+0+1); D: 0
    expect(m.microF1).toBeCloseTo(0.5, 12); // TP 1, FP 1, FN 1
  });
  it('without an unmatched prediction micro-F1 equals accuracy', () => {
    const m = cls([
      ['A', 'A'],
      ['B', 'A'],
      ['B', 'B'],
    ]);
    expect(m.microF1).toBeCloseTo(m.accuracy, 12);
  });
  it('every prediction unmatched: all zero; no records: all zero', () => {
    const m = cls([
      ['A', null],
      ['B', null],
    ]);
    expect([m.accuracy, m.microF1, m.macroF1, m.unmatched]).toEqual([0, 0, 0, 2]);
    const e = classificationScores([]);
    expect([e.count, e.accuracy, e.microF1, e.macroF1]).toEqual([0, 0, 0, 0]);
  });
  it('all correct: 1', () => {
    const m = cls([
      ['A', 'A'],
      ['B', 'B'],
    ]);
    expect([m.accuracy, m.microF1, m.macroF1]).toEqual([1, 1, 1]);
  });
});

describe('BLEU-4 (sacrebleu corpus_bleu)', () => {
  it('tokenizes Chinese by character (zh) and English by mteval 13a', () => {
    expect(tokenizeZh('患者有高血压（轻度）')).toBe('患 者 有 高 血 压 （ 轻 度 ）');
    expect(tokenizeZh('HbA1c>7.0%')).toBe('HbA1c > 7.0 %');
    // sacrebleu's range table reads U+2001…U+2A6D (general punctuation is split off), not CJK Extension B
    expect(tokenizeZh('“好”—…𠀀x')).toBe('“ 好 ” — … 𠀀x');
    expect(tokenize13a('Hello, world. It costs 3.5 and 1-2 x-y &amp; z')).toBe('Hello , world . It costs 3.5 and 1 - 2 x-y & z');
    expect(bleuTokens('患者 有', 'zh')).toEqual(['患', '者', '有']);
  });
  it('all precisions 1 with a brevity penalty', () => {
    // 6 vs 8 characters: BP = exp(1 - 8/6)
    expect(corpusBleu([{ hyp: '患者有高血压', ref: '患者有高血压病史', lang: 'zh' }])).toBeCloseTo(Math.exp(1 - 8 / 6), 12);
  });
  it("exp smoothing for orders without a match (mteval's: 1 / (2^k · total))", () => {
    // 1-grams 3/4, 2-grams 1/3, 3-grams 0/2 → 1/(2·2), 4-grams 0/1 → 1/(4·1)
    const want = Math.exp((Math.log(3 / 4) + Math.log(1 / 3) + Math.log(1 / 4) + Math.log(1 / 4)) / 4);
    expect(corpusBleu([{ hyp: 'a b c d', ref: 'a b x d', lang: 'en' }])).toBeCloseTo(want, 12);
  });
  it('is 0 for empty predictions, and when the corpus has no 4-gram at all', () => {
    expect(corpusBleu([{ hyp: '', ref: '高血压', lang: 'zh' }])).toBe(0);
    expect(corpusBleu([{ hyp: 'a b c', ref: 'a b c', lang: 'en' }])).toBe(0);
    expect(corpusBleu([])).toBe(0);
  });
  it('sums the statistics over the corpus before the geometric mean', () => {
    const a = { hyp: '患者有高血压', ref: '患者有高血压', lang: 'zh' as const };
    const b = { hyp: '无', ref: '无过敏史', lang: 'zh' as const };
    // 1-grams 7/7, 2-grams 5/5, 3-grams 4/4, 4-grams 3/3; lengths 7 vs 10
    expect(corpusBleu([a, b])).toBeCloseTo(Math.exp(1 - 10 / 7), 12);
  });
});

describe('ROUGE (rouge-score F-measure)', () => {
  it('Chinese by character, English by rouge-score words', () => {
    expect(rougeTokens('高 血压', 'zh')).toEqual(['高', '血', '压']);
    expect(rougeTokens("The cat's hat, 2x!", 'en')).toEqual(['the', 'cat', 's', 'hat', '2x']);
    expect(rougeTokens('只有中文', 'en')).toEqual([]);
  });
  it('ROUGE-1/2/L by hand', () => {
    const t = rougeTokens('高血压', 'zh');
    const p = rougeTokens('血压高', 'zh');
    expect(rougeN(t, p, 1).fmeasure).toBe(1);
    expect(rougeN(t, p, 2).fmeasure).toBeCloseTo(0.5, 12);
    expect(rougeL(t, p).fmeasure).toBeCloseTo(2 / 3, 12);
    const e = rougeN(rougeTokens('The cat sat', 'en'), rougeTokens('the cat', 'en'), 1);
    expect([e.precision, e.recall, e.fmeasure].map((x) => +x.toFixed(12))).toEqual([1, +(2 / 3).toFixed(12), 0.8]);
  });
  it('clips repeated n-grams to the target count', () => {
    expect(rougeN(['a', 'a', 'b'], ['a', 'a', 'a'], 1).fmeasure).toBeCloseTo(2 / 3, 12);
  });
  it('is 0 for an empty prediction (and an empty target)', () => {
    expect(rougeN(['a'], [], 1).fmeasure).toBe(0);
    expect(rougeN([], [], 2).fmeasure).toBe(0);
    expect(rougeL(['a'], []).fmeasure).toBe(0);
  });
});

describe('computeMetrics: per type and overall', () => {
  const items = [
    { type: 'cls', gold: '药物', prediction: '药物', choices: ['药物', '疾病'] },
    { type: 'cls', gold: '疾病', prediction: '我不知道', choices: ['药物', '疾病'] },
    { type: 'cls2', gold: '是', prediction: '是', choices: ['是', '否'] },
    { type: 'gen', gold: '高血压', prediction: ' 高血压 ', choices: null },
    { type: 'gen', gold: 'no history', prediction: '', choices: [] },
    { gold: '无', prediction: '无', choices: null },
  ];
  const r = computeMetrics(items);
  it('groups by type (sorted), records without a type as "(none)"', () => {
    expect(r.byType.map((g) => [g.type, g.count])).toEqual([
      ['(none)', 1],
      ['cls', 2],
      ['cls2', 1],
      ['gen', 2],
    ]);
    expect(r.overall.count).toBe(6);
  });
  it('classification per type and overall (labels keyed by type overall)', () => {
    const c = r.byType.find((g) => g.type === 'cls')!.classification!;
    expect([c.accuracy, c.unmatched, c.labels]).toEqual([0.5, 1, 2]);
    expect(c.macroF1).toBeCloseTo(0.5, 12); // (药物 2·1/(2·1+0+0) = 1, 疾病 0) / 2
    const o = r.overall.classification!;
    expect([o.count, o.correct, o.labels]).toEqual([3, 2, 3]);
    expect(o.macroF1).toBeCloseTo(2 / 3, 12);
    expect(o.microF1).toBeCloseTo(4 / 5, 12); // TP 2, FP 0, FN 1
  });
  it('generation: exact match after trimming, empty predictions counted, language per gold answer', () => {
    const g = r.byType.find((x) => x.type === 'gen')!.generation!;
    expect(g.count).toBe(2);
    expect(g.exactMatch).toBe(0.5);
    expect(g.empty).toBe(1);
    expect(g.languages).toEqual({ zh: 1, en: 1 });
    expect(g.rouge1).toBeCloseTo(0.5, 12);
    expect(r.byType.find((x) => x.type === 'gen')!.classification).toBeNull();
    expect(r.overall.generation!.count).toBe(3);
    expect(exactMatch('A', 'a')).toBe(false);
    expect(detectLanguage('HbA1c>7.0%')).toBe('en');
    expect(detectLanguage('HbA1c 大于 7')).toBe('zh');
  });
  it('formats a table with a row per type and the overall row', () => {
    const t = formatMetricsTable(r);
    expect(t).toMatch(/^classification \(%\)/);
    expect(t).toMatch(/\ncls\s+2\s+50\.00/);
    expect(t).toMatch(/\n\(all\)\s+3\s+66\.67/);
    expect(t).toMatch(/generation \(%\)[\s\S]*\ngen\s+2\s/);
  });
});

describe('evaluateFiles: predictions paired with the gold file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-metrics-'));
  const write = (name: string, recs: unknown[]) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, recs.map((r) => JSON.stringify(r)).join('\n') + '\n');
    return f;
  };
  const gold = write('gold.jsonl', [
    { input: 'q1', target: '药物', type: 'cls', answer_choices: ['药物', '疾病'], sample_id: 's1' },
    { input: 'q2', target: '高血压', type: 'gen', answer_choices: null, sample_id: 's2' },
  ]);
  it('pairs by sample_id in any order', async () => {
    const pred = write('pred.jsonl', [
      { input: 'q2', target: '高血压', type: 'gen', answer_choices: null, sample_id: 's2' },
      { input: 'q1', target: '', type: 'cls', answer_choices: ['药物', '疾病'], sample_id: 's1' },
    ]);
    const r = await evaluateFiles(pred, gold);
    expect(r.overall.classification!.unmatched).toBe(1);
    expect(r.overall.generation!.exactMatch).toBe(1);
  });
  it('names the missing, duplicate or unknown predictions and the bad lines', async () => {
    const missing = write('missing.jsonl', [{ target: 'x', sample_id: 's1' }]);
    await expect(evaluateFiles(missing, gold)).rejects.toThrow(/1 gold record\(s\) have no prediction: s2 \(.*gold\.jsonl:2\)/);
    const dup = write('dup.jsonl', [
      { target: 'x', sample_id: 's1' },
      { target: 'y', sample_id: 's1' },
    ]);
    await expect(evaluateFiles(dup, gold)).rejects.toThrow(/dup\.jsonl:2: a second prediction for sample_id s1/);
    const bad = path.join(dir, 'bad.jsonl');
    fs.writeFileSync(bad, '{"target": "x", "sample_id": "s1"}\n{oops\n{"sample_id": "s2"}\n');
    await expect(evaluateFiles(bad, gold)).rejects.toThrow(/2 bad record\(s\)[\s\S]*bad\.jsonl:2: invalid JSON[\s\S]*bad\.jsonl:3: "target" must be a string/);
  });
  it('pairs by position without sample_ids, and then needs equal counts', async () => {
    const g = write('g2.jsonl', [{ target: 'a' }, { target: 'b' }]);
    const p = write('p2.jsonl', [{ target: 'a' }]);
    await expect(evaluateFiles(p, g)).rejects.toThrow(/counts must match/);
    const p2 = write('p3.jsonl', [{ target: 'a' }, { target: 'c' }]);
    expect((await evaluateFiles(p2, g)).overall.generation!.exactMatch).toBe(0.5);
  });
});
