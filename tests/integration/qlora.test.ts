// QLoRA (issue 11) through the built engine and CLI: the engine's 4-bit quantization against bitsandbytes
// (tests/python/bnb_reference.py: bitsandbytes' native CPU library + ports of its CUDA and CPU 4-bit kernels),
// `llmt-engine forward --quantization nf4`, and a tiny model trained with `llms-train train --quantization nf4`
// into a PEFT adapter; `llmt-engine quantize --model` (a bnb 4-bit checkpoint, loaded as stored). Bit-exactness
// of the QLoRA forward/backward vs the dequantized model and of the saved folder vs on-load: native test_q4.
// Set LLMS_TRAIN_NATIVE_DIR to test another build of llmt-engine (default native/build/bin).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Store } from '../../src-main/core/store/store';
import { ROOT, runCli } from '../helpers/app';
import { loadEngine } from '../../src-main/core/engine/native';
import { ENGINE, NATIVE, PY } from '../helpers/native';

const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
let tmp: string;
let model: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-qlora-'));
  model = path.join(tmp, 'model');
  expect(spawnSync(ENGINE, ['create-tiny', '--family', 'llama', '--out', model]).status).toBe(0);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('QLoRA', () => {
  it('quantizes as bitsandbytes does: codes, double-quantized scales and dequantized values identical', () => {
    if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\``);
    const fetched = spawnSync('bash', [path.join(ROOT, 'tests', 'python', 'fetch_bnb.sh')], { encoding: 'utf8' });
    const r = spawnSync(PY, [path.join(ROOT, 'tests', 'python', 'bnb_reference.py'), ENGINE, path.join(tmp, 'bnb')], {
      encoding: 'utf8',
      env: { ...process.env, ...(fetched.status === 0 ? { LLMT_BNB_CPU_LIB: fetched.stdout.trim() } : {}) },
      timeout: 120_000,
    });
    expect(r.status, r.stderr + r.stdout.slice(-4000)).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(true);
    if (fetched.status === 0) expect(report.native_lib).toBeTruthy();
    const cases = Object.values(report.tensors) as { values_eq: boolean; max_abs_diff: number }[];
    expect(cases.length).toBe(28);
    for (const c of cases) expect(c).toMatchObject({ values_eq: true, max_abs_diff: 0 });
  }, 180_000);

  it('llmt-engine forward --quantization nf4 runs the 4-bit model (and rejects unknown kinds)', () => {
    const tokens = path.join(tmp, 't.json');
    fs.writeFileSync(tokens, JSON.stringify({ input_ids: [[5, 9, 11, 30, 7, 2]], labels: [[-100, 9, 11, 30, 7, 2]] }));
    const run = (q: string) => {
      const out = path.join(tmp, `f-${q}.json`);
      const r = spawnSync(ENGINE, ['forward', '--model', model, '--tokens', tokens, '--out', out, '--quantization', q], { encoding: 'utf8' });
      return { r, j: r.status === 0 ? JSON.parse(fs.readFileSync(out, 'utf8')) : null };
    };
    const full = run('none');
    const nf4 = run('nf4');
    const fp4 = run('fp4');
    expect(nf4.r.status, nf4.r.stderr).toBe(0);
    expect(fp4.r.status, fp4.r.stderr).toBe(0);
    expect(Number.isFinite(nf4.j.loss)).toBe(true);
    expect(nf4.j.loss).not.toBe(full.j.loss); // the weights really are 4-bit
    expect(Math.abs(nf4.j.loss - full.j.loss)).toBeLessThan(0.5);
    const bad = run('int3');
    expect(bad.r.status).not.toBe(0);
    expect(bad.r.stderr).toMatch(/BAD_INPUT.*nf4/);
  });

  it('llmt-engine quantize --model writes a bnb 4-bit checkpoint (transformers\' layout) that loads as stored', async () => {
    const q = path.join(tmp, 'model-nf4');
    const r = spawnSync(ENGINE, ['quantize', '--model', model, '--out', q, '--type', 'nf4'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const cfg = JSON.parse(fs.readFileSync(path.join(q, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toMatchObject({
      quant_method: 'bitsandbytes', load_in_4bit: true, bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: true,
      bnb_4bit_quant_storage: 'uint8',
    });
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) expect(fs.existsSync(path.join(q, f))).toBe(true);
    // key names, dtypes, shapes and quant_state JSON as transformers 4.45 + bitsandbytes' QuantState.from_dict expect
    if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\``);
    const layout = spawnSync(PY, [path.join(ROOT, 'tests', 'python', 'bnb_layout_check.py'), q, model], { encoding: 'utf8', timeout: 60_000 });
    expect(layout.status, layout.stderr + layout.stdout).toBe(0);
    expect(JSON.parse(layout.stdout)).toMatchObject({ ok: true, converted: 14, skipped: ['lm_head'] });
    const info = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', q], { encoding: 'utf8' }).stdout);
    const info0 = JSON.parse(spawnSync(ENGINE, ['inspect', '--model', model], { encoding: 'utf8' }).stdout);
    expect(info).toMatchObject({ quantization: 'nf4', double_quant: true, parameters: info0.parameters, dtype: info0.dtype });
    expect(info0.quantization).toBe('none');
    // the stored weights give the forward of quantize-on-load (bit-exactness: native test_q4)
    const tokens = path.join(tmp, 'tq.json');
    fs.writeFileSync(tokens, JSON.stringify({ input_ids: [[5, 9, 11, 30, 7, 2]], labels: [[-100, 9, 11, 30, 7, 2]] }));
    const fwd = (m: string, extra: string[]) => {
      const out = path.join(tmp, `fq-${fs.readdirSync(tmp).length}.json`);
      const f = spawnSync(ENGINE, ['forward', '--model', m, '--tokens', tokens, '--out', out, ...extra], { encoding: 'utf8' });
      expect(f.status, f.stderr).toBe(0);
      return fs.readFileSync(out, 'utf8');
    };
    expect(fwd(q, [])).toBe(fwd(model, ['--quantization', 'nf4']));
    const wrong = spawnSync(ENGINE, ['forward', '--model', q, '--tokens', tokens, '--out', path.join(tmp, 'x.json'), '--quantization', 'fp4'], { encoding: 'utf8' });
    expect(wrong.status).not.toBe(0);
    expect(wrong.stderr).toMatch(/BAD_INPUT.*already quantized as nf4/);
    // and it trains (a QLoRA run on the stored 4-bit weights)
    const out = path.join(tmp, 'out-stored');
    const t = await runCli([
      'train', '--model_name_or_path', q, '--quantization', 'nf4', '--train_file', path.join(DATA, 'dev.json'),
      '--prompt_column', 'input', '--response_column', 'target', '--output_dir', out, '--max_source_length', '32',
      '--max_target_length', '8', '--per_device_train_batch_size', '2', '--max_steps', '4', '--logging_steps', '1',
      '--save_steps', '100', '--learning_rate', '5e-3', '--lora_config', path.join(ROOT, 'configs', 'lora_config_llama.json'),
      '--device', 'cpu', '--json',
    ], { home: path.join(tmp, 'home-stored'), timeoutMs: 120_000, env: { ...process.env, LLMS_TRAIN_NATIVE_DIR: NATIVE } });
    expect(t.code, t.stderr + t.stdout).toBe(0);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
  }, 120_000);

  it('llms-train train --quantization nf4 trains a tiny model into a PEFT adapter', async () => {
    const home = path.join(tmp, 'home');
    const out = path.join(tmp, 'out');
    const r = await runCli([
      'train', '--model_name_or_path', model, '--quantization', 'nf4', '--train_file', path.join(DATA, 'dev.json'),
      '--prompt_column', 'input', '--response_column', 'target', '--output_dir', out, '--max_source_length', '64',
      '--max_target_length', '16', '--per_device_train_batch_size', '4', '--max_steps', '6', '--logging_steps', '2',
      '--save_steps', '100', '--learning_rate', '5e-3', '--lora_config', path.join(ROOT, 'configs', 'lora_config_llama.json'),
      '--device', 'cpu', '--json',
    ], { home, timeoutMs: 120_000, env: { ...process.env, LLMS_TRAIN_NATIVE_DIR: NATIVE } });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) expect(fs.existsSync(path.join(out, f))).toBe(true);
    const job = JSON.parse(fs.readFileSync(path.join(out, 'job.json'), 'utf8'));
    expect(job).toMatchObject({ method: 'lora', quantization: 'nf4' });
    expect(r.stdout).toMatch(/"quantization":"nf4"/);
    const store = Store.open(path.join(home, 'llms-train.db'));
    const run = store.runs.list()[0]!;
    expect((run.spec as { model: { quantization: string } }).model.quantization).toBe('nf4');
    const loss = store.metrics.series(run.id, 'loss').map((p) => p.value);
    store.close();
    expect(loss.length).toBe(3);
    expect(loss[2]!).toBeLessThan(loss[0]!);
    // --use_lora False with quantization is refused before anything runs
    const bad = await runCli(['train', '--model_name_or_path', model, '--quantization', 'nf4', '--use_lora', 'False', '--train_file',
      path.join(DATA, 'dev.json'), '--output_dir', path.join(tmp, 'bad')], { home });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr + bad.stdout).toMatch(/quantization/);
  }, 180_000);

  // A QLoRA adapter was trained against the 4-bit base: answering on that base gives the numbers it was trained with
  // and fits the GPU it was trained on. Chat, predict and eval load it so by default ("auto": the run's job.json).
  it('a QLoRA adapter answers on the 4-bit base it was trained with (auto from its run), or as asked', async () => {
    const out = path.join(tmp, 'out'); // the QLoRA run above
    const home = path.join(tmp, 'home');
    const env = { ...process.env, LLMS_TRAIN_NATIVE_DIR: NATIVE };
    const predict = async (q: string | null) => {
      const file = path.join(tmp, `pred-${q ?? 'default'}.jsonl`);
      const r = await runCli(['predict', '--model', model, '--adapter', out, '--data', path.join(DATA, 'dev.json'), '--out', file,
        '--limit', '3', '--max_new_tokens', '4', '--greedy', '--max_source_length', '64', '--json', ...(q ? ['--quantization', q] : [])], { home, env, timeoutMs: 120_000 });
      expect(r.code, r.stderr + r.stdout).toBe(0);
      return { report: JSON.parse(r.stdout) as { quantization: string; written: number }, text: fs.readFileSync(file, 'utf8') };
    };
    const auto = await predict(null);
    expect(auto.report).toMatchObject({ quantization: 'nf4', written: 3 });
    const nf4 = await predict('nf4');
    expect(nf4.text).toBe(auto.text);
    expect((await predict('none')).report.quantization).toBe('none');
    const line = await runCli(['predict', '--model', model, '--adapter', out, '--data', path.join(DATA, 'dev.json'), '--out', path.join(tmp, 'pred-line.jsonl'),
      '--limit', '1', '--max_new_tokens', '2', '--greedy'], { home, env, timeoutMs: 120_000 });
    expect(line.stdout).toMatch(/on cpu \(fp32, nf4 base weights;/);
    const badQ = await runCli(['predict', '--model', model, '--data', path.join(DATA, 'dev.json'), '--out', path.join(tmp, 'x.jsonl'), '--quantization', 'int8'], { home, env });
    expect(badQ.code).not.toBe(0);
    expect(badQ.stderr).toMatch(/--quantization.*int8.*(auto, none, nf4, fp4|Allowed choices)/s);

    // exactly the 4-bit model: quantized on load = the folder `llmt-engine quantize` writes (loaded as stored), with the
    // adapter — the same greedy answer and evaluation loss bit for bit, and not the fp32 base's loss
    const q4 = path.join(tmp, 'q4-infer');
    expect(spawnSync(ENGINE, ['quantize', '--model', model, '--out', q4, '--type', 'nf4']).status).toBe(0);
    const tok = path.join(tmp, 'dev.tok');
    const prep = await runCli(['data', 'prepare', '--model', model, '--data', path.join(DATA, 'dev.json'), '--out', tok, '--max_source_length', '32', '--max_target_length', '8'], { home, env });
    expect(prep.code, prep.stderr).toBe(0);
    const addon = loadEngine().addon!;
    const onLoad = await addon.loadModel(model, out, { quantization: 'nf4' });
    const stored = await addon.loadModel(q4, out);
    const full = await addon.loadModel(model, out);
    try {
      expect(onLoad.info().quantization).toBe('nf4');
      expect(stored.info().quantization).toBe('nf4');
      expect(full.info().quantization).toBe('none');
      const prompt = [5, 9, 11, 30, 7];
      const ids = (m: typeof onLoad) => m.generate(prompt, { max_new_tokens: 8, do_sample: false }).then((r) => r.ids);
      expect(await ids(onLoad)).toEqual(await ids(stored));
      const [a, b, c] = [await onLoad.evalLoss(tok), await stored.evalLoss(tok), await full.evalLoss(tok)];
      expect(a.loss).toBe(b.loss);
      expect(a.loss).not.toBe(c.loss);
      // the engine's CLI the same way (`llmt-engine eval --quantization`), and `llms-train eval` follows the run (auto)
      const cli = spawnSync(ENGINE, ['eval', '--model', model, '--adapter', out, '--data', tok, '--quantization', 'nf4', '--json'], { encoding: 'utf8' });
      expect(cli.status, cli.stderr).toBe(0);
      expect((JSON.parse(cli.stdout) as { loss: number }).loss).toBe(a.loss);
      const evalCli = async (q: string[]) => {
        const r = await runCli(['eval', '--model', model, '--adapter', out, '--data', path.join(DATA, 'dev.json'), '--max_source_length', '32', '--max_target_length', '8', '--limit', '8', '--json', ...q], { home, env, timeoutMs: 120_000 });
        expect(r.code, r.stderr + r.stdout).toBe(0);
        return (JSON.parse(r.stdout) as { loss: number }).loss;
      };
      const autoLoss = await evalCli([]);
      expect(autoLoss).toBe(await evalCli(['--quantization', 'nf4']));
      expect(autoLoss).not.toBe(await evalCli(['--quantization', 'none']));
      // the job's object form (no double quantization) is accepted as JSON text; unknown kinds are refused by name
      const single = await addon.loadModel(model, out, { quantization: JSON.stringify({ type: 'nf4', double_quant: false }) });
      expect(single.info().quantization).toBe('nf4');
      expect((await single.evalLoss(tok)).loss).not.toBe(a.loss);
      single.free();
      await expect(addon.loadModel(model, out, { quantization: 'int8' })).rejects.toThrow(/quantization must be "nf4", "fp4" or "none"/);
    } finally {
      for (const m of [onLoad, stored, full]) m.free();
    }
  }, 300_000);
});
