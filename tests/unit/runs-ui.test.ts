// The pieces behind the wizard and the compare view: the RunSpec ↔ CLI round trip, the config diff, the
// dataset preview, and the store's run bookkeeping (tags, resume in place, deletion, summaries).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { specDiff } from '../../src-main/core/core';
import { previewDataset } from '../../src-main/core/data/preview';
import { CATALOG, familyOf, loraPresets, scanModelDirs } from '../../src-main/core/models/catalog';
import { cliArgs, cliCommand, shellQuote } from '../../src-main/core/runs/cli-command';
import { parseRunSpec, toEngineJob } from '../../src-main/core/runs/runspec';
import { Store } from '../../src-main/core/store/store';
import { flags } from '../helpers/cli-flags';

const tmps: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-ui-'));
  tmps.push(d);
  return d;
};
afterEach(() => {
  for (const d of tmps.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});


describe('RunSpec → CLI command', () => {
  it('round-trips a LoRA spec with every knob changed', () => {
    const spec = parseRunSpec({
      name: "lr sweep 'a'",
      model: { path: '/models/chatglm2-6b' },
      lora: { r: 16, alpha: 64, dropout: 0.1, target_modules: ['query_key_value', 'dense'], modules_to_save: ['output_layer'] },
      data: { train: '/data/my train.json', validation: '/data/dev.json', template: 'chatglm2', prompt_column: 'q', response_column: 'a', max_source_length: 256, max_target_length: 48, format: 'columns' },
      training: { learning_rate: 3e-4, lr_scheduler: 'cosine', warmup_steps: 20, max_steps: 1000, micro_batch_size: 2, eval_batch_size: 8, gradient_accumulation_steps: 16, max_grad_norm: 0.5, weight_decay: 0.01, seed: 7, gradient_checkpointing: true },
      output: { dir: '/runs/x', logging_steps: 5, save_steps: 300, eval_steps: 100, overwrite: true },
    });
    const back = specFromFlags(flags(cliArgs(spec))).spec;
    expect(back).toEqual(spec);
    const cmd = cliCommand(spec);
    expect(cmd.split('\n')[0]).toBe("llms-train train \\");
    expect(cmd).toContain("--train_file '/data/my train.json'");
    expect(cmd).toContain("--run_name 'lr sweep '\\''a'\\'''");
    expect(cmd).toContain('--lora_target_modules query_key_value,dense');
  });

  it('round-trips full fine-tuning and writes only what differs from the defaults', () => {
    const spec = parseRunSpec({ model: { path: '/m' }, method: 'full', data: { train: '/t.json' }, output: { dir: '/o' } });
    const args = cliArgs(spec);
    expect(args).toEqual(['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o', '--use_lora', 'False']);
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
  });

  it('round-trips one GPU with mixed precision, and refuses a malformed --device', () => {
    const spec = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, devices: { kind: 'cuda', ids: [1] }, training: { precision: 'bf16' } });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--device', 'cuda:1', '--bf16']));
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    expect(specFromFlags(flags(['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o', '--device', 'cuda'])).spec.devices).toEqual({ kind: 'cuda', ids: [] });
    for (const bad of ['cuda:x', 'cpu:0', 'tpu', 'cuda:0,', 'cuda:,1', 'cpu:0,1', 'cuda:0;1']) {
      expect(() => specFromFlags(flags(['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o', '--device', bad]))).toThrow(/use cpu, cuda or cuda:N/);
    }
    // one GPU: one worker (nproc_per_node left at 1; no distributed block in the job)
    expect(spec.distributed.nproc_per_node).toBe(1);
    expect(toEngineJob(spec, { train: '/t.tok', eval: null }, null)).not.toHaveProperty('distributed');
    // the engine job carries the device and the precision
    const job = toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { device: string; training: { precision: string } };
    expect(job.device).toBe('cuda:1');
    expect(job.training.precision).toBe('bf16');
  });

  it('round-trips --offload_optimizer; the job carries it and the GPU estimate leaves the AdamW moments off the GPU', async () => {
    const { estimateRun } = await import('../../src-main/core/runs/estimate');
    const base = { model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, devices: { kind: 'cuda' as const, ids: [0] } };
    const spec = parseRunSpec({ ...base, training: { offload_optimizer: true } });
    const args = cliArgs(spec);
    expect(args).toContain('--offload_optimizer');
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    const job = toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { training: Record<string, unknown> };
    expect(job.training.offload_optimizer).toBe(true);
    const plain = parseRunSpec(base);
    expect(cliArgs(plain)).not.toContain('--offload_optimizer');
    expect((toEngineJob(plain, { train: '/t.tok', eval: null }, null) as { training: Record<string, unknown> }).training).not.toHaveProperty('offload_optimizer');
    // a 7B LLaMA shape, LoRA r=16 on all seven projections: 40 M trainable parameters, 2 × 4 bytes of moments each
    const info = { supported: true, model_type: 'llama', hidden: 4096, intermediate: 11008, layers: 32, vocab: 32000, heads: 32, kv_heads: 32, parameters: 6_738_415_616, default_lora_targets: 'q_proj,v_proj' } as Parameters<typeof estimateRun>[0];
    const lora = { r: 16, alpha: 32, dropout: 0, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] };
    const on = estimateRun(info, parseRunSpec({ ...base, lora, training: { offload_optimizer: true } }), 1);
    const off = estimateRun(info, parseRunSpec({ ...base, lora }), 1);
    expect(on.trainableParams).toBe(39_976_960);
    expect(off.bytes.optimizer - on.bytes.optimizer).toBe(8 * on.trainableParams);
    // offload_checkpoints: needs checkpointing; round-trips; the block inputs ((L−1)·N·H floats: the last block's is not
    // kept) leave the GPU estimate
    expect(() => parseRunSpec({ ...base, training: { offload_checkpoints: true } })).toThrow(/training\.offload_checkpoints: .*needs gradient_checkpointing/);
    const ck = parseRunSpec({ ...base, lora, training: { gradient_checkpointing: true, offload_checkpoints: true } });
    expect(cliArgs(ck)).toEqual(expect.arrayContaining(['--gradient_checkpointing', '--offload_checkpoints']));
    expect(specFromFlags(flags(cliArgs(ck))).spec).toEqual(ck);
    expect((toEngineJob(ck, { train: '/t.tok', eval: null }, null) as { training: Record<string, unknown> }).training).toMatchObject({ gradient_checkpointing: true, offload_checkpoints: true });
    const ckOn = estimateRun(info, parseRunSpec({ ...base, lora, training: { gradient_checkpointing: true } }), 1);
    const T = ck.data.max_source_length + ck.data.max_target_length;
    expect(ckOn.bytes.activations - estimateRun(info, ck, 1).bytes.activations).toBe(31 * ck.training.micro_batch_size * T * 4096 * 4);
    // on the CPU it changes nothing (the state is host memory either way)
    const cpu = (o: boolean) => estimateRun(info, parseRunSpec({ ...base, devices: { kind: 'cpu', ids: [] }, lora, training: { offload_optimizer: o } }), 1).bytes.total;
    expect(cpu(true)).toBe(cpu(false));
    // bf16: the frozen linears, the embedding table and the untied head at 2 bytes; the table stays fp32 when trained
    const bf = (m: string[] = []) => estimateRun(info, parseRunSpec({ ...base, lora: { ...lora, modules_to_save: m }, training: { precision: 'bf16' } }), 1).bytes.weights;
    const linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008);
    const norms = info.parameters! - linear - 2 * 32000 * 4096; // 65 RMSNorm weights of 4096
    expect(norms).toBe(65 * 4096);
    expect(bf()).toBe(norms * 4 + (linear + 2 * 32000 * 4096) * 2);
    expect(bf(['embed_tokens']) - bf()).toBe(32000 * 4096 * 2);
  });

  it('round-trips several GPUs as --device cuda:0,1 (one worker per GPU, the count implied)', () => {
    const spec = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, devices: { kind: 'cuda', ids: [0, 1] }, distributed: { nproc_per_node: 2 }, training: { precision: 'bf16' } });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--device', 'cuda:0,1', '--bf16']));
    expect(args).not.toContain('--nproc_per_node');
    expect(cliCommand(spec)).toContain('--device cuda:0,1');
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    // GPU order is kept (worker r computes on the r-th listed GPU), and three GPUs mean three workers
    const three = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, devices: { kind: 'cuda', ids: [3, 1, 2] }, distributed: { nproc_per_node: 3 } });
    expect(cliArgs(three)).toEqual(expect.arrayContaining(['--device', 'cuda:3,1,2']));
    expect(specFromFlags(flags(cliArgs(three))).spec).toEqual(three);
  });

  it('--device cuda:0,1 sets one worker per GPU; a contradicting --nproc_per_node is refused', () => {
    const base = ['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o'];
    const two = specFromFlags(flags([...base, '--device', 'cuda:0,1'])).spec;
    expect(two.devices).toEqual({ kind: 'cuda', ids: [0, 1] });
    expect(two.distributed).toEqual({ nproc_per_node: 2, zero_stage: 0 });
    expect(specFromFlags(flags([...base, '--device', 'cuda:0,1', '--nproc_per_node', '2'])).spec).toEqual(two);
    expect(() => specFromFlags(flags([...base, '--device', 'cuda:0,1', '--nproc_per_node', '3']))).toThrow(/--nproc_per_node 3: .* must be 2/);
    // one GPU, several workers: refused by the spec with the field named
    expect(() => specFromFlags(flags([...base, '--device', 'cuda:0', '--nproc_per_node', '2']))).toThrow(/distributed\.nproc_per_node: one worker per GPU/);
    // ZeRO-1 over the GPUs' workers
    expect(specFromFlags(flags([...base, '--device', 'cuda:0,1', '--use_lora', 'False', '--zero_stage', '1'])).spec.distributed).toEqual({ nproc_per_node: 2, zero_stage: 1 });
    // CPU workers keep --nproc_per_node as given
    expect(specFromFlags(flags([...base, '--device', 'cpu', '--nproc_per_node', '3'])).spec.distributed.nproc_per_node).toBe(3);
  });

  it('quotes for a POSIX shell', () => {
    expect(shellQuote('/a/b-c_d.json')).toBe('/a/b-c_d.json');
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(shellQuote('$HOME')).toBe("'$HOME'");
  });
});

describe('config diff', () => {
  it('lists only the fields that differ, by dotted path', () => {
    const a = parseRunSpec({ model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o1' }, training: { learning_rate: 1e-4 } });
    const b = parseRunSpec({ model: { path: '/m' }, data: { train: '/t' }, output: { dir: '/o2' }, training: { learning_rate: 2e-4 }, lora: { target_modules: ['q_proj'] } });
    const d = specDiff([a, b]);
    expect(d.map((x) => x.path)).toEqual(['lora.target_modules', 'output.dir', 'training.learning_rate']);
    expect(d.find((x) => x.path === 'training.learning_rate')!.values).toEqual([1e-4, 2e-4]);
    expect(specDiff([a, a])).toEqual([]);
  });
});

describe('dataset preview', () => {
  it('detects the format, renders rows, and lists bad lines with their numbers', async () => {
    const f = path.join(tmp(), 'd.jsonl');
    fs.writeFileSync(f, ['{"input": "病人头痛", "target": "神经内科", "type": "cls"}', '{"input": "x"', '{"input": "发热", "target": "感染科", "type": "cls"}', '{"instruction": 1}'].join('\n'));
    const p = await previewDataset({ file: f, rows: 5 });
    expect(p.format).toBe('promptcblue');
    expect(p.records).toBe(4);
    expect(p.errorCount).toBe(2);
    expect(p.errors.map((e) => e.line)).toEqual([2, 4]);
    expect(p.rows).toHaveLength(2);
    expect(p.rows[0]!.segments).toEqual([
      { text: '病人头痛\n', trained: false },
      { text: '神经内科\n', trained: true },
    ]);
    expect(p.types).toEqual({ cls: 2 });
    expect(p.stats.unit).toBe('characters');
    expect(p.columns).toEqual(['input', 'target', 'type', 'instruction']);
  });

  it('says what is wrong with a file that is not a dataset', async () => {
    await expect(previewDataset({ file: path.join(tmp(), 'missing.json') })).rejects.toThrow(/does not exist/);
    const f = path.join(tmp(), 'odd.jsonl');
    fs.writeFileSync(f, '{"question": "a", "answer": "b"}\n');
    const p = await previewDataset({ file: f });
    expect(p.format).toBeNull();
    expect(p.formatHint).toMatch(/expected one of/);
    const q = await previewDataset({ file: f, columns: { promptColumn: 'question', responseColumn: 'answer' } });
    expect(q.format).toBe('columns');
    expect(q.rows[0]!.segments.map((s) => s.trained)).toEqual([false, true]);
  });
});

describe('catalog', () => {
  it("covers the seed's families and their LoRA presets", () => {
    const ids = CATALOG.flatMap((f) => f.models.map((m) => m.hfId));
    for (const id of ['ziqingyang/chinese-alpaca-plus-lora-7b', 'openlm-research/open_llama_13b', 'BelleGroup/BELLE-LLaMA-EXT-7B', 'THUDM/chatglm-6b', 'THUDM/chatglm2-6b', 'baichuan-inc/baichuan-7B', 'baichuan-inc/Baichuan-13B-Chat', 'TigerResearch/tigerbot-7b-base', 'EleutherAI/pythia-12b-deduped'])
      expect(ids).toContain(id);
    const presets = loraPresets(path.join(__dirname, '..', '..', 'configs'));
    for (const f of CATALOG) expect(presets.map((p) => path.basename(p.file))).toContain(f.loraConfig);
    expect(familyOf('chatglm', '/models/chatglm2-6b')!.id).toBe('chatglm2');
    expect(familyOf('chatglm', '/models/THUDM/chatglm-6b')!.id).toBe('chatglm');
    expect(familyOf('bloom', '/m/tigerbot-7b-sft')!.id).toBe('tigerbot');
    expect(familyOf('RefinedWebModel')!.id).toBe('falcon');
  });

  it('finds model folders under the configured directories (one and two levels deep)', () => {
    const root = tmp();
    for (const d of ['a', 'org/b', 'org/c/deep-too-far/x']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.writeFileSync(path.join(root, 'a', 'config.json'), '{"model_type": "llama"}');
    fs.writeFileSync(path.join(root, 'org', 'b', 'config.json'), '{"model_type": "bloom"}');
    fs.writeFileSync(path.join(root, 'org', 'c', 'deep-too-far', 'x', 'config.json'), '{}');
    const found = scanModelDirs([root, path.join(root, 'missing')]);
    expect(found.map((m) => [path.relative(root, m.path), m.modelType])).toEqual([
      ['a', 'llama'],
      ['org/b', 'bloom'],
    ]);
  });
});

describe('store: runs for the UI', () => {
  it('keeps tags and notes, summarises metrics, resumes in place and deletes with cascades', () => {
    const s = Store.open(path.join(tmp(), 'db.sqlite'));
    try {
      const r = s.runs.create({ name: 'a', spec: {}, specVersion: 1, tags: ['x', 'y'] });
      expect(s.runs.get(r.id)!.tags).toEqual(['x', 'y']);
      s.runs.update(r.id, { tags: ['y', 'z', 'z'], notes: 'n', name: 'b' });
      expect(s.runs.get(r.id)).toMatchObject({ tags: ['y', 'z'], notes: 'n', name: 'b' });
      const pts = [];
      for (let step = 1; step <= 10; step++) pts.push({ step, name: 'loss', value: 10 - step, time: step }, { step, name: 'tokens', value: step * 100, time: step });
      pts.push({ step: 5, name: 'eval_loss', value: 3, time: 5 }, { step: 10, name: 'eval_loss', value: 4, time: 10 });
      s.metrics.add(r.id, pts);
      expect(s.metrics.summaries([r.id]).get(r.id)).toEqual({ finalLoss: 0, bestEvalLoss: 3, bestEvalStep: 5, lastStep: 10, tokens: 1000 });
      const since = s.metrics.maxRowid();
      s.metrics.add(r.id, [{ step: 11, name: 'loss', value: 1, time: 11 }]);
      expect(s.metrics.changedSince(since)).toEqual([{ runId: r.id, maxRowid: since + 1 }]);
      s.checkpoints.add({ runId: r.id, step: 5, path: '/c5' });
      s.checkpoints.add({ runId: r.id, step: 10, path: '/c10' });
      // resuming from step 5 drops what comes after it
      expect(s.metrics.deleteAfter(r.id, 5)).toBe(12);
      s.checkpoints.deleteAfter(r.id, 5);
      expect(s.checkpoints.list(r.id).map((c) => c.step)).toEqual([5]);
      s.runs.finish(r.id, 'stopped', { errorMessage: 'x' });
      s.runs.requeue(r.id);
      expect(s.runs.get(r.id)).toMatchObject({ status: 'queued', endedAt: null, errorMessage: null });
      s.evals.add({ runId: r.id, dataPath: '/t', metrics: { acc: 1 } });
      s.runs.delete(r.id);
      expect(s.runs.get(r.id)).toBeUndefined();
      expect(s.metrics.all(r.id)).toEqual([]);
      expect(s.checkpoints.list(r.id)).toEqual([]);
      expect(s.evals.list({ runId: r.id })).toEqual([]);
    } finally {
      s.close();
    }
  });
});

describe('llms-train train: what the stored run needs later', () => {
  it('stores absolute paths (a later eval --run or resume runs from another folder); a Hub id stays as given', () => {
    const dir = tmp();
    fs.mkdirSync(path.join(dir, 'tiny'));
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const s = specFromFlags(flags(['--model_name_or_path', 'tiny', '--train_file', 'data/train.json', '--validation_file', 'dev.json', '--output_dir', 'out', '--resume_from_checkpoint', 'out/checkpoint-4'])).spec;
      // (macOS-style /private symlinks aside, the working directory as node sees it)
      const here = process.cwd();
      expect(s.model.path).toBe(path.join(here, 'tiny'));
      expect(s.data.train).toBe(path.join(here, 'data', 'train.json'));
      expect(s.data.validation).toBe(path.join(here, 'dev.json'));
      expect(s.output.dir).toBe(path.join(here, 'out'));
      expect(s.resume_from).toBe(path.join(here, 'out', 'checkpoint-4'));
      expect(specFromFlags(flags(['--model_name_or_path', 'THUDM/chatglm2-6b', '--train_file', 't.json', '--output_dir', 'o', '--resume_from_checkpoint', 'latest'])).spec).toMatchObject({
        model: { path: 'THUDM/chatglm2-6b' },
        resume_from: 'latest',
      });
    } finally {
      process.chdir(cwd);
    }
  });

  it('--deepspeed: a value contradicting a flag given on the command line is refused (as HF does); "auto" and agreement are fine', () => {
    const dir = tmp();
    const ds = (o: object) => {
      const f = path.join(dir, `ds-${Math.random().toString(36).slice(2)}.json`);
      fs.writeFileSync(f, JSON.stringify(o));
      return f;
    };
    const base = ['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o'];
    expect(() => specFromFlags(flags([...base, '--per_device_train_batch_size', '5', '--deepspeed', ds({ train_micro_batch_size_per_gpu: 3 })]))).toThrow(
      /sets micro_batch_size to 3 but --per_device_train_batch_size says 5: make them agree, or write "auto"/,
    );
    expect(() => specFromFlags(flags([...base, '--gradient_accumulation_steps', '2', '--deepspeed', ds({ gradient_accumulation_steps: 8 })]))).toThrow(/--gradient_accumulation_steps says 2/);
    expect(() => specFromFlags(flags([...base, '--fp16', '--deepspeed', ds({ bf16: { enabled: true } })]))).toThrow(/sets precision to "bf16" but --fp16 says "fp16"/);
    expect(specFromFlags(flags([...base, '--per_device_train_batch_size', '5', '--deepspeed', ds({ train_micro_batch_size_per_gpu: 'auto' })])).spec.training.micro_batch_size).toBe(5);
    expect(specFromFlags(flags([...base, '--per_device_train_batch_size', '3', '--deepspeed', ds({ train_micro_batch_size_per_gpu: 3 })])).spec.training.micro_batch_size).toBe(3);
    // no flag: the file's value
    expect(specFromFlags(flags([...base, '--deepspeed', ds({ train_micro_batch_size_per_gpu: 3 })])).spec.training.micro_batch_size).toBe(3);
    // ZeRO: the file's stage 2 is zero_stage 2; an explicit --zero_stage 0 or 1 contradicts it
    expect(() => specFromFlags(flags([...base, '--use_lora', 'False', '--nproc_per_node', '2', '--zero_stage', '0', '--deepspeed', ds({ zero_optimization: { stage: 2 } })]))).toThrow(/asks for ZeRO \(zero_stage 2 here\) but --zero_stage says 0/);
    expect(() => specFromFlags(flags([...base, '--use_lora', 'False', '--nproc_per_node', '2', '--zero_stage', '1', '--deepspeed', ds({ zero_optimization: { stage: 2 } })]))).toThrow(/--zero_stage says 1/);
    expect(specFromFlags(flags([...base, '--use_lora', 'False', '--nproc_per_node', '2', '--zero_stage', '2', '--deepspeed', ds({ zero_optimization: { stage: 2 } })])).spec.distributed.zero_stage).toBe(2);
  });
});
