// Generation on the tiny demo model, through the built engine host: streaming and stopping, a crash of the
// engine process (the caller gets ENGINE_CRASHED, the next request restarts it and says so), `predict` on the
// sample test split (PromptCBLUE format, resumable, bad records named by line), the eval loss against the
// training job's own eval_loss, checkpoint evaluations stored and the best marked, `eval` and `chat` in the CLI.
import { fork, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { conversation } from '../../src-main/core/chat/service';
import { prepareDataset } from '../../src-main/core/data/prepare';
import { encodeSample } from '../../src-main/core/data/templates';
import { loadTokenizer } from '../../src-main/core/data/tokenizer/index';
import { EngineHost, type RestartInfo, type UtilityProcessModule, electronLauncher } from '../../src-main/core/engine/host';
import { loadEngine } from '../../src-main/core/engine/native';
import { evalLoss } from '../../src-main/core/eval/loss';
import { PredictError, predict } from '../../src-main/core/eval/predict';
import { evaluateAllCheckpoints, listEvals } from '../../src-main/core/eval/service';
import { ensureDemoModel } from '../../src-main/core/runs/demo';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { Store } from '../../src-main/core/store/store';
import { CLI, ROOT, runCli, tempHome } from '../helpers/app';
import { ENGINE } from '../helpers/native';

const DATA = path.join(ROOT, 'resources', 'datasets', 'promptcblue-demo');
let home: string;
let model: string;
let outDir: string;
let dev: string;
let trainedEvalLoss: Map<number, number>;
let host: EngineHost;

const readJsonl = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);

beforeAll(async () => {
  home = tempHome('llmt-gen-');
  model = ensureDemoModel(home);
  // a short LoRA run with two checkpoints and the engine's own eval loss at each
  const tok = await loadTokenizer(model);
  dev = path.join(home, 'dev-24.jsonl');
  fs.writeFileSync(dev, fs.readFileSync(path.join(DATA, 'dev.json'), 'utf8').split('\n').filter((l) => l.trim()).slice(0, 24).join('\n') + '\n');
  await prepareDataset({ dataFile: path.join(DATA, 'train.json'), out: path.join(home, 'train.tok'), tokenizer: tok, maxSourceLength: 128, maxTargetLength: 32 });
  await prepareDataset({ dataFile: dev, out: path.join(home, 'dev.tok'), tokenizer: tok, maxSourceLength: 128, maxTargetLength: 32 });
  tok.dispose();
  outDir = path.join(home, 'run');
  const job = {
    model,
    method: 'lora',
    lora: { r: 4, alpha: 8, dropout: 0, target_modules: ['q_proj', 'v_proj'] },
    data: { train: path.join(home, 'train.tok'), eval: path.join(home, 'dev.tok') },
    training: { learning_rate: 5e-3, max_steps: 4, micro_batch_size: 8, eval_batch_size: 8, seed: 1 },
    output: { dir: outDir, logging_steps: 2, save_steps: 2, eval_steps: 2 },
  };
  fs.writeFileSync(path.join(home, 'job.json'), JSON.stringify(job));
  const r = spawnSync(ENGINE, ['train', '--job', path.join(home, 'job.json')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`training failed: ${r.stderr}`);
  trainedEvalLoss = new Map(
    r.stdout
      .split('\n')
      .filter((l) => l.includes('"eval"'))
      .map((l) => JSON.parse(l) as { step: number; eval_loss: number })
      .map((e) => [e.step, e.eval_loss]),
  );
  host = new EngineHost();
});

afterAll(async () => {
  await host?.dispose();
});

describe('engine host', () => {
  it('streams an answer in deltas that add up to the text', async () => {
    let streamed = '';
    let deltas = 0;
    const r = await host.generate({ model, prompt: '判断下面临床试验筛选标准的类别：\n筛选前12周内接受过替格瑞洛治疗\n答：', params: { max_new_tokens: 24 } }, (d) => {
      streamed += d;
      deltas++;
    });
    expect(r.finish).toBe('length');
    expect(r.ids).toHaveLength(24);
    expect(deltas).toBeGreaterThan(1);
    expect(streamed).toBe(r.text);
    expect(r.promptTokens).toBeGreaterThan(10);
    expect(r.restarted).toBeNull();
    expect(host.status()).toMatchObject({ running: true, kind: 'node', starts: 1 });
  });

  it('stop() ends the answer early with what was generated', async () => {
    // the tiny model writes 400 tokens in a few ms, so on a loaded machine the stop can arrive after the last one
    // (finish "length"): that race is retried; a stop that never takes effect still fails
    let r = await host.generate({ model, prompt: '你好', params: { max_new_tokens: 400 } }, () => host.stop());
    for (let i = 0; i < 4 && r.finish === 'length'; i++) r = await host.generate({ model, prompt: '你好', params: { max_new_tokens: 400 } }, () => host.stop());
    expect(r.finish).toBe('aborted');
    expect(r.ids.length).toBeLessThan(400);
  });

  it('a killed engine process fails the request clearly; the next request restarts it and says so', async () => {
    const pid = (await host.pid())!;
    const restarts: RestartInfo[] = [];
    host.on('restart', (i: RestartInfo) => restarts.push(i));
    const kill = () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    };
    const dying = host.generate({ model, prompt: '你好', params: { max_new_tokens: 400 } }, kill);
    await expect(dying).rejects.toMatchObject({ code: 'ENGINE_CRASHED', message: expect.stringMatching(/signal SIGKILL.*restarts on the next request/) });
    expect(host.status()).toMatchObject({ running: false, lastExit: { signal: 'SIGKILL', failedRequests: 1 } });
    const again = await host.generate({ model, prompt: '你好', params: { max_new_tokens: 4 } });
    expect(again.ids).toHaveLength(4);
    expect(again.restarted).toMatchObject({ signal: 'SIGKILL' });
    expect(restarts).toEqual([expect.objectContaining({ reason: expect.objectContaining({ signal: 'SIGKILL' }) })]);
    expect((await host.pid())!).not.toBe(pid);
    const next = await host.generate({ model, prompt: '你好', params: { max_new_tokens: 2 } });
    expect(next.restarted).toBeNull();
  });

  it('reports a model that cannot load with the engine code, and keeps serving', async () => {
    await expect(host.generate({ model: path.join(home, 'missing'), prompt: 'x' })).rejects.toMatchObject({ code: expect.any(String), message: expect.stringMatching(/missing/) });
    expect((await host.generate({ model, prompt: 'x', params: { max_new_tokens: 1 } })).ids).toHaveLength(1);
  });
  it("drives Electron's utilityProcess API the same way (faked over a Node child: no Electron binary here)", async () => {
    const fake: UtilityProcessModule = {
      fork(entry, args, opts) {
        const c = fork(entry, args ?? [], { env: opts?.env, execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        const child = {
          get pid() {
            return c.pid;
          },
          postMessage: (m: unknown) => void c.send(m as object),
          on: (ev: string, fn: (x: unknown) => void) => {
            // utilityProcess reports an exit code only (a signal becomes a code)
            c.on(ev, ev === 'exit' ? (code: number | null) => fn(code ?? 1) : fn);
            return child;
          },
          kill: () => c.kill('SIGKILL'),
        };
        return child as ReturnType<UtilityProcessModule['fork']>;
      },
    };
    const h = new EngineHost({ launcher: electronLauncher(fake) });
    try {
      expect(h.status().kind).toBe('electron');
      expect((await h.generate({ model, prompt: '你好', params: { max_new_tokens: 3 } })).ids).toHaveLength(3);
      const pid = (await h.pid())!;
      process.kill(pid, 'SIGKILL');
      await new Promise<void>((res) => h.once('exit', () => res()));
      expect(h.status().lastExit).toMatchObject({ code: 1, signal: null });
      const again = await h.generate({ model, prompt: '你好', params: { max_new_tokens: 2 } });
      expect(again.restarted).toMatchObject({ code: 1 });
    } finally {
      await h.dispose();
    }
  });
});

describe('predict', () => {
  it('writes the sample test split in PromptCBLUE format: each record with target replaced', async () => {
    const out = path.join(home, 'pred', 'test.jsonl');
    const r = await runCli(['predict', '--model', model, '--adapter', path.join(outDir, 'checkpoint-4'), '--data', path.join(DATA, 'test.json'), '--out', out, '--max_new_tokens', '3', '--max_source_length', '128'], { home, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote 150 prediction\(s\) to .*test\.jsonl/);
    expect(r.stderr).toMatch(/predict: 150\/150 \(100%\)/); // plain progress lines when not a terminal
    const gold = readJsonl(path.join(DATA, 'test.json'));
    const pred = readJsonl(out);
    expect(pred).toHaveLength(150);
    pred.forEach((p, i) => {
      expect(Object.keys(p)).toEqual(Object.keys(gold[i]!));
      expect({ ...p, target: null }).toEqual({ ...gold[i], target: null });
      expect(typeof p.target).toBe('string');
    });
    expect(fs.existsSync(`${out}.partial`)).toBe(false);
    // and the metrics of that file
    const e = await runCli(['eval', '--pred', out, '--gold', path.join(DATA, 'test.json'), '--json'], { home });
    expect(e.code, e.stderr).toBe(0);
    const m = JSON.parse(e.stdout);
    expect(m.overall.count).toBe(150);
    expect(m.byType.map((g: { type: string }) => g.type)).toEqual(['cls', 'gen']);
    expect(m.overall.classification.count + m.overall.generation.count).toBe(150);
    const t = await runCli(['eval', '--pred', out, '--gold', path.join(DATA, 'test.json')], { home });
    expect(t.stdout).toMatch(/classification \(%\)[\s\S]*\n\(all\)\s+\d+/);
  });

  it('batched predict writes exactly what one record at a time writes', async () => {
    const base = { model, data: path.join(DATA, 'test.json'), limit: 10, maxSourceLength: 128, host };
    for (const params of [{ max_new_tokens: 12 }, { max_new_tokens: 10, temperature: 0.9, top_k: 0, top_p: 0.95, seed: 7 }]) {
      const one = path.join(home, 'pred', 'batch-1.jsonl');
      const many = path.join(home, 'pred', 'batch-4.jsonl');
      await predict({ ...base, params, out: one, batchSize: 1, resume: false });
      const r = await predict({ ...base, params, out: many, batchSize: 4, resume: false });
      expect(r.written).toBe(10);
      expect(fs.readFileSync(many, 'utf8')).toBe(fs.readFileSync(one, 'utf8'));
    }
  });

  it('the addon generateBatch gives each prompt what generate gives it alone', async () => {
    const m = await loadEngine().addon!.loadModel(model);
    try {
      const prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19]];
      const params = { max_new_tokens: 6, temperature: 1, top_k: 0, top_p: 0.9, stop_ids: [] };
      const rows = new Map<number, number[]>();
      const b = await m.generateBatch(prompts, { ...params, seeds: [1, 2, 3] }, ({ row, token }) => rows.set(row, [...(rows.get(row) ?? []), token]));
      expect(b.aborted).toBe(false);
      for (const [k, p] of prompts.entries()) {
        const one = await m.generate(p, { ...params, seed: k + 1 });
        expect(b.ids[k]).toEqual(one.ids);
        expect(rows.get(k)).toEqual(one.ids);
      }
      expect(() => m.generateBatch([[1], 'x' as unknown as number[]])).toThrow(/prompts\[1\] must be an array/);
    } finally {
      m.free();
    }
  });

  it('resumes an interrupted run from its partial file, to the same result', async () => {
    const base = { model, data: path.join(DATA, 'test.json'), limit: 6, maxSourceLength: 128, params: { max_new_tokens: 3 }, host, batchSize: 2 };
    const whole = path.join(home, 'pred', 'whole.jsonl');
    await predict({ ...base, out: whole });
    const out = path.join(home, 'pred', 'resumed.jsonl');
    const ctl = new AbortController();
    const err = await predict({ ...base, out, signal: ctl.signal, onProgress: (p) => p.done === 3 && ctl.abort() }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PredictError);
    expect((err as PredictError).message).toMatch(/stopped: 3 of 6 predictions are kept in .*resumed\.jsonl\.partial; run the same command again to resume/);
    expect(fs.existsSync(out)).toBe(false);
    expect(readJsonl(`${out}.partial`)).toHaveLength(3);
    const r = await predict({ ...base, out });
    expect(r).toMatchObject({ resumed: 3, written: 6 });
    expect(fs.readFileSync(out, 'utf8')).toBe(fs.readFileSync(whole, 'utf8'));
    // other settings: start over
    const r2 = await predict({ ...base, out, params: { max_new_tokens: 2 } });
    expect(r2.resumed).toBe(0);
    // ...unless asked to keep an interrupted run's answers (the CLI): a partial of other settings is refused, kept whole
    const out3 = path.join(home, 'pred', 'kept.jsonl');
    const ctl3 = new AbortController();
    await predict({ ...base, out: out3, signal: ctl3.signal, onProgress: (p) => p.done === 3 && ctl3.abort() }).catch(() => {});
    const kept = fs.readFileSync(`${out3}.partial`, 'utf8');
    const refused = await predict({ ...base, out: out3, params: { max_new_tokens: 2 }, stalePartial: 'refuse' }).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'BAD_INPUT', message: expect.stringMatching(/kept\.jsonl\.partial holds 3 answer\(s\) of an interrupted run made with other data or settings; it is kept/), hint: expect.stringMatching(/--no-resume/) });
    expect(fs.readFileSync(`${out3}.partial`, 'utf8')).toBe(kept);
    // the base in another precision is other settings too: its answers are not mixed into the file
    const bf16 = new EngineHost({ placement: { device: 'cpu', precision: 'bf16' } });
    try {
      await expect(predict({ ...base, host: bf16, out: out3, stalePartial: 'refuse' })).rejects.toMatchObject({ code: 'BAD_INPUT' });
    } finally {
      await bf16.dispose();
    }
    expect(fs.readFileSync(`${out3}.partial`, 'utf8')).toBe(kept);
    // the same settings resume it; resume: false (--no-resume) replaces it
    expect((await predict({ ...base, out: out3, stalePartial: 'refuse' })).resumed).toBe(3);
    expect(fs.readFileSync(out3, 'utf8')).toBe(fs.readFileSync(whole, 'utf8'));
  });

  it.runIf(fs.existsSync('/dev/full'))('a full disk is one IO error naming the file, with a hint, and leaves no empty partial files', async () => {
    const dir = path.join(home, 'pred-full');
    fs.mkdirSync(dir, { recursive: true });
    const out = path.join(dir, 'full.jsonl');
    fs.symlinkSync('/dev/full', `${out}.partial`); // every write of a prediction fails with ENOSPC
    const err = await predict({ model, data: path.join(DATA, 'test.json'), limit: 2, maxSourceLength: 128, params: { max_new_tokens: 2 }, host, out, resume: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PredictError);
    expect(err).toMatchObject({ code: 'IO', message: `cannot write ${out}.partial: no space left on the device (ENOSPC)` });
    expect((err as PredictError).hint).toMatch(/Free some space .*, or choose another --out/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('names every bad record by line before generating anything; --on-error skip leaves them out', async () => {
    const bad = path.join(home, 'bad.jsonl');
    const good = fs.readFileSync(path.join(DATA, 'test.json'), 'utf8').split('\n')[0];
    fs.writeFileSync(bad, `${good}\n{"input": \n{"target": "x", "type": "gen"}\n${good}\n`);
    const out = path.join(home, 'pred', 'bad.jsonl');
    const err = (await predict({ model, data: bad, out, host }).catch((e: unknown) => e)) as PredictError;
    expect(err.code).toBe('BAD_INPUT');
    expect(err.message).toMatch(/2 bad record\(s\)[\s\S]*bad\.jsonl:2: invalid JSON[\s\S]*bad\.jsonl:3: "input" must be a string \(missing\)/);
    expect(fs.existsSync(`${out}.partial`)).toBe(false);
    const r = await runCli(['predict', '--model', model, '--data', bad, '--out', out, '--on-error', 'skip', '--max_new_tokens', '2'], { home });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/skipped 2 bad record\(s\): line 2: invalid JSON.*; line 3/);
    expect(readJsonl(out)).toHaveLength(2);
    const cli = await runCli(['predict', '--model', model, '--data', bad, '--out', out], { home });
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/bad\.jsonl:2: invalid JSON/);
    expect(cli.stderr).toMatch(/hint: .*--on-error skip/);
  });
});

describe('evaluation', () => {
  it("the eval loss equals the training job's eval_loss on the same data, bit for bit", async () => {
    const addon = loadEngine().addon!;
    for (const step of [2, 4]) {
      const adapter = path.join(outDir, `checkpoint-${step}`);
      let progress = 0;
      // the job's eval_batch_size (8): the same batches, the same sums
      const r = await evalLoss({ model, adapter, data: dev, maxSourceLength: 128, maxTargetLength: 32, batchSize: 8, onProgress: (d) => (progress = d) });
      expect(r.samples).toBe(24);
      expect(progress).toBe(24);
      expect(r.loss).toBe(trainedEvalLoss.get(step)!);
      expect(r.perplexity).toBeCloseTo(Math.exp(r.loss), 12);
      // the addon's evalLoss on the job's own eval file
      const m = await addon.loadModel(model, adapter);
      try {
        const a = await m.evalLoss(path.join(home, 'dev.tok'), { batchSize: 8 });
        expect(a).toEqual({ loss: trainedEvalLoss.get(step)!, tokens: r.tokens, samples: 24, perplexity: r.perplexity });
      } finally {
        m.free();
      }
    }
    // another batch size: the same token mean up to rounding; --limit: the first records only
    const r4 = await evalLoss({ model, adapter: path.join(outDir, 'checkpoint-2'), data: dev, maxSourceLength: 128, maxTargetLength: 32 });
    expect(r4.loss).toBeCloseTo(trainedEvalLoss.get(2)!, 5);
    const r5 = await evalLoss({ model, data: dev, maxSourceLength: 128, maxTargetLength: 32, limit: 5 });
    expect(r5.samples).toBe(5);
  });

  it('the addon evalLoss is abortable and checks its arguments', async () => {
    const m = await loadEngine().addon!.loadModel(model);
    try {
      expect(() => m.evalLoss(path.join(home, 'dev.tok'), { batchSize: 0 })).toThrow(/batchSize must be a positive integer/);
      const p = m.evalLoss(path.join(home, 'dev.tok'), { batchSize: 1 }, () => m.abort());
      await expect(p).rejects.toMatchObject({ code: 'ABORTED' });
      await expect(m.evalLoss(path.join(home, 'missing.tok'))).rejects.toMatchObject({ code: 'IO' });
    } finally {
      m.free();
    }
  });

  it('evaluates every checkpoint of a run, stores the results and marks the lowest eval loss', async () => {
    const store = Store.open(path.join(home, 'llms-train.db'));
    try {
      const spec = parseRunSpec({ model: { path: model }, data: { train: path.join(DATA, 'train.json'), max_source_length: 128, max_target_length: 32 }, output: { dir: outDir } });
      const run = store.runs.create({ name: 'lora', spec, specVersion: 1, outputDir: outDir });
      for (const s of [2, 4]) store.checkpoints.add({ runId: run.id, step: s, path: path.join(outDir, `checkpoint-${s}`) });
      const r = await evaluateAllCheckpoints(store, { runId: run.id, data: dev, limit: 4, host });
      expect(r.evals.map((e) => e.step)).toEqual([2, 4]);
      for (const e of r.evals) {
        expect(e.loss).toMatchObject({ samples: 4, loss: expect.any(Number) }); // --limit: the first 4 records
        expect(e.loss!.perplexity).toBeCloseTo(Math.exp(e.loss!.loss), 10);
        expect(e.report!.overall.count).toBe(4);
        expect(e.params).toMatchObject({ max_new_tokens: 32 });
        expect(fs.existsSync(e.predictions!)).toBe(true);
      }
      const bestStep = [...r.evals].sort((a, b) => a.loss!.loss - b.loss!.loss)[0]!.step!;
      expect(r.best).toMatchObject({ metric: 'eval_loss', checkpoint: path.join(outDir, `checkpoint-${bestStep}`) });
      const stored = listEvals(store, { runId: run.id });
      expect(stored.map((e) => [e.step, e.best ? e.best.metric : false])).toEqual([
        [2, bestStep === 2 ? 'eval_loss' : false],
        [4, bestStep === 4 ? 'eval_loss' : false],
      ]);
      expect(stored.every((e) => e.checkpointId !== null)).toBe(true);
      // the same through the CLI, on the app's database of that home
      const c = await runCli(['eval', '--run', String(run.id), '--checkpoint', path.join(outDir, 'checkpoint-2'), '--data', dev, '--limit', '3', '--no-loss', '--max_new_tokens', '2', '--json'], { home, timeoutMs: 60_000 });
      expect(c.code, c.stderr).toBe(0);
      expect(JSON.parse(c.stdout)).toMatchObject({ step: 2, loss: null, report: { overall: { count: 3 } } });
      expect(listEvals(store, { runId: run.id })).toHaveLength(3);
    } finally {
      store.close();
    }
  });

  it('eval --model prints the loss and perplexity', async () => {
    const r = await runCli(['eval', '--model', model, '--adapter', path.join(outDir, 'checkpoint-4'), '--data', dev, '--max_source_length', '128', '--max_target_length', '32'], { home });
    expect(r.code, r.stderr).toBe(0);
    const m = /eval loss ([\d.]+)\s+perplexity ([\d.]+)\s+\((\d+) tokens, 24 samples\)/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    expect(Number(m![1])).toBeCloseTo(trainedEvalLoss.get(4)!, 4);
  });
});

describe('llms-train chat', () => {
  it('answers lines from stdin with the conversation so far; /reset starts over; --save keeps the sessions', async () => {
    const proc = spawn(process.execPath, [CLI, 'chat', '--model', model, '--adapter', path.join(outDir, 'checkpoint-4'), '--system', '你是医生', '--save', '--max_new_tokens', '5'], {
      env: { ...process.env, LLMS_TRAIN_HOME: home },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    proc.stdin.end('你好\n有高血压吗？\n/reset\n谢谢\n/exit\n');
    const code = await new Promise<number | null>((res) => proc.once('exit', res));
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(/^chat with .* \(template raw, session #\d+\)/);
    expect(stdout).toMatch(/\(conversation reset: session #\d+\)/);
    const store = Store.open(path.join(home, 'llms-train.db'));
    try {
      const sessions = store.chat.listSessions().filter((s) => s.title !== 'New chat' || s.messageCount > 0);
      const byId = sessions.sort((a, b) => a.id - b.id).slice(-2);
      expect(byId.map((s) => store.chat.messages(s.id).map((m) => [m.role, m.role === 'user' ? m.content : typeof m.content]))).toEqual([
        [
          ['user', '你好'],
          ['assistant', 'string'],
          ['user', '有高血压吗？'],
          ['assistant', 'string'],
        ],
        [
          ['user', '谢谢'],
          ['assistant', 'string'],
        ],
      ]);
      expect(byId[0]).toMatchObject({ systemPrompt: '你是医生', title: '你好' });
      const meta = store.chat.messages(byId[0]!.id)[1]!.meta as { tokens: number; finish: string };
      expect(meta.tokens).toBeLessThanOrEqual(5);
      // the second answer saw the first exchange: its prompt is longer than the first one's
      const metas = store.chat.messages(byId[0]!.id).filter((m) => m.role === 'assistant').map((m) => (m.meta as { promptTokens: number }).promptTokens);
      expect(metas[1]!).toBeGreaterThan(metas[0]!);
      // and it is exactly the trained layout of the conversation so far (the first answer closed by eos, the system
      // prompt opening the first round): as many ids as a ShareGPT sample of it has before its next answer
      const tok = await loadTokenizer(model);
      try {
        const msgs = store.chat.messages(byId[0]!.id);
        msgs.forEach((m, i) => {
          if (m.role !== 'assistant') return;
          const turns = conversation('你是医生', msgs.slice(0, i));
          const e = encodeSample({ kind: 'chat', turns: [...turns, { role: 'assistant', content: 'x' }], multiTurn: true }, 'raw', tok, { maxSourceLength: 4096, maxTargetLength: 1024 });
          const lastAnswer = e.mask.findLastIndex((t, j) => t && !e.mask[j - 1]);
          expect((m.meta as { promptTokens: number }).promptTokens).toBe(lastAnswer + 1); // + the trained bos
        });
      } finally {
        tok.dispose();
      }
    } finally {
      store.close();
    }
  });
});
