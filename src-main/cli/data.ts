// data.ts — `llms-train data prepare|show|stats`: the data pipeline from the command line, with the seed's
// flag names (--prompt_column, --response_column, --history_column, --max_source_length, --max_target_length).
import fs from 'node:fs';
import path from 'node:path';

import { type Command, InvalidArgumentError, Option } from 'commander';

import { FORMATS, type Format } from '../core/data/formats.js';
import { PrepareError, type PrepareReport, prepareFiles } from '../core/data/prepare.js';
import { TEMPLATES, type TemplateName } from '../core/data/templates.js';
import { TokReader, TokWriter } from '../core/data/tokfile.js';
import { IoError, ioError, isWriteFailure } from '../core/io-error.js';
import { loadChatTemplate } from '../core/data/chat-template.js';
import { loadTokenizer } from '../core/data/tokenizer/index.js';
import { dataHome } from '../core/paths.js';
import { trainFileList } from '../core/runs/runspec.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('a positive integer');
  return n;
}

function printReport(r: PrepareReport): void {
  console.log(`${r.out}: ${r.written} samples, ${r.tokens} tokens (format ${r.format}, template ${r.template}${r.cached ? ', from the cache' : ''})`);
  const v = r.validation;
  if (v) console.log(`${v.out}: ${v.written} validation samples, ${v.tokens ?? '?'} tokens${v.truncated ? ` (${v.truncated.samples} truncated)` : ''}`);
  console.log(`records read: ${r.records}; skipped: ${r.skipped}; duplicates: ${r.duplicates}${r.packedSamples ? `; ${r.packedSamples} samples packed into the rows` : ''}`);
  const pct = r.written ? ((100 * r.truncated.samples) / r.written).toFixed(1) : '0';
  console.log(`truncated: ${r.truncated.samples} samples (${pct}%), ${r.truncated.tokens} tokens${v ? ' (training file)' : ''}`);
  console.log(`length: min ${r.lengths.min}, mean ${r.lengths.mean}, p50 ${r.lengths.p50}, p95 ${r.lengths.p95}, max ${r.lengths.max}`);
  const top = Math.max(1, ...r.lengths.histogram.map((b) => b.count));
  for (const b of r.lengths.histogram) console.log(`  ≤${String(b.upTo).padStart(6)} ${'█'.repeat(Math.ceil((30 * b.count) / top))} ${b.count}`);
  for (const e of r.errors.slice(0, 20)) console.log(`  skipped ${e.file ? `${e.file}:${e.line}` : `line ${e.line}`}: ${e.reason}`);
}

export function registerData(program: Command, fail: (err: unknown) => never): void {
  const data = program.command('data').description('prepare datasets: tokenize, template and truncate into a .tok file');

  data
    .command('prepare')
    .description('turn a dataset file (JSON / JSONL / CSV / TSV / text, optionally .gz) into a tokenized .tok file for training')
    .requiredOption('--model <dir>', 'HF model folder whose tokenizer to use')
    .requiredOption('--data <file>', 'dataset file: PromptCBLUE, Alpaca, ShareGPT / messages, prompt/response columns (a JSON array, an object holding one, JSONL, CSV or TSV with a header row; gzip\'d too), or .txt; several comma-separated (a,b.json): each read in its own format, the samples put together')
    .requiredOption('--out <file>', 'output .tok file')
    .addOption(new Option('--format <format>', 'override the detected format').choices([...FORMATS]))
    .addOption(new Option('--template <template>', 'prompt template').choices([...TEMPLATES]).default('raw'))
    .option('--prompt_column <name>', 'the prompt column (columns format)')
    .option('--response_column <name>', 'the response column (columns format)')
    .option('--history_column <name>', 'a column of [question, answer] pairs: earlier turns (columns and PromptCBLUE formats; Alpaca reads "history" by default)')
    .option('--max_source_length <n>', 'source tokens kept: max_source_length - 1', positiveInt, 512)
    .option('--max_target_length <n>', 'target tokens kept: max_target_length - 2', positiveInt, 64)
    .option('--train-on-prompt', 'also train on the prompt tokens', false)
    .option('--pack <row_length>', 'pack samples into rows of at most this many tokens (continued pre-training)', positiveInt)
    .addOption(new Option('--on-error <policy>', 'a bad record fails the file, or is skipped and counted').choices(['fail', 'skip']).default('fail'))
    .addOption(new Option('--on_error <policy>', 'the same as --on-error (the spelling of `train`)').choices(['fail', 'skip']).conflicts('onError').hideHelp())
    .option('--validation-out <file>', 'also write a validation split here')
    .option('--validation-percent <p>', 'share of records for the validation split', (v) => Number(v), 5)
    .option('--seed <n>', 'seed of the validation split', (v) => Number(v), 42)
    .option('--no-cache', 'do not reuse or store cached results')
    .option('--json', 'print the report as JSON', false)
    .action(async (o: {
      model: string; data: string; out: string; format?: Format; template: TemplateName; prompt_column?: string; response_column?: string;
      history_column?: string; max_source_length: number; max_target_length: number; trainOnPrompt: boolean; onError: 'fail' | 'skip'; on_error?: 'fail' | 'skip';
      validationOut?: string; validationPercent: number; seed: number; cache: boolean; json: boolean; pack?: number;
    }) => {
      // Ctrl-C (or a kill) while tokenizing: the writers' temp files and the finished parts of several files go, as a
      // failed preparation leaves nothing behind either
      const interrupted = (sig: NodeJS.Signals) => {
        TokWriter.removeTempFiles();
        const dir = path.dirname(path.resolve(o.out));
        const base = path.basename(o.out);
        try {
          for (const n of fs.readdirSync(dir)) if (n.startsWith(`${base}.part`) && /\.part\d+\.(tok|val)$/.test(n)) fs.rmSync(path.join(dir, n), { force: true });
        } catch {
          /* the folder is gone: nothing to remove */
        }
        console.error(`\nllms-train: data prepare stopped (${sig}); ${o.out} was not written (a file there before is unchanged)`);
        process.exit(sig === 'SIGINT' ? 130 : 143);
      };
      process.once('SIGINT', interrupted);
      process.once('SIGTERM', interrupted);
      try {
        const tokenizer = await loadTokenizer(o.model);
        const columns: Record<string, string> = {};
        if (o.prompt_column) columns.promptColumn = o.prompt_column;
        if (o.response_column) columns.responseColumn = o.response_column;
        if (o.history_column) columns.historyColumn = o.history_column;
        const files = trainFileList(o.data);
        const many = Array.isArray(files);
        const report = await prepareFiles({
          dataFiles: many ? files : [files],
          out: o.out,
          tokenizer,
          ...(o.format ? { format: o.format } : {}),
          template: o.template,
          columns,
          ...(o.template === 'chat_template' ? { chatTemplate: loadChatTemplate(o.model) } : {}),
          maxSourceLength: o.max_source_length,
          maxTargetLength: o.max_target_length,
          trainOnPrompt: o.trainOnPrompt,
          ...(o.pack ? { packRowLength: o.pack } : {}),
          onError: o.on_error ?? o.onError,
          ...(o.validationOut ? { validationOut: o.validationOut, validationPercent: o.validationPercent } : {}),
          seed: o.seed,
          ...(o.cache ? { cacheDir: path.join(dataHome(), 'cache', 'tok') } : {}),
          source: { model: path.resolve(o.model) },
        }, many && !o.json ? (file, r) => console.log(`${file}: ${r.written} samples (format ${r.format}${r.cached ? ', from the cache' : ''})`) : undefined);
        if (o.json) console.log(JSON.stringify(report));
        else printReport(report);
      } catch (err) {
        if (err instanceof PrepareError) {
          console.error(`llms-train: ${err.message}`);
          if (err.hint) console.error(`hint: ${err.hint}`);
          process.exit(1);
        }
        // a full disk or a read-only folder: one line naming the file, with what to do
        fail(isWriteFailure(err) || err instanceof IoError ? ioError(err, err instanceof IoError ? o.out : undefined, 'write', '--out') : err);
      }
    });

  data
    .command('show')
    .description('print one tokenized sample as {"input_ids", "labels"} (labels -100 where not trained on)')
    .argument('<file>', '.tok file')
    .requiredOption('--index <i>', 'sample index (0-based)', (v) => {
      if (!/^\d+$/.test(v.trim())) throw new InvalidArgumentError('a sample index is a whole number from 0');
      return Number(v);
    })
    .option('--json', 'JSON output (the default; kept for scripts)', true)
    .action((file: string, o: { index: number }) => {
      try {
        console.log(JSON.stringify(TokReader.open(file).sample(o.index)));
      } catch (err) {
        fail(err);
      }
    });

  data
    .command('stats')
    .description('counts and length statistics of a .tok file')
    .argument('<file>', '.tok file')
    .option('--json', 'JSON output', false)
    .action((file: string, o: { json: boolean }) => {
      try {
        if (!fs.existsSync(file)) throw new Error(`${file} does not exist`);
        const r = TokReader.open(file);
        const lengths = Array.from({ length: r.size }, (_, i) => r.length(i)).sort((a, b) => a - b);
        const labelled = Array.from({ length: r.size }, (_, i) => r.sample(i).labels.filter((x) => x !== -100).length).reduce((a, b) => a + b, 0);
        const s = {
          file,
          samples: r.size,
          tokens: r.header.num_tokens,
          labelled_tokens: labelled,
          min: lengths[0] ?? 0,
          p50: lengths[Math.floor(lengths.length / 2)] ?? 0,
          max: lengths.at(-1) ?? 0,
          header: r.header,
        };
        console.log(o.json ? JSON.stringify(s) : `${file}: ${s.samples} samples, ${s.tokens} tokens (${s.labelled_tokens} trained on); length min ${s.min}, median ${s.p50}, max ${s.max}; template ${String(r.header.template)}`);
      } catch (err) {
        fail(err);
      }
    });
}
