// The engine through its two doors, on tiny models it creates: `llmt-engine` subcommands (as RunService
// and the parity checks use them) and the addon's Promise API (inspect, load, streaming generation).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { LlmtAddon } from '../../native/addon/index';
import { ROOT } from '../helpers/app';

const bin = process.env.LLMS_TRAIN_NATIVE_DIR || path.join(ROOT, 'native', 'build', 'bin');
const exe = path.join(bin, 'llmt-engine');
const addon = createRequire(import.meta.url)(path.join(bin, 'llmt.node')) as LlmtAddon;
let tmp: string;

function engine(args: string[], input?: string) {
  return spawnSync(exe, args, { encoding: 'utf8', input, timeout: 120_000 });
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-engine-'));
  for (const f of ['llama', 'baichuan', 'gpt_neox']) {
    const r = engine(['create-tiny', '--family', f, '--out', path.join(tmp, f), '--seed', '3']);
    expect(r.status, r.stderr).toBe(0);
  }
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const tokens = { input_ids: [[1, 40, 41, 42, 43, 44], [1, 50, 51, 52, 53, 54]], labels: [[-100, -100, 41, 42, 43, 44], [-100, 50, 51, 52, 53, 54]] };

describe('llmt-engine subcommands', () => {
  it('create-tiny writes a real HF folder with a tokenizer', () => {
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(fs.existsSync(path.join(tmp, 'llama', f))).toBe(true);
    }
    const tok = JSON.parse(fs.readFileSync(path.join(tmp, 'llama', 'tokenizer.json'), 'utf8'));
    expect(tok.model.type).toBe('BPE');
    expect(Object.keys(tok.model.vocab).length).toBe(260);
  });

  it('inspect describes each family without loading weights', () => {
    const j = JSON.parse(engine(['inspect', '--model', path.join(tmp, 'gpt_neox')]).stdout);
    expect(j).toMatchObject({ model_type: 'gpt_neox', supported: true, layers: 2, heads: 4, vocab: 320, dtype: 'F32' });
    expect(j.lora_targets).toEqual(['query_key_value', 'dense', 'dense_h_to_4h', 'dense_4h_to_h']);
    const l = JSON.parse(engine(['inspect', '--model', path.join(tmp, 'llama')]).stdout);
    expect(l.kv_heads).toBe(2);
  });

  it('forward writes loss and logits [B][T][V]', () => {
    const t = path.join(tmp, 't.json');
    fs.writeFileSync(t, JSON.stringify(tokens));
    const out = path.join(tmp, 'o.json');
    const r = engine(['forward', '--model', path.join(tmp, 'llama'), '--tokens', t, '--out', out]);
    expect(r.status, r.stderr).toBe(0);
    const o = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(o.logits).toHaveLength(2);
    expect(o.logits[0]).toHaveLength(6);
    expect(o.logits[0][0]).toHaveLength(320);
    expect(o.tokens).toBe(9); // after the shift: 4 + 5 labelled targets
    expect(o.loss).toBeGreaterThan(0);
  });

  it('trains 20 steps through a job file, streaming JSON-lines events, and writes a PEFT adapter', () => {
    const data = path.join(tmp, 'train.json');
    fs.writeFileSync(data, JSON.stringify({ input_ids: Array.from({ length: 8 }, (_, i) => [1, 10 + i, 11 + i, 12 + i, 13 + i, 2]), labels: Array.from({ length: 8 }, (_, i) => [-100, -100, 11 + i, 12 + i, 13 + i, 2]) }));
    const out = path.join(tmp, 'run');
    const job = path.join(tmp, 'job.json');
    fs.writeFileSync(job, JSON.stringify({ model: path.join(tmp, 'gpt_neox'), lora: { r: 4, alpha: 8, target_modules: ['query_key_value', 'dense'] }, data: { train: data }, training: { learning_rate: 0.005, max_steps: 20, micro_batch_size: 4 }, output: { dir: out, logging_steps: 5, save_steps: 10 } }));
    const r = engine(['train', '--job', job]);
    expect(r.status, r.stderr).toBe(0);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(events[0].event).toBe('started');
    expect(events.filter((e) => e.event === 'step').map((e) => e.step)).toEqual([5, 10, 15, 20]);
    expect(events.filter((e) => e.event === 'checkpoint').map((e) => e.step)).toEqual([10, 20]);
    expect(events.at(-1)).toMatchObject({ event: 'done', status: 'completed', step: 20 });
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, task_type: 'CAUSAL_LM', target_modules: ['dense', 'query_key_value'] });
    expect(fs.existsSync(path.join(out, 'checkpoint-10', 'optimizer.safetensors'))).toBe(true);
  });

  /** A long job (one sample, endless steps) sent "stop" on stdin once its stdout shows `after`; its exit code and events. */
  async function stopAfter(name: string, saveSteps: number, after: string): Promise<{ code: number | null; events: { event: string; step?: number; status?: string }[]; out: string }> {
    const data = path.join(tmp, `${name}.train.json`);
    fs.writeFileSync(data, JSON.stringify({ input_ids: [[1, 5, 6, 7, 8, 9, 10, 11]], labels: [[1, 5, 6, 7, 8, 9, 10, 11]] }));
    const job = path.join(tmp, `${name}.job.json`);
    const out = path.join(tmp, name);
    fs.writeFileSync(job, JSON.stringify({ model: path.join(tmp, 'llama'), data: { train: data }, training: { max_steps: 100000, micro_batch_size: 1 }, output: { dir: out, logging_steps: 1, save_steps: saveSteps } }));
    const child = spawn(exe, ['train', '--job', job], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    const done = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        if (stdout.includes(after)) resolve();
      }),
    );
    child.stdin.write('stop\n');
    const code = await done;
    return { code, events: stdout.trim().split('\n').map((l) => JSON.parse(l)), out };
  }

  it('stops gracefully on "stop" from stdin, with a checkpoint', async () => {
    const { code, events, out } = await stopAfter('run2', 100000, '"event":"step"');
    expect(code).toBe(0);
    const last = events.at(-1)!;
    expect(last).toMatchObject({ event: 'done', status: 'stopped' });
    expect(fs.existsSync(path.join(out, `checkpoint-${last.step}`, 'adapter_model.safetensors'))).toBe(true);
  });

  it('a stop right after a save_steps checkpoint writes that checkpoint once', async () => {
    // a checkpoint after every step: the stop always comes right after one
    const { code, events } = await stopAfter('run3', 1, '"event":"checkpoint"');
    expect(code).toBe(0);
    const saved = events.filter((e) => e.event === 'checkpoint').map((e) => e.step);
    expect(saved.length).toBeGreaterThan(0);
    expect(new Set(saved).size).toBe(saved.length);
    const last = events.at(-1)!;
    expect(last).toMatchObject({ event: 'done', status: 'stopped' });
    expect(saved.at(-1)).toBe(last.step);
  });

  it('generate --batch answers every prompt as generate answers it alone', () => {
    const model = path.join(tmp, 'baichuan');
    const flags = ['--max-new-tokens', '6', '--temperature', '1', '--top-k', '0', '--seed', '4'];
    const b = engine(['generate', '--model', model, '--batch', '--prompt-ids', '1,40,41,42;1,50;1,60,61,62,63,64', ...flags]);
    expect(b.status, b.stderr).toBe(0);
    const ids = JSON.parse(b.stdout).ids as number[][];
    expect(ids).toHaveLength(3);
    ['1,40,41,42', '1,50', '1,60,61,62,63,64'].forEach((p, k) => {
      const one = engine(['generate', '--model', model, '--prompt-ids', p, ...flags]);
      expect(JSON.parse(one.stdout).ids).toEqual(ids[k]);
    });
  });

  it('eval prints the loss of a dataset without logits; --batch as the job\'s eval_batch_size', () => {
    const t = path.join(tmp, 'eval.json');
    fs.writeFileSync(t, JSON.stringify(tokens));
    const r = engine(['eval', '--model', path.join(tmp, 'llama'), '--data', t, '--batch', '2', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    const f = path.join(tmp, 'o2.json');
    engine(['forward', '--model', path.join(tmp, 'llama'), '--tokens', t, '--out', f]);
    const fwd = JSON.parse(fs.readFileSync(f, 'utf8'));
    expect(j).toMatchObject({ loss: fwd.loss, tokens: fwd.tokens, samples: 2 });
    expect(j.perplexity).toBeCloseTo(Math.exp(fwd.loss), 12);
    expect(engine(['eval', '--model', path.join(tmp, 'llama'), '--data', t, '--batch', '0']).status).toBe(2);
  });

  it('fails with a code and a named cause for bad input', () => {
    const r = engine(['forward', '--model', path.join(tmp, 'nope'), '--tokens', 'x.json', '--out', 'y.json']);
    expect(r.status).toBe(1);
    const bad = path.join(tmp, 'bad.json');
    fs.writeFileSync(bad, '{"input_ids": [[1, 2], [3]]}');
    const r2 = engine(['forward', '--model', path.join(tmp, 'llama'), '--tokens', bad, '--out', path.join(tmp, 'z.json')]);
    expect(r2.status).toBe(1);
    expect(r2.stderr).toMatch(/BAD_INPUT: .*row 1 has a different length/);
    const oov = path.join(tmp, 'oov.json');
    fs.writeFileSync(oov, '{"input_ids": [[1, 99999]]}');
    const r3 = engine(['forward', '--model', path.join(tmp, 'llama'), '--tokens', oov, '--out', path.join(tmp, 'z.json')]);
    expect(r3.stderr).toMatch(/BAD_INPUT: token id 99999 .* outside the vocabulary/);
    const job = path.join(tmp, 'badjob.json');
    fs.writeFileSync(job, JSON.stringify({ model: path.join(tmp, 'llama'), data: { train: oov }, output: { dir: path.join(tmp, 'o') }, training: { learnig_rate: 1 } }));
    const r4 = engine(['train', '--job', job]);
    expect(r4.status).toBe(1);
    const ev = JSON.parse(r4.stdout.trim().split('\n').at(-1)!);
    expect(ev).toMatchObject({ event: 'error', code: 'BAD_INPUT' });
    expect(ev.message).toMatch(/unknown field "training.learnig_rate"/);
    const trunc = path.join(tmp, 'trunc');
    fs.mkdirSync(trunc);
    fs.copyFileSync(path.join(tmp, 'llama', 'config.json'), path.join(trunc, 'config.json'));
    const w = fs.readFileSync(path.join(tmp, 'llama', 'model.safetensors'));
    fs.writeFileSync(path.join(trunc, 'model.safetensors'), w.subarray(0, 100));
    const r5 = engine(['inspect', '--model', trunc]);
    expect(r5.status).toBe(1);
    expect(r5.stderr).toMatch(/BAD_INPUT: .*model\.safetensors/);
    // bench: an unknown 4-bit GEMM path or attention kernel is a usage error; a profile without a GPU says why
    const r6 = engine(['bench', '--model', path.join(tmp, 'llama'), '--q4-gemm', 'fast']);
    expect(r6.status).toBe(2);
    expect(r6.stderr).toMatch(/bench: --q4-gemm auto\|fused\|dequant\|both/);
    const r6b = engine(['bench', '--model', path.join(tmp, 'llama'), '--attn', 'v3']);
    expect(r6b.status).toBe(2);
    expect(r6b.stderr).toMatch(/bench: --attn v1\|v2\|both/);
    const r7 = engine(['bench', '--model', path.join(tmp, 'llama'), '--seq', '8', '--iters', '1', '--profile']);
    expect(r7.status).toBe(1);
    expect(r7.stderr).toMatch(/UNSUPPORTED: profiling times device kernels: the cpu backend has none/);
  });
});

describe('llmt-engine: wrong types, diverged weights, config and weights that disagree', () => {
  const rows = () => {
    const f = path.join(tmp, 'rows.json');
    fs.writeFileSync(f, JSON.stringify({ input_ids: Array.from({ length: 4 }, (_, i) => [1, 10 + i, 11 + i, 12 + i, 13 + i, 2]) }));
    return f;
  };
  const job = (name: string, training: Record<string, unknown>, lora: Record<string, unknown> = { r: 4, alpha: 8, target_modules: ['q_proj'] }) => {
    const f = path.join(tmp, `${name}.json`);
    fs.writeFileSync(f, JSON.stringify({ model: path.join(tmp, 'llama'), lora, data: { train: rows() }, training: { max_steps: 2, micro_batch_size: 2, ...training }, output: { dir: path.join(tmp, name), save_steps: 1 } }));
    return f;
  };
  const lastEvent = (r: ReturnType<typeof engine>) => JSON.parse(r.stdout.trim().split('\n').at(-1)!);

  it.each([
    ['lr-string', { learning_rate: '0.002' }, undefined, /training\.learning_rate must be a number \(got "0\.002"\)/],
    ['steps-string', { max_steps: '5' }, undefined, /training\.max_steps must be an integer/],
    ['steps-huge', { max_steps: 1e20 }, undefined, /training\.max_steps must be an integer/],
    ['batch-fraction', { micro_batch_size: 1.5 }, undefined, /training\.micro_batch_size must be an integer/],
    ['rank-string', {}, { r: '4' }, /lora\.r must be an integer/],
    ['targets-numbers', {}, { target_modules: [1, 2] }, /lora\.target_modules must be a string or a list of strings/],
  ])('a job field of the wrong type is an error naming it: %s', (name, training, lora, why) => {
    const r = engine(['train', '--job', job(name, training as Record<string, unknown>, lora as Record<string, unknown> | undefined)]);
    expect(r.status).toBe(1);
    expect(lastEvent(r)).toMatchObject({ event: 'error', code: 'BAD_INPUT' });
    expect(lastEvent(r).message).toMatch(why);
  });

  it('a LoRA target that matches no module is a warning naming it (PEFT skips it silently)', () => {
    const r = engine(['train', '--job', job('typo', { max_steps: 1 }, { r: 4, alpha: 8, target_modules: ['q_proj', 'v_porj'] })]);
    expect(r.status, r.stderr).toBe(0);
    const warnings = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.event === 'warning');
    expect(warnings.map((w) => w.message)).toContainEqual(expect.stringMatching(/LoRA target module "v_porj" matches no module of this llama model \(its linear modules: q_proj, .*v_proj/));
  });

  it('a diverged update is not checkpointed: the newest checkpoint on disk stays finite', () => {
    const r = engine(['train', '--job', job('diverge', { learning_rate: 1e38 })]);
    expect(r.status).toBe(1);
    expect(lastEvent(r)).toMatchObject({ event: 'error', code: 'NAN' });
    expect(lastEvent(r).message).toMatch(/after the update of step 1, .* not finite .* checkpoint-1 was not written/);
    expect(fs.readdirSync(path.join(tmp, 'diverge')).filter((n) => n.startsWith('checkpoint-'))).toEqual([]);
  });

  it('forward refuses to write NaN logits as JSON; adapter configs of the wrong type or rank are named', () => {
    const ok = path.join(tmp, 'rank-ok');
    expect(engine(['train', '--job', job('rank-ok', {})]).status).toBe(0);
    const t = path.join(tmp, 't.json');
    fs.writeFileSync(t, JSON.stringify({ input_ids: [[1, 5, 6, 7]] }));
    // a NaN in the adapter: no file no JSON parser reads
    const nan = path.join(tmp, 'nan-adapter');
    fs.cpSync(ok, nan, { recursive: true });
    const st = path.join(nan, 'adapter_model.safetensors');
    const buf = fs.readFileSync(st);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    const b = Object.entries(header).find(([k]) => k.includes('lora_B')) as [string, { data_offsets: [number, number] }];
    buf.writeFloatLE(NaN, 8 + n + b[1].data_offsets[0]);
    fs.writeFileSync(st, buf);
    const out = path.join(tmp, 'nan-logits.json');
    const r = engine(['forward', '--model', path.join(tmp, 'llama'), '--adapter', nan, '--tokens', t, '--out', out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/NAN: \d+ of \d+ logits are not finite/);
    expect(fs.existsSync(out)).toBe(false);
    // lora_alpha as a string, and r that is not the tensors' rank: named, by forward and by merge alike
    const edit = (name: string, patch: Record<string, unknown>) => {
      const d = path.join(tmp, name);
      fs.cpSync(ok, d, { recursive: true });
      const cfg = JSON.parse(fs.readFileSync(path.join(d, 'adapter_config.json'), 'utf8'));
      fs.writeFileSync(path.join(d, 'adapter_config.json'), JSON.stringify({ ...cfg, ...patch }));
      return d;
    };
    for (const [d, why] of [
      [edit('alpha-str', { lora_alpha: '32' }), /lora_alpha must be a number \(got "32"\)/],
      [edit('r-wrong', { r: 8 }), /gives .*q_proj.* rank 8 .* rank 4: the config and the weights do not belong together/],
      [edit('target-fewer', { target_modules: ['k_proj'] }), /lacks tensors its adapter_config.json implies/],
    ] as const) {
      const f = engine(['forward', '--model', path.join(tmp, 'llama'), '--adapter', d, '--tokens', t, '--out', path.join(tmp, 'x.json')]);
      expect(f.status, d).toBe(1);
      expect(f.stderr).toMatch(why);
      const m = engine(['merge', '--model', path.join(tmp, 'llama'), '--adapter', d, '--out', `${d}-merged`]);
      expect(m.status, d).toBe(1);
      expect(m.stderr).toMatch(d.endsWith('target-fewer') ? /does not target/ : why);
      expect(fs.existsSync(`${d}-merged`)).toBe(false);
    }
  });

  it('a config.json whose vocabulary the weights do not have is named, not an out-of-memory', () => {
    const m = path.join(tmp, 'vocab-lie');
    fs.cpSync(path.join(tmp, 'llama'), m, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(m, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(m, 'config.json'), JSON.stringify({ ...cfg, vocab_size: 1e12 }));
    const t = path.join(tmp, 't.json');
    const r = engine(['forward', '--model', m, '--tokens', t, '--out', path.join(tmp, 'x.json')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/BAD_INPUT: .*1000000000000-token vocabulary .* the config does not belong to these weights/);
  });
});

describe('engine addon', () => {
  it('inspects a folder off the event loop', async () => {
    const j = await addon.inspect(path.join(tmp, 'baichuan'));
    expect(j).toMatchObject({ model_type: 'baichuan', supported: true, lora_targets: ['W_pack', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] });
    await expect(addon.inspect(path.join(tmp, 'missing'))).rejects.toMatchObject({ code: 'IO' });
  });

  it('reports an unsupported model_type as data, not as an error', async () => {
    const d = path.join(tmp, 'rwkv');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ model_type: 'rwkv' }));
    const j = await addon.inspect(d);
    expect(j.supported).toBe(false);
    expect(j.reason).toMatch(/supported: llama, mistral, qwen2, baichuan, gpt_neox/);
  });

  it('streams generated tokens and can be aborted', async () => {
    const m = await addon.loadModel(path.join(tmp, 'llama'));
    const seen: number[] = [];
    const r = await m.generate([1, 20, 21], { max_new_tokens: 8, do_sample: false, stop_ids: [] }, (e) => seen.push(e.token));
    expect(r.ids).toHaveLength(8);
    expect(seen).toEqual(r.ids);
    expect(r.aborted).toBe(false);
    // the same prompt greedily gives the same tokens
    expect((await m.generate([1, 20, 21], { max_new_tokens: 8, do_sample: false, stop_ids: [] })).ids).toEqual(r.ids);
    const p = m.generate([1, 20, 21], { max_new_tokens: 400, stop_ids: [] }, (e) => {
      if (e.index === 2) m.abort();
    });
    expect(() => m.generate([1], {})).toThrow(/already generating/);
    const a = await p;
    expect(a.aborted).toBe(true);
    expect(a.ids.length).toBeLessThan(400);
    m.free();
    expect(() => m.info()).toThrow(/freed/);
  });

  it('rejects with the engine code when a model cannot load', async () => {
    await expect(addon.loadModel(path.join(tmp, 'rwkv'))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });
});

describe('llmt-engine under memory pressure', () => {
  it('reports OOM with a hint instead of crashing', () => {
    // 10^8 tokens under an 8 GB address-space limit: the ids fit, the activations (~25 GB) cannot be allocated
    const r = spawnSync('bash', ['-c', `ulimit -v 8000000; exec "${exe}" bench --model "${path.join(tmp, 'llama')}" --batch 10000 --seq 10000 --iters 1 --warmup 0`], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status).toBe(1);
    expect(r.signal).toBeNull();
    expect(r.stderr).toMatch(/OOM: .*out of memory; lower the batch size/);
  });
});
