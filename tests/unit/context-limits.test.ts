// The model's context in predict/eval and in a run's pre-flight: the reason a record is bad when its prompt leaves
// no room for an answer, the summary line of answers that stopped at the context, the training warning when the
// lengths (or the longest prepared sample) pass the context, and scoring that leaves skipped records out.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { describe, expect, it } from 'vitest';

import { evaluateFiles } from '../../src-main/core/eval/metrics';
import { contextHint, contextReason, contextStopsLine } from '../../src-main/core/eval/predict';
import { contextWarning } from '../../src-main/core/runs/service';

describe('predict: prompts against the context', () => {
  it('a prompt that fills or passes the context is a bad record, with the numbers', () => {
    expect(contextReason(511, 512, 512)).toBeNull();
    expect(contextReason(5000, 0)).toBeNull(); // no hard limit (ALiBi, no length named)
    expect(contextReason(512, 512, 512)).toBe(
      "the prompt is 512 tokens (after the template and the max_source_length 512 cut), which fills the model's context of 512 tokens and leaves no room for an answer",
    );
    expect(contextReason(700, 512)).toBe("the prompt is 700 tokens (after the template), which is longer than the model's context of 512 tokens and leaves no room for an answer");
    expect(contextHint(512)).toMatch(/holds 512 tokens, prompt and answer together: set max_source_length \(--max_source_length\) .* shorten these records, or skip them \(--on-error skip\)/);
  });

  it('the summary counts the answers that stopped at the context', () => {
    expect(contextStopsLine(0, 512)).toBeNull();
    expect(contextStopsLine(3, null)).toBeNull();
    expect(contextStopsLine(1, 512)).toBe("1 answer stopped at the model's context (512 tokens, prompt and answer together) before max_new_tokens");
    expect(contextStopsLine(4, 2048)).toMatch(/^4 answers stopped at the model's context \(2048 tokens/);
  });
});

describe('training: lengths past the context', () => {
  it('warns when max_source_length + max_target_length or the longest sample passes it; never without a hard limit', () => {
    expect(contextWarning(512, 256, 256)).toBeNull();
    expect(contextWarning(null, 4000, 4000)).toBeNull();
    expect(contextWarning(0, 4000, 4000, 9000)).toBeNull();
    expect(contextWarning(512, 400, 200)).toMatch(/^max_source_length 400 \+ max_target_length 200 = 600 tokens exceeds the model's context of 512 tokens\. The tokens past it are trained anyway \(as HF does\)/);
    expect(contextWarning(512, 400, 200, 90)).toMatch(/^max_source_length 400 \+ max_target_length 200 = 600 tokens exceeds the model's context of 512 tokens \(the longest prepared sample, 90 tokens, fits\)/);
    expect(contextWarning(512, 400, 200, 600)).toMatch(/^the longest prepared sample is 600 tokens, longer than the model's context of 512 tokens \(max_source_length 400 \+ max_target_length 200 = 600 tokens\)/);
    // a sample can pass the context only through the lengths; a longer context is sometimes the point
    expect(contextWarning(512, 100, 100, 200)).toBeNull();
    expect(contextWarning(512, 400, 200)).toMatch(/unless you mean to extend the context\.$/);
  });
});

describe('scoring without the skipped records', () => {
  it('leaves the gold records that were not predicted out, so the rest pair by position', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-ctx-unit-'));
    try {
      const gold = path.join(dir, 'gold.jsonl');
      const pred = path.join(dir, 'pred.jsonl');
      fs.writeFileSync(gold, ['a', 'b', 'c'].map((t) => JSON.stringify({ input: `q ${t}`, target: t })).join('\n'));
      fs.writeFileSync(pred, ['a', 'c'].map((t) => JSON.stringify({ input: `q ${t}`, target: t })).join('\n'));
      await expect(evaluateFiles(pred, gold)).rejects.toThrow(/has 2 records and .* 3/);
      const r = await evaluateFiles(pred, gold, { leaveOut: [{ line: 2 }] });
      expect(r.overall.generation?.exactMatch).toBe(1);
      expect(r.overall.generation?.count).toBe(2);
      // a skipped record that is not even valid JSON (predict --on-error skip named it) is left out unread
      const broken = path.join(dir, 'broken.jsonl');
      fs.writeFileSync(broken, [JSON.stringify({ input: 'q a', target: 'a' }), 'not json', JSON.stringify({ input: 'q c', target: 'c' })].join('\n'));
      await expect(evaluateFiles(pred, broken)).rejects.toThrow(/1 bad record\(s\) in .*broken\.jsonl:\n.*:2: /);
      const b = await evaluateFiles(pred, broken, { leaveOut: [{ line: 2 }] });
      expect(b.overall.generation?.count).toBe(2);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
