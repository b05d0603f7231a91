// predict.ts — `llms-train predict`: the seed's inference script over a test file — each record copied with its
// answer (PromptCBLUE: target) replaced by the model's — through core/eval/predict.ts. Progress on stderr, the
// report on stdout (answers that stopped at the model's context counted apart); Ctrl-C stops and keeps what is done in <out>.partial for the next run to resume.
import { type Command, Option } from 'commander';

import type { TemplateName } from '../core/data/templates.js';
import { EngineHost, type Placement } from '../core/engine/host.js';
import { contextStopsLine, predict } from '../core/eval/predict.js';
import { type ColumnFlags, type Fail, type SamplingFlags, columnsOf, dataColumnOptions, onInterrupt, paramsOf, placementOf, placementOptions, posInt, samplingOptions, templateOption } from './options.js';
import { Progress } from './progress.js';

export function registerPredict(program: Command, fail: Fail): void {
  placementOptions(samplingOptions(dataColumnOptions(
    program
      .command('predict')
      .description("answer every record of a test file (the seed's inference script): each record is copied with its answer (PromptCBLUE: target) replaced by the generated text")
      .requiredOption('--model <dir>', 'base model folder (HF layout)')
      .option('--adapter <dir>', 'PEFT LoRA adapter or checkpoint folder')
      .option('--tokenizer <dir>', 'tokenizer folder (default: the model folder)')
      .requiredOption('--data <file>', 'test file (JSON or JSON Lines; PromptCBLUE, Alpaca, prompt/response or prompt/completion records)')
      .requiredOption('--out <file>', 'predictions file to write (JSON Lines)')
      .addOption(templateOption())
      .option('--max_source_length <n>', 'prompt tokens kept, as in training', posInt, 512)
      .option('--batch_size <n>', 'records generated together in one engine batch (the same answers as one at a time, faster)', posInt, 4)
      .option('--limit <n>', 'only the first N records', posInt)
      .addOption(new Option('--on-error <policy>', 'bad records: fail before generating, or skip them').choices(['fail', 'skip']).default('fail'))
      .addOption(new Option('--on_error <policy>', 'the same as --on-error (the spelling of `train`)').choices(['fail', 'skip']).conflicts('onError').hideHelp())
      .option('--no-resume', 'start over even when <out>.partial from an interrupted run exists')
      .option('--threads <n>', 'engine CPU threads', posInt)
      .option('--json', 'print the report as JSON', false),
  ))).action(async (o: SamplingFlags & ColumnFlags & { model: string; adapter?: string; tokenizer?: string; data: string; out: string; template: TemplateName; max_source_length: number; batch_size: number; limit?: number; onError: 'fail' | 'skip'; on_error?: 'fail' | 'skip'; resume: boolean; threads?: number; json: boolean; device: string; precision: string }) => {
    const ctl = new AbortController();
    const off = onInterrupt(() => ctl.abort());
    const bar = new Progress('predict');
    let placement: Placement;
    try {
      placement = placementOf(o);
    } catch (err) {
      return fail(err);
    }
    const host = new EngineHost({ ...(o.threads ? { threads: o.threads } : {}), placement });
    try {
      const r = await predict({
        model: o.model,
        adapter: o.adapter ?? null,
        tokenizer: o.tokenizer ?? null,
        data: o.data,
        out: o.out,
        ...columnsOf(o),
        template: o.template,
        maxSourceLength: o.max_source_length,
        params: paramsOf(o),
        batchSize: o.batch_size,
        ...(o.limit !== undefined ? { limit: o.limit } : {}),
        onError: o.on_error ?? o.onError,
        resume: o.resume,
        stalePartial: 'refuse',
        host,
        signal: ctl.signal,
        onProgress: (p) => bar.update(p.done, p.total, p.resumed, `${p.tokens} tokens`),
      });
      bar.done();
      if (o.json) console.log(JSON.stringify(r, null, 2));
      else {
        if (r.resumed) console.log(`resumed after ${r.resumed} record(s) already predicted`);
        if (r.skipped) console.log(`skipped ${r.skipped} bad record(s): ${r.errors.slice(0, 5).map((e) => `line ${e.line}: ${e.reason}`).join('; ')}${r.skipped > 5 ? '; …' : ''}`);
        console.log(`wrote ${r.written} prediction(s) to ${r.out} in ${r.seconds.toFixed(1)} s on ${r.device} (${r.precision}${r.quantization !== 'none' ? `, ${r.quantization} base weights` : ''}; ${r.tokens} tokens generated; ${r.finish.length - r.contextStops} stopped at max_new_tokens)`);
        const stops = contextStopsLine(r.contextStops, r.context);
        if (stops) console.log(`${stops}: their prompt left less than --max_new_tokens of room (a lower --max_source_length leaves more)`);
      }
    } catch (err) {
      bar.done();
      fail(err);
    } finally {
      off();
      await host.dispose();
    }
  });
}

