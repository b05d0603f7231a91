// HF TrainingArguments that reach the engine unchanged: --warmup_ratio, --adam_beta1/2, --adam_epsilon and a
// fractional --num_train_epochs (HF: max_steps = ceil(epochs × update steps per epoch); the app used to round the
// epochs up first). What the engine then does with them is checked against HF Trainer in
// tests/integration/trainer-parity.test.ts.
import { describe, expect, it } from 'vitest';

import { specFromFlags } from '../../src-main/cli/train';
import { cliArgs } from '../../src-main/core/runs/cli-command';
import { parseRunSpec, toEngineJob } from '../../src-main/core/runs/runspec';
import { flags } from '../helpers/cli-flags';


const base = ['--model_name_or_path', '/m', '--train_file', '/t.json', '--output_dir', '/o'];
const training = (spec: ReturnType<typeof parseRunSpec>) => (toEngineJob(spec, { train: '/t.tok', eval: null }, null) as { training: Record<string, unknown> }).training;

describe("HF Trainer's optimizer and schedule flags", () => {
  it('reach the engine job as given, and round-trip through the equivalent command line', () => {
    const { spec } = specFromFlags(flags([...base, '--warmup_ratio', '0.03', '--adam_beta1', '0.8', '--adam_beta2', '0.95', '--adam_epsilon', '1e-6', '--num_train_epochs', '2.5']));
    expect(training(spec)).toMatchObject({ warmup_ratio: 0.03, adam_beta1: 0.8, adam_beta2: 0.95, adam_epsilon: 1e-6, num_epochs: 2.5 });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--warmup_ratio', '0.03', '--adam_beta1', '0.8', '--adam_beta2', '0.95', '--adam_epsilon', '0.000001', '--num_train_epochs', '2.5']));
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
  });

  it("default to torch's AdamW and no warmup ratio, and say nothing on the command line", () => {
    const spec = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } });
    const t = training(spec);
    expect(t).toMatchObject({ adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, num_epochs: 3 });
    expect(t).not.toHaveProperty('warmup_ratio');
    expect(cliArgs(spec).join(' ')).not.toMatch(/adam|warmup_ratio|num_train_epochs/);
  });

  it('refuses values HF refuses', () => {
    for (const bad of [['--warmup_ratio', '1.5'], ['--adam_beta1', '1'], ['--adam_epsilon', '0']]) {
      expect(() => specFromFlags(flags([...base, ...bad]))).toThrow();
    }
  });
});

describe("HF Trainer's --neftune_noise_alpha (NEFTune)", () => {
  it('reaches the engine job and round-trips; off (0) it says nothing; negative is refused', () => {
    const { spec } = specFromFlags(flags([...base, '--neftune_noise_alpha', '5']));
    expect(spec.training.neftune_noise_alpha).toBe(5);
    expect(training(spec)).toMatchObject({ neftune_noise_alpha: 5 });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--neftune_noise_alpha', '5']));
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    const off = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } });
    expect(training(off)).not.toHaveProperty('neftune_noise_alpha');
    expect(cliArgs(off).join(' ')).not.toMatch(/neftune/);
    expect(() => specFromFlags(flags([...base, '--neftune_noise_alpha', '-1']))).toThrow();
  });
});

describe('--loraplus_lr_ratio (LoRA+)', () => {
  it('reaches the engine job and round-trips; a full fine-tune leaves it out; negative is refused', () => {
    const { spec } = specFromFlags(flags([...base, '--loraplus_lr_ratio', '16']));
    expect(training(spec)).toMatchObject({ loraplus_lr_ratio: 16 });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--loraplus_lr_ratio', '16']));
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    const full = specFromFlags(flags([...base, '--loraplus_lr_ratio', '16', '--use_lora', 'False'])).spec;
    expect(training(full)).not.toHaveProperty('loraplus_lr_ratio');
    expect(() => specFromFlags(flags([...base, '--loraplus_lr_ratio', '-2']))).toThrow();
  });
});

describe('--save_total_limit, --load_best_model_at_end, --early_stopping_patience/threshold', () => {
  const output = (spec: ReturnType<typeof parseRunSpec>) => (toEngineJob(spec, { train: '/t.tok', eval: '/e.tok' }, null) as { output: Record<string, unknown> }).output;
  const withEval = [...base, '--validation_file', '/v.json', '--eval_steps', '10', '--save_steps', '20'];

  it('reach the engine job and round-trip; off they say nothing', () => {
    const { spec } = specFromFlags(flags([...withEval, '--save_total_limit', '3', '--load_best_model_at_end', '--early_stopping_patience', '4', '--early_stopping_threshold', '0.01']));
    expect(output(spec)).toMatchObject({ save_total_limit: 3, load_best_model_at_end: true, early_stopping_patience: 4, early_stopping_threshold: 0.01 });
    const args = cliArgs(spec);
    expect(args).toEqual(expect.arrayContaining(['--save_total_limit', '3', '--load_best_model_at_end', '--early_stopping_patience', '4', '--early_stopping_threshold', '0.01']));
    expect(specFromFlags(flags(args)).spec).toEqual(spec);
    // HF's spelling with a value
    expect(specFromFlags(flags([...withEval, '--load_best_model_at_end', 'False'])).spec.output.load_best_model_at_end).toBe(false);
    const plain = parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' } });
    const o = output(plain);
    for (const k of ['save_total_limit', 'load_best_model_at_end', 'early_stopping_patience', 'early_stopping_threshold']) expect(o).not.toHaveProperty(k);
    expect(cliArgs(plain).join(' ')).not.toMatch(/save_total_limit|load_best|early_stopping/);
  });

  it('refuse what HF refuses: no evaluation to compare, checkpoints off the evaluations, negative values', () => {
    expect(() => specFromFlags(flags([...base, '--load_best_model_at_end']))).toThrow(/output\.load_best_model_at_end: keeping the checkpoint with the lowest eval loss needs evaluation data/);
    expect(() => specFromFlags(flags([...base, '--validation_split_percentage', '5', '--load_best_model_at_end']))).toThrow(/needs evaluations during training: eval_steps above 0 \(--eval_steps\)/);
    expect(() => specFromFlags(flags([...withEval, '--save_steps', '15', '--load_best_model_at_end']))).toThrow(/save_steps \(15\) must be a multiple of eval_steps \(10\)/);
    expect(() => specFromFlags(flags([...base, '--early_stopping_patience', '3']))).toThrow(/output\.early_stopping_patience: stopping when the eval loss stops improving needs evaluation data/);
    expect(() => specFromFlags(flags([...withEval, '--save_total_limit', '-1']))).toThrow(/save_total_limit/);
    expect(() => specFromFlags(flags([...withEval, '--load_best_model_at_end', 'maybe']))).toThrow(/--load_best_model_at_end maybe: a truthy or falsy value/);
    // early stopping alone keeps the last step's weights: no save_steps rule
    expect(specFromFlags(flags([...withEval, '--save_steps', '15', '--early_stopping_patience', '2'])).spec.output.early_stopping_patience).toBe(2);
  });
});
