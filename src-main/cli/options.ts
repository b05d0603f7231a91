// options.ts — what the predict, eval and chat commands share: the seed's sampling flags over the seed's
// defaults, the template flag, Ctrl-C handling that stops work but keeps what is done.
import { type Command, InvalidArgumentError, Option } from 'commander';

import { samplingParams, type SamplingParams } from '../core/chat/service.js';
import { type ColumnOptions, FORMATS, type Format } from '../core/data/formats.js';
import { TEMPLATES } from '../core/data/templates.js';
import type { Placement } from '../core/engine/host.js';
import { INFERENCE_QUANTIZATIONS } from '../core/engine/quantization.js';

export type Fail = (err: unknown) => never;

export const int = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('an integer');
  return n;
};
export const posInt = (v: string) => {
  const n = int(v);
  if (n < 1) throw new InvalidArgumentError('a positive integer');
  return n;
};
export const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError('a number');
  return n;
};
/**
 * HF's string_to_bool (distutils' strtobool): y/yes/t/true/on/1 and n/no/f/false/off/0, any case; anything
 * else is null (a typo such as "Flase" must not silently mean false).
 */
export function parseBool(v: string | boolean | undefined): boolean | null {
  if (v === undefined || v === true) return true;
  if (v === false) return false;
  const s = v.trim().toLowerCase();
  if (/^(y|yes|t|true|on|1)$/.test(s)) return true;
  if (/^(n|no|f|false|off|0)$/.test(s)) return false;
  return null;
}
/** A [bool] flag's argument parser: a truthy or falsy value, else commander's "option '--x [bool]' argument 'v' is invalid". */
export const bool = (v: string | undefined): boolean => {
  const b = parseBool(v);
  if (b === null) throw new InvalidArgumentError('a truthy or falsy value is expected: true/false, yes/no, 1/0 (any case; also y/n, t/f, on/off).');
  return b;
};

export interface SamplingFlags {
  max_new_tokens?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  do_sample?: boolean;
  greedy?: boolean;
  seed?: number;
}

/** The sampling flags (the seed's names); unset ones keep the seed's defaults. */
export function samplingOptions(cmd: Command, maxNewDefault?: string): Command {
  return cmd
    .option('--max_new_tokens <n>', `tokens to generate at most${maxNewDefault ? ` (default ${maxNewDefault})` : ' (default 512)'}`, posInt)
    .option('--temperature <x>', 'sampling temperature (default 0.001)', num)
    .option('--top_k <k>', 'top-k (default 30; 0 = off)', int)
    .option('--top_p <p>', 'top-p (default 0.85)', num)
    .option('--repetition_penalty <r>', 'repetition penalty (default 1.2)', num)
    .option('--do_sample [bool]', 'sample (default true; false = greedy)', bool)
    .option('--greedy', 'greedy decoding (same as --do_sample false)')
    .option('--seed <n>', 'sampling seed (default 0)', int);
}

export function paramsOf(o: SamplingFlags): SamplingParams {
  const p: SamplingParams = {};
  if (o.max_new_tokens !== undefined) p.max_new_tokens = o.max_new_tokens;
  if (o.temperature !== undefined) p.temperature = o.temperature;
  if (o.top_k !== undefined) p.top_k = o.top_k;
  if (o.top_p !== undefined) p.top_p = o.top_p;
  if (o.repetition_penalty !== undefined) p.repetition_penalty = o.repetition_penalty;
  if (o.do_sample !== undefined) p.do_sample = o.do_sample;
  if (o.greedy) p.do_sample = false;
  if (o.seed !== undefined) p.seed = o.seed;
  samplingParams(p); // range checks with a clear message
  return p;
}

export const templateOption = () => new Option('--template <name>', 'prompt template (the one the adapter was trained with)').choices(TEMPLATES as unknown as string[]).default('raw');

/** How a test file's records are read, as `train` reads its data: --format and the column flags. */
export function dataColumnOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--format <format>', 'the records\' format (default: detected from the first record)').choices([...FORMATS]))
    .option('--prompt_column <name>', 'the prompt column (as in training)')
    .option('--response_column <name>', 'the answer column (as in training)')
    .option('--history_column <name>', 'a column of [question, answer] pairs: earlier turns (as in training)');
}

export interface ColumnFlags {
  format?: Format;
  prompt_column?: string;
  response_column?: string;
  history_column?: string;
}

/** The format and columns of dataColumnOptions' flags, for predict and the loss. */
export function columnsOf(o: ColumnFlags): { format?: Format; columns?: ColumnOptions } {
  const columns: ColumnOptions = {
    ...(o.prompt_column ? { promptColumn: o.prompt_column } : {}),
    ...(o.response_column ? { responseColumn: o.response_column } : {}),
    ...(o.history_column ? { historyColumn: o.history_column } : {}),
  };
  return { ...(o.format ? { format: o.format } : {}), ...(Object.keys(columns).length ? { columns } : {}) };
}

/** First Ctrl-C: abort (work so far is kept); a second one: exit at once. */
export function onInterrupt(abort: () => void): () => void {
  let count = 0;
  const handler = () => {
    count++;
    if (count === 1) {
      process.stderr.write('\nstopping… (Ctrl-C again to quit at once)\n');
      abort();
    } else process.exit(130);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}


/** Where `predict`/`chat` compute: --device cpu|cuda|cuda:N|auto, --precision fp32|bf16|fp16 and --quantization
 *  auto|none|nf4|fp4 (the engine host's placement; a GPU that cannot be used leaves the engine on the CPU, and the report
 *  says where it ran). */
export function placementOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--device <d>', 'cpu, cuda, cuda:N or auto (the first usable GPU, else the CPU)').default('cpu'))
    .addOption(new Option('--precision <p>', 'the frozen weights: fp32, or bf16/fp16 (half the memory; the GEMMs read 16-bit inputs)').choices(['fp32', 'bf16', 'fp16']).default('fp32'))
    .addOption(
      new Option('--quantization <q>', "the base's block linears in 4 bits (QLoRA): auto = as the adapter's run trained them (its job.json), none, nf4 or fp4")
        .choices(['auto', 'none', 'nf4', 'fp4'])
        .default('auto'),
    );
}
export function placementOf(o: { device: string; precision: string; quantization?: string }): Placement {
  if (!/^(cpu|auto|cuda(:\d+)?)$/.test(o.device)) throw new Error(`--device ${o.device}: use cpu, cuda, cuda:N or auto`);
  const quantization = INFERENCE_QUANTIZATIONS.find((q) => q === (o.quantization ?? 'auto'));
  if (!quantization) throw new Error(`--quantization ${o.quantization}: use auto, none, nf4 or fp4`);
  return { device: o.device, precision: o.precision, quantization };
}
