// Config variants of the LLaMA family the engine reads from config.json (their numerics against HF transformers + PEFT
// are in parity.test.ts, on the GPU backend in cuda-emulated.test.ts): Llama 3.1's rope_scaling (rope_type llama3),
// dynamic NTK scaling, unsupported scalings refused by name, Mistral's and Qwen2's sliding window (checked against
// HF transformers past the window: logits, loss, LoRA gradients, greedy generation; Qwen2's window in the layers
// from max_window_layers on, as transformers' layer_types),
// Mistral's fixed bias-free projections.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ROOT, runCli, tempHome } from '../helpers/app';
import { ENGINE, gradDiffs, maxAbsDiff, PY, readSafetensors } from '../helpers/native';

let tmp: string;
beforeAll(() => {
  tmp = tempHome('llmt-variants-');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function engine(args: string[]) {
  return spawnSync(ENGINE, args, { encoding: 'utf8', timeout: 120_000 });
}
function tiny(family: string, name: string, edit?: (c: Record<string, unknown>) => void): string {
  const dir = path.join(tmp, name);
  expect(engine(['create-tiny', '--family', family, '--out', dir, '--seed', '7']).status).toBe(0);
  if (edit) {
    const f = path.join(dir, 'config.json');
    const c = JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
    edit(c);
    fs.writeFileSync(f, JSON.stringify(c, null, 2));
  }
  return dir;
}
const inspect = (dir: string) => JSON.parse(engine(['inspect', '--model', dir]).stdout) as Record<string, unknown>;
function forward(dir: string, T: number): { status: number | null; stderr: string; logits?: number[][][] } {
  const ids = Array.from({ length: T }, (_, i) => 3 + ((i * 37) % 300));
  const t = path.join(tmp, `tokens-${T}.json`);
  fs.writeFileSync(t, JSON.stringify({ input_ids: [ids] }));
  const out = path.join(tmp, `out-${path.basename(dir)}-${T}.json`);
  const r = engine(['forward', '--model', dir, '--tokens', t, '--out', out]);
  return { status: r.status, stderr: r.stderr, ...(r.status === 0 ? { logits: (JSON.parse(fs.readFileSync(out, 'utf8')) as { logits: number[][][] }).logits } : {}) };
}

describe('rope_scaling', () => {
  it('llama3: the frequency table is scaled (positions past the original length differ from the unscaled model)', () => {
    const scaled = tiny('llama3', 'l3');
    const plain = tiny('llama3', 'l3-plain', (c) => delete c.rope_scaling);
    expect(inspect(scaled).rope_scaling).toBe('llama3');
    expect(inspect(plain).rope_scaling).toBeNull();
    const a = forward(scaled, 120);
    const b = forward(plain, 120);
    expect(a.status, a.stderr).toBe(0);
    expect(b.status, b.stderr).toBe(0);
    // position 0 has no rotation: the same; later positions see the divided low frequencies
    expect(maxAbsDiff([[a.logits![0]![0]!]], [[b.logits![0]![0]!]])).toBeLessThan(1e-5);
    expect(maxAbsDiff(a.logits!, b.logits!)).toBeGreaterThan(1e-3);
  });

  it('llama3 without its fields is a clear error; type spelled "type" (older configs) is read too', () => {
    const bad = tiny('llama3', 'l3-bad', (c) => {
      c.rope_scaling = { rope_type: 'llama3', factor: 8 };
    });
    const r = engine(['inspect', '--model', bad]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/rope_scaling of type llama3 needs factor >= 1, 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings/);
    const old = tiny('llama3', 'l3-type', (c) => {
      const rs = c.rope_scaling as Record<string, unknown>;
      c.rope_scaling = { ...rs, type: 'llama3', rope_type: undefined };
    });
    expect(inspect(old).rope_scaling).toBe('llama3');
    expect(maxAbsDiff(forward(old, 40).logits!, forward(tiny('llama3', 'l3-again'), 40).logits!)).toBe(0);
  });

  it("yarn: HF transformers' logits over 200 positions (past max_position_embeddings 64, within 64 × factor 4)", () => {
    const y = tiny('llama', 'yarn-hf', (c) => {
      c.max_position_embeddings = 64;
      c.rope_scaling = { rope_type: 'yarn', factor: 4.0 };
    });
    expect(inspect(y).context_limit).toBe(256);
    expect(inspect(y).rope_scaling).toBe('yarn');
    const ids = [Array.from({ length: 200 }, (_, i) => 3 + ((i * 37 + 7) % 300)), Array.from({ length: 200 }, (_, i) => 3 + ((i * 11 + 5) % 300))];
    const t = path.join(tmp, 'yarn-tokens.json');
    fs.writeFileSync(t, JSON.stringify({ input_ids: ids, labels: ids }));
    const ours = path.join(tmp, 'yarn-ours.json');
    const hf = path.join(tmp, 'yarn-hf.json');
    expect(engine(['forward', '--model', y, '--tokens', t, '--out', ours]).status).toBe(0);
    const r = spawnSync(PY, [path.join(ROOT, 'tests', 'python', 'hf_reference.py'), 'forward', '--model', y, '--tokens', t, '--out', hf], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const a = JSON.parse(fs.readFileSync(ours, 'utf8')) as { logits: number[][][]; loss: number };
    const b = JSON.parse(fs.readFileSync(hf, 'utf8')) as { logits: number[][][]; loss: number };
    expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(1e-4);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-5);
    // neither the frequencies nor the attention factor are left out
    const noAttn = tiny('llama', 'yarn-noattn', (c) => {
      c.max_position_embeddings = 64;
      c.rope_scaling = { rope_type: 'yarn', factor: 4.0, attention_factor: 1.0 };
    });
    expect(engine(['forward', '--model', noAttn, '--tokens', t, '--out', path.join(tmp, 'yarn-noattn.json')]).status).toBe(0);
    expect(maxAbsDiff((JSON.parse(fs.readFileSync(path.join(tmp, 'yarn-noattn.json'), 'utf8')) as { logits: number[][][] }).logits, b.logits)).toBeGreaterThan(1e-3);
  });

  it('dynamic NTK equals the default frequencies within max_position_embeddings; other types are refused by name', () => {
    const dyn = tiny('llama', 'dyn', (c) => {
      c.rope_scaling = { type: 'dynamic', factor: 2 };
    });
    const plain = tiny('llama', 'dyn-plain');
    expect(inspect(dyn).context_limit).toBe(512);
    expect(maxAbsDiff(forward(dyn, 60).logits!, forward(plain, 60).logits!)).toBe(0);
    const longrope = tiny('llama', 'longrope', (c) => {
      c.rope_scaling = { rope_type: 'longrope', factor: 4, short_factor: [1], long_factor: [1] };
    });
    expect(inspect(longrope).supported).toBe(false);
    expect(inspect(longrope).reason).toMatch(/rope_scaling type "longrope" is not supported yet \(supported: linear, llama3, yarn, dynamic within max_position_embeddings\)/);
  });
});

describe('sliding-window attention', () => {
  const hf = (args: string[]) => {
    const r = spawnSync(PY, [path.join(ROOT, 'tests', 'python', 'hf_reference.py'), ...args], { encoding: 'utf8', timeout: 300_000 });
    expect(r.status, r.stderr).toBe(0);
  };
  const json = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8')) as { logits: number[][][]; loss: number };
  // two rows of 40 tokens, three times Mistral's window of 12: most positions see only their last 12 keys
  const rows = [Array.from({ length: 40 }, (_, i) => 3 + ((i * 37 + 7) % 300)), Array.from({ length: 40 }, (_, i) => 3 + ((i * 11 + 5) % 300))];

  it("Mistral's window: HF transformers' logits, loss and LoRA gradients on rows three windows long", () => {
    const m = tiny('mistral', 'mistral-w', (c) => {
      c.sliding_window = 12;
    });
    const info = inspect(m);
    expect(info.sliding_window).toBe(12);
    expect(info.window_from_layer).toBe(0);
    expect(info.context_limit).toBe(512); // the window is no limit: max_position_embeddings is
    const t = path.join(tmp, 'window-tokens.json');
    fs.writeFileSync(t, JSON.stringify({ input_ids: rows, labels: rows }));
    const ours = path.join(tmp, 'window-ours.json');
    const ref = path.join(tmp, 'window-hf.json');
    const r = engine(['forward', '--model', m, '--tokens', t, '--out', ours]);
    expect(r.status, r.stderr).toBe(0);
    hf(['forward', '--model', m, '--tokens', t, '--out', ref]);
    expect(maxAbsDiff(json(ours).logits, json(ref).logits)).toBeLessThan(1e-4);
    expect(Math.abs(json(ours).loss - json(ref).loss)).toBeLessThan(1e-5);
    // the window is what makes them agree: the same weights without one (Mistral v0.2+: sliding_window null) differ
    const open = tiny('mistral', 'mistral-w-open', (c) => {
      c.sliding_window = null;
    });
    expect(engine(['forward', '--model', open, '--tokens', t, '--out', path.join(tmp, 'window-open.json')]).status).toBe(0);
    expect(maxAbsDiff(json(path.join(tmp, 'window-open.json')).logits, json(ref).logits)).toBeGreaterThan(1e-3);
    // LoRA on every projection: the gradients of each A and B as PEFT's
    const adapter = path.join(tmp, 'window-adapter');
    hf(['make-adapter', '--model', m, '--out', adapter, '--targets', 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', '--r', '4', '--alpha', '8', '--seed', '5']);
    const g = engine(['grad', '--model', m, '--adapter', adapter, '--tokens', t, '--out', path.join(tmp, 'window-ours.safetensors')]);
    expect(g.status, g.stderr).toBe(0);
    hf(['grad', '--model', m, '--adapter', adapter, '--tokens', t, '--out', path.join(tmp, 'window-hf.safetensors')]);
    const diffs = gradDiffs(readSafetensors(path.join(tmp, 'window-ours.safetensors')), readSafetensors(path.join(tmp, 'window-hf.safetensors')));
    expect(diffs.length).toBe(2 * 7 * 2);
    for (const { name, diff, scale } of diffs) expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  it('generation runs past the window (the KV cache attends to the last window rows), greedy as the windowed forward', () => {
    const m = tiny('mistral', 'mistral-gen', (c) => {
      c.sliding_window = 8;
    });
    const prompt = rows[0]!.slice(0, 10);
    const g = engine(['generate', '--model', m, '--prompt-ids', prompt.join(','), '--greedy', '--max-new-tokens', '20']);
    expect(g.status, g.stderr).toBe(0);
    const ids = (JSON.parse(g.stdout) as { ids: number[] }).ids;
    // (a prompt of 10 already passes the window of 8: generation used to be refused there; it may end at eos)
    expect(ids.length).toBeGreaterThan(0);
    // each greedy token is the argmax of HF's windowed forward over what came before it
    const seq = [...prompt, ...ids.slice(0, -1)];
    const t = path.join(tmp, 'gen-window-tokens.json');
    fs.writeFileSync(t, JSON.stringify({ input_ids: [seq] }));
    hf(['forward', '--model', m, '--tokens', t, '--out', path.join(tmp, 'gen-window-hf.json')]);
    const logits = json(path.join(tmp, 'gen-window-hf.json')).logits[0]!;
    const argmax = (row: number[]) => row.reduce((best, x, i) => (x > row[best]! ? i : best), 0);
    expect(ids.map((_, k) => argmax(logits[prompt.length - 1 + k]!))).toEqual(ids);
  });

  it('Qwen2 windows only with use_sliding_window, and only the layers from max_window_layers on', () => {
    const off = tiny('qwen2', 'qwen-off');
    expect(inspect(off).sliding_window).toBe(0);
    const none = tiny('qwen2', 'qwen-none', (c) => {
      c.use_sliding_window = true;
      c.sliding_window = 8;
      c.max_window_layers = 2; // = num_hidden_layers: no layer is windowed
    });
    expect(inspect(none).sliding_window).toBe(0);
    const second = tiny('qwen2', 'qwen-second', (c) => {
      c.use_sliding_window = true;
      c.sliding_window = 8;
      c.max_window_layers = 1;
    });
    expect(inspect(second).sliding_window).toBe(8);
    expect(inspect(second).window_from_layer).toBe(1);
    const both = tiny('qwen2', 'qwen-both', (c) => {
      c.use_sliding_window = true;
      c.sliding_window = 8;
      c.max_window_layers = 0;
    });
    expect(inspect(both).window_from_layer).toBe(0);
    // rows of 30: full, one windowed layer and two give three different models past position 8, the same before
    const [a, b, c] = [off, second, both].map((d) => forward(d, 30));
    for (const x of [a, b, c]) expect(x!.status, x!.stderr).toBe(0);
    const head = (x: typeof a) => [x!.logits![0]!.slice(0, 8)];
    expect(maxAbsDiff(head(a), head(b))).toBe(0);
    expect(maxAbsDiff(head(b), head(c))).toBe(0);
    expect(maxAbsDiff(a!.logits!, b!.logits!)).toBeGreaterThan(1e-4);
    expect(maxAbsDiff(b!.logits!, c!.logits!)).toBeGreaterThan(1e-4);
    // and each is what transformers computes (its Qwen2 layer_types; on 4.45, whose eager/SDPA Qwen2 ignores the
    // window, hf_reference.py gives those layers the same sliding-window mask): logits, loss and LoRA gradients
    const t = path.join(tmp, 'qwen-window-tokens.json');
    fs.writeFileSync(t, JSON.stringify({ input_ids: rows, labels: rows }));
    for (const [name, dir] of [['second', second], ['both', both]] as const) {
      const ours = path.join(tmp, `qwen-window-${name}.json`);
      const ref = path.join(tmp, `qwen-window-${name}-hf.json`);
      expect(engine(['forward', '--model', dir, '--tokens', t, '--out', ours]).status).toBe(0);
      hf(['forward', '--model', dir, '--tokens', t, '--out', ref]);
      expect(maxAbsDiff(json(ours).logits, json(ref).logits), name).toBeLessThan(1e-4);
      expect(Math.abs(json(ours).loss - json(ref).loss), name).toBeLessThan(1e-5);
    }
    const adapter = path.join(tmp, 'qwen-window-adapter');
    hf(['make-adapter', '--model', second, '--out', adapter, '--targets', 'q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj', '--r', '4', '--alpha', '8', '--seed', '9']);
    expect(engine(['grad', '--model', second, '--adapter', adapter, '--tokens', t, '--out', path.join(tmp, 'qwen-window-ours.safetensors')]).status).toBe(0);
    hf(['grad', '--model', second, '--adapter', adapter, '--tokens', t, '--out', path.join(tmp, 'qwen-window-hf.safetensors')]);
    const diffs = gradDiffs(readSafetensors(path.join(tmp, 'qwen-window-ours.safetensors')), readSafetensors(path.join(tmp, 'qwen-window-hf.safetensors')));
    expect(diffs.length).toBe(2 * 7 * 2);
    for (const { name, diff, scale } of diffs) expect(diff / Math.max(scale, 1e-12), `${name}: max diff ${diff}, scale ${scale}`).toBeLessThan(1e-3);
  });

  it('Mistral has no projection biases whatever attention_bias says (MistralAttention fixes bias=False)', () => {
    const a = tiny('mistral', 'mistral-nb');
    const b = tiny('mistral', 'mistral-ab', (c) => {
      c.attention_bias = true;
    });
    expect(inspect(b).parameters).toBe(inspect(a).parameters);
    expect(forward(b, 10).status).toBe(0);
  });

  it('the app trains a windowed model on samples longer than its window', async () => {
    const m = tiny('mistral', 'mistral-app', (c) => {
      c.sliding_window = 16;
    });
    const train = path.join(tmp, 'train.jsonl');
    fs.writeFileSync(train, [`${'abc def '.repeat(40)}`, '短的问题'].map((q, i) => JSON.stringify({ input: q, target: `答 ${i}` })).join('\n'));
    const out = path.join(tmp, 'run-out');
    const r = await runCli(
      ['train', '--model_name_or_path', m, '--train_file', train, '--output_dir', out, '--max_source_length', '200', '--max_target_length', '8',
        '--per_device_train_batch_size', '2', '--max_steps', '1', '--logging_steps', '1', '--save_steps', '100', '--device', 'cpu'],
      { home: tmp, timeoutMs: 180_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/sliding/);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
  });
});

// HF Trainer ≥ 4.46 divides by the step's token count only for models whose forward takes num_items_in_batch: the
// remote-code ChatGLM v1/v2, Baichuan and MiniCPM forwards do not (mean of the micro-batch means, docs/formats.md)
describe('loss_normalization auto follows each family\'s published forward', () => {
  const expected: [string, string][] = [
    ['llama', 'token_mean'], ['llama3', 'token_mean'], ['mistral', 'token_mean'], ['qwen2', 'token_mean'], ['gpt_neox', 'token_mean'],
    ['bloom', 'token_mean'], ['falcon', 'token_mean'], ['baichuan', 'mean_of_means'], ['baichuan13b', 'mean_of_means'],
    ['chatglm', 'mean_of_means'], ['chatglm2', 'mean_of_means'], ['minicpm', 'mean_of_means'],
  ];
  it.each(expected)('%s: %s', (family, norm) => {
    const dir = tiny(family, `norm-${family}`);
    const data = path.join(tmp, `norm-${family}.json`);
    const ids = Array.from({ length: 4 }, (_, i) => [1, 37 + i, 99, 261, 262, 61, 8, 77]);
    fs.writeFileSync(data, JSON.stringify({ input_ids: ids, labels: ids.map((r) => r.map((t, j) => (j < 5 ? -100 : t))) }));
    const job = path.join(tmp, `norm-${family}.job.json`);
    fs.writeFileSync(job, JSON.stringify({ model: dir, lora: { r: 2, alpha: 4, target_modules: 'all-linear' }, data: { train: data }, training: { max_steps: 1, micro_batch_size: 2, gradient_accumulation_steps: 2 }, output: { dir: path.join(tmp, `norm-${family}-out`), save_steps: 100 } }));
    const r = engine(['train', '--job', job]);
    expect(r.status, r.stderr).toBe(0);
    const start = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((e) => e.loss_normalization !== undefined);
    expect(start?.loss_normalization).toBe(norm);
  });
});

// the KV-cache path (rotary table, head size, biases) against the full forward: each greedy token is the argmax of
// the full forward's logits at the position before it
describe('KV-cache generation follows the full forward', () => {
  it.each(['llama3', 'llama_bias', 'mistral', 'qwen2'])('%s', (family) => {
    const dir = tiny(family, `gen-${family}`);
    const prompt = Array.from({ length: 70 }, (_, i) => 3 + ((i * 53) % 300));
    const g = engine(['generate', '--model', dir, '--prompt-ids', prompt.join(','), '--greedy', '--max-new-tokens', '12']);
    expect(g.status, g.stderr).toBe(0);
    const ids = (JSON.parse(g.stdout) as { ids: number[] }).ids;
    const gen = ids.length > 12 ? ids.slice(prompt.length) : ids; // the answer alone, or prompt + answer
    expect(gen.length).toBe(12);
    const seq = [...prompt, ...gen];
    const t = path.join(tmp, `gen-${family}.json`);
    fs.writeFileSync(t, JSON.stringify({ input_ids: [seq] }));
    const out = path.join(tmp, `gen-${family}-out.json`);
    expect(engine(['forward', '--model', dir, '--tokens', t, '--out', out]).status).toBe(0);
    const logits = (JSON.parse(fs.readFileSync(out, 'utf8')) as { logits: number[][][] }).logits[0]!;
    const argmax = (v: number[]) => v.reduce((b, x, i) => (x > v[b]! ? i : b), 0);
    for (let i = 0; i < gen.length; ++i) expect(argmax(logits[prompt.length - 1 + i]!), `token ${i}`).toBe(gen[i]);
  });
});

// NEFTune through the job (training.neftune_noise_alpha): the training losses change from the first forward on (that
// evaluation sees no noise: native test_neftune); a negative alpha is refused by name
describe('training.neftune_noise_alpha', () => {
  it('noise in training only', () => {
    const dir = tiny('llama', 'neft');
    const data = path.join(tmp, 'neft.json');
    const ids = Array.from({ length: 8 }, (_, i) => Array.from({ length: 12 }, (_, j) => 3 + ((i * 31 + j * 7) % 300)));
    fs.writeFileSync(data, JSON.stringify({ input_ids: ids, labels: ids }));
    const run = (alpha: number | string, name: string) => {
      const job = path.join(tmp, `${name}.job.json`);
      fs.writeFileSync(job, JSON.stringify({ model: dir, lora: { r: 4, alpha: 8, target_modules: ['q_proj', 'v_proj'] }, data: { train: data, eval: data }, training: { max_steps: 3, micro_batch_size: 4, learning_rate: 1e-3, neftune_noise_alpha: alpha }, output: { dir: path.join(tmp, name), logging_steps: 1, save_steps: 100, eval_steps: 3 } }));
      const r = engine(['train', '--job', job]);
      const ev = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, number | string>);
      return { r, losses: ev.filter((e) => e.event === 'step').map((e) => e.loss as number), evalLoss: ev.find((e) => e.event === 'eval')?.eval_loss };
    };
    const off = run(0, 'neft-off');
    const on = run(5, 'neft-on');
    expect(off.r.status, off.r.stderr).toBe(0);
    expect(on.r.status, on.r.stderr).toBe(0);
    expect(on.losses[0]).not.toBe(off.losses[0]); // the very first forward already sees the noise
    expect(on.evalLoss).toBeDefined();
    const bad = run(-1, 'neft-bad');
    expect(bad.r.status).not.toBe(0);
    expect(bad.r.stderr + bad.r.stdout).toMatch(/neftune_noise_alpha must be a number >= 0/);
  });
});

// Padding-free micro-batches (training.padding_free, on by default): a micro-batch's samples packed first-fit into rows
// as long as its longest one, positions restarting per sample — the same losses and adapter as padded rows, up to
// rounding; ChatGLM-6B (2-D positions per row) keeps padded rows. An ALiBi family (bloom) and a rotary one (llama).
describe('training.padding_free', () => {
  it.each(['llama', 'bloom', 'chatglm'])('%s: the same run as padded rows', (family) => {
    const dir = tiny(family, `pf-${family}`);
    const data = path.join(tmp, `pf-${family}.json`);
    let s = 7;
    const rnd = (m: number) => ((s = (s * 1103515245 + 12345) % 2147483648), s % m);
    const ids = Array.from({ length: 16 }, (_, i) => {
      const row = Array.from({ length: 4 + rnd(24) }, () => 3 + rnd(250));
      if (family === 'chatglm') row.splice(1 + (i % 2), 0, 261, 262); // [gMASK] <sop> in every ChatGLM-6B sample
      return row;
    });
    fs.writeFileSync(data, JSON.stringify({ input_ids: ids, labels: ids.map((r) => r.map((t, j) => (j < 3 ? -100 : t))) }));
    const run = (pf: boolean) => {
      const out = path.join(tmp, `pf-${family}-${pf}`);
      const job = path.join(tmp, `pf-${family}-${pf}.job.json`);
      fs.writeFileSync(job, JSON.stringify({ model: dir, lora: { r: 4, alpha: 8, target_modules: 'all-linear' }, data: { train: data }, training: { max_steps: 6, micro_batch_size: 8, gradient_accumulation_steps: 1, learning_rate: 5e-3, seed: 3, padding_free: pf }, output: { dir: out, logging_steps: 1, save_steps: 100 } }));
      const r = engine(['train', '--job', job]);
      expect(r.status, r.stderr).toBe(0);
      const steps = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; loss: number; tokens: number }).filter((e) => e.event === 'step');
      return { out, losses: steps.map((e) => e.loss), tokens: steps.map((e) => e.tokens) };
    };
    const padded = run(false);
    const free = run(true);
    expect(free.losses.length).toBe(6);
    free.losses.forEach((l, i) => expect(Math.abs(l - padded.losses[i]!) / Math.abs(padded.losses[i]!), `step ${i + 1}`).toBeLessThan(1e-5));
    const a = readSafetensors(path.join(padded.out, 'adapter_model.safetensors'));
    const b = readSafetensors(path.join(free.out, 'adapter_model.safetensors'));
    let worst = 0;
    for (const [k, v] of a) v.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - b.get(k)![i]!))));
    expect(worst).toBeLessThan(1e-4);
    // fewer tokens computed (rows × length) — except ChatGLM-6B, which keeps its padded rows
    const sum = (x: number[]) => x.reduce((p, q) => p + q, 0);
    if (family === 'chatglm') expect(sum(free.tokens)).toBe(sum(padded.tokens));
    else expect(sum(free.tokens)).toBeLessThan(0.8 * sum(padded.tokens));
  });
});
