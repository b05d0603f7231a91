// eval.ts — `llms-train eval`: metrics of a predictions file against the gold file (a table per task type and
// overall, or JSON), the eval loss and perplexity of a model (+ adapter) on a dataset, or an evaluation of a
// run's checkpoint(s) stored in the app's database (with --all, the best one marked). Thin over core/eval.
import { type Command, Option } from 'commander';

import type { TemplateName } from '../core/data/templates.js';
import { evalLoss } from '../core/eval/loss.js';
import { evaluateFiles, formatMetricsTable } from '../core/eval/metrics.js';
import { contextStopsLine } from '../core/eval/predict.js';
import { BEST_METRICS, type BestMetric, type CheckpointEval, evaluateAllCheckpoints, evaluateCheckpoint } from '../core/eval/service.js';
import { databaseFile, dataHome } from '../core/paths.js';
import { Store } from '../core/store/store.js';
import { type ColumnFlags, type Fail, type SamplingFlags, columnsOf, dataColumnOptions, onInterrupt, paramsOf, posInt, samplingOptions, templateOption } from './options.js';
import { Progress } from './progress.js';
import type { InferenceQuantization } from '../core/engine/quantization.js';

function openStore(): Store {
  return Store.open(databaseFile(dataHome()));
}

function printEval(e: CheckpointEval, json: boolean): void {
  if (json) return;
  console.log(`evaluation #${e.evalId}: ${e.checkpoint}${e.step !== null ? ` (step ${e.step})` : ''} on ${e.data}`);
  if (e.loss) console.log(`eval loss ${e.loss.loss.toFixed(4)}  perplexity ${e.loss.perplexity.toFixed(2)}  (${e.loss.tokens} tokens, ${e.loss.samples} samples)`);
  if (e.report) console.log(formatMetricsTable(e.report));
  const g = e.generation;
  if (g?.skipped) console.log(`${g.skipped} bad record(s) skipped (--on-error skip): not predicted, not scored`);
  const stops = g ? contextStopsLine(g.contextStops, g.context) : null;
  if (stops) console.log(stops);
  if (e.predictions) console.log(`predictions: ${e.predictions}`);
}

export function registerEval(program: Command, fail: Fail): void {
  samplingOptions(dataColumnOptions(
    program
      .command('eval')
      .description(
        'metrics of predictions against the gold file (--pred --gold), the eval loss and perplexity of a model (--model [--adapter] --data), or a stored evaluation of a run\'s checkpoint (--run --checkpoint --data) or of all its checkpoints (--run --all --data)',
      )
      .option('--pred <file>', 'predictions (as written by predict)')
      .option('--gold <file>', 'gold test file')
      .option('--field <name>', 'answer field compared (default target)', 'target')
      .option('--model <dir>', 'model folder: eval loss and perplexity on --data')
      .option('--adapter <dir>', 'PEFT adapter or checkpoint folder (with --model)')
      .option('--tokenizer <dir>', 'tokenizer folder (default: the model folder)')
      .option('--data <file>', 'dataset for the loss, or the test file of a run evaluation')
      .addOption(templateOption())
      .option('--max_source_length <n>', 'as in training', posInt, 512)
      .option('--max_target_length <n>', 'as in training', posInt, 64)
      .option('--run <id>', 'evaluate a run\'s checkpoint and store the result', posInt)
      .option('--checkpoint <dir>', 'the checkpoint folder of --run')
      .option('--all', 'every checkpoint of --run, marking the best', false)
      .addOption(new Option('--metric <name>', 'what picks the best checkpoint with --all (default eval_loss)').choices(Object.keys(BEST_METRICS)))
      .option('--no-predict', 'run evaluation: loss only (no predictions)')
      .option('--no-loss', 'run evaluation: predictions and metrics only')
      .option('--limit <n>', 'only the first N records', posInt)
      .option('--threads <n>', 'engine CPU threads', posInt)
      .option('--eval_batch_size <n>', 'samples per forward pass for the loss of --model (a run\'s evaluation uses its eval_batch_size)', posInt, 4)
      .addOption(new Option('--quantization <q>', "the loss of --model: the base's block linears in 4 bits (QLoRA) — auto = as the adapter's run trained them, none, nf4 or fp4 (a run's evaluation uses the run's)").choices(['auto', 'none', 'nf4', 'fp4']).default('auto'))
      .addOption(new Option('--precision <p>', "the loss of --model: the frozen weights in fp32, bf16 or fp16 (a run's evaluation uses the run's)").choices(['fp32', 'bf16', 'fp16']).default('fp32'))
      .addOption(new Option('--on-error <policy>', 'a bad record of --data fails the evaluation (default), or is skipped and counted').choices(['fail', 'skip']).default('fail'))
      .addOption(new Option('--on_error <policy>', 'the same as --on-error (the spelling of `train`)').choices(['fail', 'skip']).conflicts('onError').hideHelp())
      .option('--json', 'machine-readable output', false),
  ),
    'the run\'s max_target_length',
  ).action(
    async (
      o: SamplingFlags & ColumnFlags & {
        pred?: string;
        gold?: string;
        field: string;
        model?: string;
        adapter?: string;
        tokenizer?: string;
        data?: string;
        template: TemplateName;
        max_source_length: number;
        max_target_length: number;
        run?: number;
        checkpoint?: string;
        all: boolean;
        metric?: BestMetric;
        predict: boolean;
        loss: boolean;
        onError: 'fail' | 'skip';
        on_error?: 'fail' | 'skip';
        limit?: number;
        threads?: number;
        eval_batch_size: number;
        quantization: InferenceQuantization;
        precision: 'fp32' | 'bf16' | 'fp16';
        json: boolean;
      },
    ) => {
      try {
        if (o.pred || o.gold) {
          if (!o.pred || !o.gold) throw new Error('metrics need both --pred and --gold');
          const r = await evaluateFiles(o.pred, o.gold, { field: o.field });
          console.log(o.json ? JSON.stringify(r, null, 2) : formatMetricsTable(r));
          return;
        }
        if (o.run !== undefined) {
          if (!o.data) throw new Error('a run evaluation needs --data (the test file)');
          const given = Object.keys(columnsOf(o));
          if (given.length) throw new Error('a run evaluation reads the test file as the run read its data (its format and columns): leave out --format and the column flags');
          if (!o.all && !o.checkpoint) throw new Error('give --checkpoint DIR (one checkpoint of the run) or --all');
          const store = openStore();
          const ctl = new AbortController();
          const off = onInterrupt(() => ctl.abort());
          const bar = new Progress('eval');
          const common = {
            runId: o.run,
            data: o.data,
            predict: o.predict,
            loss: o.loss,
            params: paramsOf(o),
            onError: o.on_error ?? o.onError,
            ...(o.limit !== undefined ? { limit: o.limit } : {}),
            ...(o.threads ? { threads: o.threads } : {}),
            signal: ctl.signal,
            onProgress: (p: { phase: string; done: number; total: number }) => bar.update(p.done, p.total, 0, p.phase),
          };
          try {
            if (o.all) {
              const r = await evaluateAllCheckpoints(store, { ...common, ...(o.metric ? { metric: o.metric } : {}), onCheckpoint: (e) => (bar.done(), printEval(e, o.json)) });
              bar.done();
              if (o.json) console.log(JSON.stringify(r, null, 2));
              else console.log(r.best ? `best: ${r.best.checkpoint} (${r.best.metric} ${r.best.value.toFixed(4)})` : 'no checkpoint has that metric');
            } else {
              const e = await evaluateCheckpoint(store, { ...common, checkpointPath: o.checkpoint! });
              bar.done();
              if (o.json) console.log(JSON.stringify(e, null, 2));
              else printEval(e, false);
            }
          } finally {
            bar.done();
            off();
            store.close();
          }
          return;
        }
        if (o.model) {
          if (!o.data) throw new Error('the loss needs --data');
          const bar = new Progress('loss');
          const r = await evalLoss({
            model: o.model,
            adapter: o.adapter ?? null,
            tokenizer: o.tokenizer ?? null,
            data: o.data,
            ...columnsOf(o),
            template: o.template,
            maxSourceLength: o.max_source_length,
            maxTargetLength: o.max_target_length,
            batchSize: o.eval_batch_size,
            quantization: o.quantization,
            precision: o.precision,
            onError: o.on_error ?? o.onError,
            ...(o.limit !== undefined ? { limit: o.limit } : {}),
            ...(o.threads ? { threads: o.threads } : {}),
            onProgress: (d, t) => bar.update(d, t),
          });
          bar.done();
          if (o.json) console.log(JSON.stringify(r, null, 2));
          else {
            console.log(`eval loss ${r.loss.toFixed(4)}  perplexity ${r.perplexity.toFixed(2)}  (${r.tokens} tokens, ${r.samples} samples${r.skipped ? `, ${r.skipped} skipped` : ''})`);
            for (const e of (r.errors ?? []).slice(0, 20)) console.log(`  skipped ${o.data}:${e.line}${e.element !== undefined ? ` (element ${e.element})` : ''}: ${e.reason}`);
          }
          return;
        }
        throw new Error('say what to evaluate: --pred P --gold G, --model M --data D, or --run ID (--checkpoint DIR | --all) --data D');
      } catch (err) {
        fail(err);
      }
    },
  );
}

