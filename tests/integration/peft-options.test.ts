// PEFT's LoRA options, both ways: adapters PEFT writes with rank/alpha patterns (regex keys), regex and
// "all-linear" targets, exclude_modules, layers_to_transform, modules_to_save overlapping a target, trained biases
// and tied-embedding copies give PEFT's logits in the engine — or the engine refuses the option by name; adapters
// the engine trains with those options give the engine's logits when PEFT loads them; a merge of a tied model whose
// embedding or head the adapter trains is a model transformers loads to the same logits; generation stops where
// generation_config.json says.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT } from '../helpers/app';
import { ENGINE, gradDiffs, maxAbsDiff, PY, readSafetensors, refPy, writeSafetensors } from '../helpers/native';

const REF = path.join(ROOT, 'tests', 'python', 'peft_options_ref.py');
let tmp: string;
const models: Record<string, string> = {};
type Entry = { model: string; adapter: string; logits?: number[][][]; base_diff?: number; peft_error?: string };
let manifest: Record<string, Entry>;

function run(cmd: string, args: string[], ok = true) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  if (ok && r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r;
}
const py = (args: string[]) => run(PY, [REF, ...args]);
const engine = (args: string[], ok = true) => run(ENGINE, args, ok);
const tokens = () => path.join(tmp, 'tokens.json');
const readLogits = (f: string) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { logits: number[][][] }).logits;

function ours(model: string, adapter: string): number[][][] {
  const out = path.join(tmp, `fwd-${path.basename(adapter)}.json`);
  engine(['forward', '--model', model, '--adapter', adapter, '--tokens', tokens(), '--out', out]);
  return readLogits(out);
}

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-peft-options-'));
  fs.writeFileSync(tokens(), JSON.stringify({ input_ids: [[1, 5, 17, 33, 90, 200, 7, 64, 3, 150, 11, 42], [1, 300, 12, 8, 99, 250, 31, 2, 77, 5, 6, 19]] }));
  for (const f of ['llama', 'bloom', 'gpt_neox']) {
    models[f] = path.join(tmp, f);
    engine(['create-tiny', '--family', f, '--out', models[f]!, '--seed', '5']);
  }
  py(['adapters', ...Object.entries(models).flatMap(([k, v]) => ['--model', `${k}=${v}`]), '--tokens', tokens(), '--out', path.join(tmp, 'peft')]);
  manifest = JSON.parse(fs.readFileSync(path.join(tmp, 'peft', 'manifest.json'), 'utf8'));
}, 600_000);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('adapters PEFT writes', () => {
  const same = [
    'plain', 'alpha_pattern_regex', 'alpha_pattern_alternation', 'rank_pattern_regex', 'target_regex_named_group', 'all_linear',
    'exclude_modules', 'exclude_regex', 'layers_to_transform', 'layers_pattern', 'mts_overlaps_target', 'bias_all', 'bias_lora_only',
    'bias_all_neox', 'tied_head_copy', 'tied_embed_copy', 'embed_head', 'embed_head_patterns', 'embed_head_tied', 'embed_head_neox',
  ];
  it.each(same)('%s: the engine computes PEFT\'s logits', (c) => {
    const e = manifest[c]!;
    expect(e.peft_error).toBeUndefined();
    expect(e.base_diff!).toBeGreaterThan(0.1); // the adapter (and the option) moves the logits
    expect(maxAbsDiff(ours(e.model, e.adapter), e.logits!)).toBeLessThan(1e-4);
  });

  const refused: [string, RegExp][] = [
    ['lookbehind', /target_modules ".*" cannot be used: a lookbehind/],
    ['lora_bias', /UNSUPPORTED: .*lora_bias/],
    ['trainable_tokens', /UNSUPPORTED: .*trainable_token_indices/],
    ['layer_replication', /UNSUPPORTED: .*layer_replication/],
    ['target_parameters', /UNSUPPORTED: .*target_parameters/],
  ];
  it.each(refused)('%s: refused by name, by forward and by merge', (c, why) => {
    const e = manifest[c]!;
    if (e.peft_error) return; // an option this PEFT release does not have
    const r = engine(['forward', '--model', e.model, '--adapter', e.adapter, '--tokens', tokens(), '--out', path.join(tmp, `${c}.json`)], false);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(why);
    if (c === 'lookbehind') return; // the merge works tensor by tensor: it needs no target matching
    const m = engine(['merge', '--model', e.model, '--adapter', e.adapter, '--out', path.join(tmp, `${c}-merged`)], false);
    expect(m.status).not.toBe(0);
    expect(m.stderr).toMatch(why);
    expect(fs.existsSync(path.join(tmp, `${c}-merged`))).toBe(false);
  });

  it.each(['alpha_pattern_regex', 'bias_all', 'tied_head_copy', 'tied_embed_copy', 'embed_head', 'embed_head_patterns', 'embed_head_tied'])(
    '%s: the merged model, loaded by transformers, gives the adapter\'s logits',
    (c) => {
      const e = manifest[c]!;
      const out = path.join(tmp, `${c}-merged`);
      engine(['merge', '--model', e.model, '--adapter', e.adapter, '--out', out]);
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      // the table and the head differ now (PEFT's own merge would write LoRA on either into the one shared table)
      if (c.startsWith('tied') || c === 'embed_head_tied') expect(cfg.tie_word_embeddings).toBe(false);
      py(['hf-logits', '--model', out, '--tokens', tokens(), '--out', path.join(out, 'hf.json')]);
      expect(maxAbsDiff(readLogits(path.join(out, 'hf.json')), e.logits!)).toBeLessThan(1e-4);
    },
  );
});

describe('LoRA on the embedding and the LM head', () => {
  // every gradient of such an adapter, the embedding's and the head's included, as HF transformers + PEFT compute it
  it.each(['embed_head', 'embed_head_patterns', 'embed_head_neox'])('%s: gradients within 1e-3 relative of PEFT\'s', (c) => {
    const e = manifest[c]!;
    const t = path.join(tmp, `${c}-labels.json`);
    const ids = (JSON.parse(fs.readFileSync(tokens(), 'utf8')) as { input_ids: number[][] }).input_ids;
    fs.writeFileSync(t, JSON.stringify({ input_ids: ids, labels: ids.map((r) => r.map((x, j) => (j < 3 ? -100 : x))) }));
    const a = path.join(tmp, `${c}-ours.safetensors`);
    const b = path.join(tmp, `${c}-peft.safetensors`);
    engine(['grad', '--model', e.model, '--adapter', e.adapter, '--tokens', t, '--out', a]);
    refPy(['grad', '--model', e.model, '--adapter', e.adapter, '--tokens', t, '--out', b]);
    const ours = readSafetensors(a);
    const ref = readSafetensors(b);
    expect([...ours.keys()].sort()).toEqual([...ref.keys()].sort());
    expect([...ref.keys()].some((k) => k.endsWith('lora_embedding_A'))).toBe(true);
    for (const { name, diff, scale } of gradDiffs(ours, ref))
      expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  // PEFT saves the embedding and head it put LoRA on (<module>.base_layer.weight) and loads them in place of the base's:
  // a retrained table is read as PEFT reads it; one of another vocabulary is refused by name
  it('the base_layer weights PEFT saves beside them: other values replace the base\'s, another vocabulary is refused', () => {
    const e = manifest.embed_head!;
    const shapes = (f: string) => {
      const buf = fs.readFileSync(f);
      return JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString('utf8')) as Record<string, { shape: number[] }>;
    };
    const write = (dir: string, edit: (k: string, x: Float32Array, shape: number[]) => { shape: number[]; data: Float32Array }) => {
      fs.mkdirSync(dir, { recursive: true });
      fs.copyFileSync(path.join(e.adapter, 'adapter_config.json'), path.join(dir, 'adapter_config.json'));
      const f = path.join(e.adapter, 'adapter_model.safetensors');
      const sh = shapes(f);
      const out: Record<string, { shape: number[]; data: Float32Array }> = {};
      for (const [k, x] of readSafetensors(f)) out[k] = edit(k, x, sh[k]!.shape);
      writeSafetensors(path.join(dir, 'adapter_model.safetensors'), out);
    };
    const retrained = path.join(tmp, 'embed-head-retrained');
    write(retrained, (k, x, shape) => ({ shape, data: k.endsWith('lm_head.base_layer.weight') ? x.map((v) => v * 1.5) : x }));
    py(['peft-logits', '--model', e.model, '--adapter', retrained, '--tokens', tokens(), '--out', path.join(retrained, 'peft.json')]);
    const peft = readLogits(path.join(retrained, 'peft.json'));
    expect(maxAbsDiff(peft, e.logits!)).toBeGreaterThan(0.1); // PEFT did load the other head
    expect(maxAbsDiff(ours(e.model, retrained), peft)).toBeLessThan(1e-4);
    const cut = path.join(tmp, 'embed-head-cut');
    write(cut, (k, x, shape) => (k.endsWith('embed_tokens.base_layer.weight') ? { shape: [shape[0]! - 1, shape[1]!], data: x.slice(0, (shape[0]! - 1) * shape[1]!) } : { shape, data: x }));
    const r = engine(['forward', '--model', e.model, '--adapter', cut, '--tokens', tokens(), '--out', path.join(cut, 'o.json')], false);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/embed_tokens\.base_layer\.weight.*has shape \[319, …\] but this model's model\.embed_tokens has 320 rows: the adapter was trained with another vocabulary/);
  });

  it('DoRA on them and LoRA+ with the embedding are refused by name', () => {
    const m = models.llama!;
    const dir = path.join(tmp, 'embed-refusals');
    fs.mkdirSync(dir);
    const data = path.join(dir, 'rows.json');
    fs.writeFileSync(data, JSON.stringify({ input_ids: [[1, 5, 9, 33, 2], [1, 7, 8, 90, 2]] }));
    const job = (lora: object, training: object = {}) => {
      const f = path.join(dir, `job-${Math.random().toString(36).slice(2)}.json`);
      fs.writeFileSync(f, JSON.stringify({ model: m, method: 'lora', lora: { r: 4, alpha: 8, ...lora }, data: { train: data },
        training: { learning_rate: 0.01, max_steps: 1, micro_batch_size: 2, ...training }, output: { dir: path.join(dir, 'out') } }));
      return f;
    };
    const dora = engine(['train', '--job', job({ target_modules: ['q_proj', 'lm_head'], use_dora: true })], false);
    expect(dora.status).not.toBe(0);
    expect(dora.stdout).toMatch(/DoRA on the LM head \(lm_head\) is not supported/);
    const plus = engine(['train', '--job', job({ target_modules: ['q_proj', 'embed_tokens'] }, { loraplus_lr_ratio: 16 })], false);
    expect(plus.status).not.toBe(0);
    expect(plus.stdout).toMatch(/LoRA\+ .*with LoRA on the embedding.*loraplus_lr_embedding/);
  });
});

describe('adapters the engine trains, read by PEFT', () => {
  const cases: { name: string; family: string; lora: Record<string, unknown> }[] = [
    { name: 'bias-all', family: 'bloom', lora: { r: 4, alpha: 8, target_modules: ['query_key_value'], bias: 'all' } },
    { name: 'bias-lora-only', family: 'gpt_neox', lora: { r: 4, alpha: 8, target_modules: ['query_key_value', 'dense_h_to_4h'], bias: 'lora_only' } },
    {
      name: 'patterns', family: 'llama',
      lora: { r: 4, alpha: 8, target_modules: 'all-linear', rank_pattern: { 'layers\\.1\\.mlp\\..*': 2 }, alpha_pattern: { '(q|k)_proj': 32 },
        exclude_modules: ['o_proj'], modules_to_save: ['model.layers.0.mlp.up_proj'] },
    },
    { name: 'layers', family: 'llama', lora: { r: 4, alpha: 8, target_modules: ['q_proj', 'v_proj'], layers_to_transform: [0], layers_pattern: 'layers' } },
    // LoRA on the embedding and the head (lora_embedding_A starts at zero, B at N(0, 1); the head's B at zero)
    { name: 'embed-head', family: 'llama', lora: { r: 4, alpha: 8, target_modules: ['q_proj', 'embed_tokens', 'lm_head'] } },
    { name: 'embed-head-tied', family: 'bloom', lora: { r: 4, alpha: 8, dropout: 0.1, target_modules: ['word_embeddings', 'lm_head'] } },
  ];
  it.each(cases)('$name: PEFT loads the same model', ({ name, family, lora }) => {
    const dir = path.join(tmp, `train-${name}`);
    fs.mkdirSync(dir);
    const data = path.join(dir, 'rows.json');
    fs.writeFileSync(data, JSON.stringify({ input_ids: Array.from({ length: 4 }, (_, i) => Array.from({ length: 10 }, (_, j) => 1 + ((i * 37 + j * 11) % 250))) }));
    const job = {
      model: models[family], method: 'lora', lora,
      data: { train: data },
      training: { learning_rate: 0.05, max_steps: 3, micro_batch_size: 2 },
      output: { dir: path.join(dir, 'out'), logging_steps: 1, save_steps: 100 },
    };
    fs.writeFileSync(path.join(dir, 'job.json'), JSON.stringify(job));
    engine(['train', '--job', path.join(dir, 'job.json')]);
    const adapter = path.join(dir, 'out');
    const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'));
    expect(path.isAbsolute(cfg.base_model_name_or_path)).toBe(true);
    py(['peft-logits', '--model', models[family]!, '--adapter', adapter, '--tokens', tokens(), '--out', path.join(dir, 'peft.json')]);
    const mine = ours(models[family]!, adapter);
    const base = path.join(dir, 'base.json');
    engine(['forward', '--model', models[family]!, '--tokens', tokens(), '--out', base]);
    expect(maxAbsDiff(mine, readLogits(base))).toBeGreaterThan(1e-3); // training moved it
    expect(maxAbsDiff(mine, readLogits(path.join(dir, 'peft.json')))).toBeLessThan(1e-4);
    if (name === 'patterns') {
      expect(cfg.target_modules).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']); // all-linear, expanded as PEFT saves it
      expect(cfg.exclude_modules).toEqual(['o_proj']);
    }
  });
});

describe('generation stops where generation_config.json says', () => {
  it('an eos_token_id list there wins over config.json\'s', () => {
    const m = path.join(tmp, 'gen-llama');
    fs.cpSync(models.llama!, m, { recursive: true });
    const gen = (): number[] => JSON.parse(engine(['generate', '--model', m, '--prompt-ids', '1,5,17', '--max-new-tokens', '12', '--greedy']).stdout).ids;
    fs.rmSync(path.join(m, 'generation_config.json'), { force: true });
    const free = gen();
    expect(free.length).toBe(12);
    // stop at the third and fifth tokens of the free run: the first of them that appears ends it, included
    fs.writeFileSync(path.join(m, 'generation_config.json'), JSON.stringify({ eos_token_id: [free[4], free[2]] }));
    const stopped = gen();
    const cut = free.findIndex((t) => t === free[2] || t === free[4]);
    expect(stopped).toEqual(free.slice(0, cut + 1));
  });
});
