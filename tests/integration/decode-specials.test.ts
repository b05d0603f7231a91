// What generated text leaves out, against transformers' tokenizer.decode(ids, skip_special_tokens=True): added tokens
// flagged special (and the tokens the config names) go; added tokens that are not special — Qwen2.5's <tool_call>,
// <think> — are text and stay. The chat window, predict and eval decode answers this way (generator.ts).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadTokenizer } from '../../src-main/core/data/tokenizer';
import { ENGINE, PY } from '../helpers/native';

let tmp: string;
let model: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-decode-'));
  model = path.join(tmp, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'qwen2', '--out', model]).status).toBe(0);
  const f = path.join(model, 'tokenizer.json');
  const t = JSON.parse(fs.readFileSync(f, 'utf8')) as { added_tokens: Record<string, unknown>[] };
  const add = (id: number, content: string, special: boolean) =>
    t.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  add(260, '<|im_end|>', true); // create-tiny's BPE has 260 entries: the added ids follow
  add(261, '<tool_call>', false);
  add(262, '</tool_call>', false);
  add(263, '<|reserved_0|>', true);
  fs.writeFileSync(f, JSON.stringify(t));
  const c = path.join(model, 'tokenizer_config.json');
  const cfg = JSON.parse(fs.readFileSync(c, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(c, JSON.stringify({ ...cfg, eos_token: '<|im_end|>' }));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('decoding an answer', () => {
  it('skips what HF skips: special added tokens yes, non-special added tokens no', async () => {
    const tok = await loadTokenizer(model);
    const text = 'call<tool_call>{"name": "f"}</tool_call> done<|reserved_0|>';
    const ids = [...tok.encode(text), 260, 1, 2];
    expect(ids).toContain(261);
    expect(tok.specialIds.has(260) && tok.specialIds.has(263) && tok.specialIds.has(1)).toBe(true);
    expect(tok.specialIds.has(261) || tok.specialIds.has(262)).toBe(false);
    const ours = tok.decode(ids.filter((x) => !tok.specialIds.has(x)));
    const r = spawnSync(PY, ['-c', `import sys, json\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\nprint(json.dumps(t.decode(json.loads(sys.argv[2]), skip_special_tokens=True)))`, model, JSON.stringify(ids)], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(ours).toBe(JSON.parse(r.stdout) as string);
    expect(ours).toContain('<tool_call>');
    expect(ours).not.toContain('<|reserved_0|>');
  });
});
