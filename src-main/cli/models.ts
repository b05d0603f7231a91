// models.ts — `llms-train model download|list|inspect|convert|merge|export|delete`: the model manager
// (src-main/core/models/manager.ts) from the command line, with progress bars on a TTY (plain lines otherwise).
import path from 'node:path';

import { type Command, Option } from 'commander';

import type { TemplateName } from '../core/data/templates.js';
import { EXPORT_TEMPLATES } from '../core/models/gguf.js';
import type { DownloadProgress } from '../core/models/download.js';
import * as models from '../core/models/manager.js';

const tty = process.stderr.isTTY;

function human(n: number): string {
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function bar(frac: number, width = 28): string {
  const f = Math.max(0, Math.min(1, frac));
  return '█'.repeat(Math.round(f * width)).padEnd(width, '░');
}

let lastLine = 0;
function status(line: string, final = false): void {
  if (tty) {
    process.stderr.write(`\r${line.padEnd(lastLine)}${final ? '\n' : ''}`);
    lastLine = line.length;
  } else if (final || Date.now() - lastLine > 2000) {
    process.stderr.write(line + '\n');
    lastLine = Date.now();
  }
}

function downloadLine(p: DownloadProgress): string {
  const eta = p.eta === null ? '--' : p.eta < 90 ? `${Math.round(p.eta)}s` : `${Math.round(p.eta / 60)}m`;
  return `${bar(p.total ? p.bytes / p.total : 0)} ${human(p.bytes)}/${human(p.total)} ${human(p.speed)}/s ETA ${eta} [${p.filesDone}/${p.filesTotal}] ${p.file}`;
}

const opLine = (p: models.OpProgress) => `${bar(p.total ? p.done / p.total : 0)} ${p.stage} ${p.done}/${p.total} ${p.name}`;

/** Ctrl-C stops the operation (downloads keep their .part files; engine operations leave nothing behind). */
function abortOnSigint(): AbortController {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  return ac;
}

export function registerModels(program: Command, fail: (err: unknown) => never): void {
  const model = program.command('model').alias('models').description('models: download from the Hub, inspect, convert .bin, merge adapters, export GGUF');

  model
    .command('download <repo>')
    .description('download a Hugging Face Hub repository (owner/name) into the app\'s model folder, resumable and verified')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--endpoint <url>', 'Hub or mirror (default $HF_ENDPOINT or https://huggingface.co)')
    .option('--token <token>', 'access token for gated/private models (default $HF_TOKEN)')
    .option('--out <dir>', 'target folder (default <data home>/models/<owner>--<name>)')
    .option('--include <glob...>', 'only files whose names contain one of these strings')
    .action(async (repo: string, o: { revision: string; endpoint?: string; token?: string; out?: string; include?: string[] }) => {
      const ac = abortOnSigint();
      try {
        const r = await models.download({
          repo,
          revision: o.revision,
          endpoint: o.endpoint,
          token: o.token,
          dest: o.out,
          signal: ac.signal,
          include: o.include ? (f) => o.include!.some((s) => f.path.includes(s)) : undefined,
          onProgress: (p) => status(downloadLine(p)),
        });
        status(`downloaded ${r.files.length} files (${human(r.bytes)}) into ${r.dir}`, true);
      } catch (e) {
        status('', true);
        fail(e);
      }
    });

  model
    .command('list')
    .description('models in the app\'s model folder')
    .option('--json', 'as JSON', false)
    .action((o: { json: boolean }) => {
      const l = models.list();
      if (o.json) console.log(JSON.stringify(l, null, 2));
      else if (!l.length) console.log('no models yet (llms-train model download <owner/name>)');
      else for (const m of l) console.log(`${m.name.padEnd(40)} ${m.kind.padEnd(8)} ${human(m.size).padStart(10)}  ${m.dir}`);
    });

  model
    .command('inspect <dir>')
    .description('family, sizes, dtype and LoRA targets of an HF folder (safetensors or pytorch_model.bin)')
    .action(async (dir: string) => {
      try {
        console.log(JSON.stringify(await models.inspect(dir), null, 2));
      } catch (e) {
        fail(e);
      }
    });

  model
    .command('convert <dir>')
    .description('pytorch_model.bin (or adapter_model.bin) → safetensors, read without running any pickle code')
    .option('--out <dir>', 'a new folder (default: next to the .bin)')
    .action(async (dir: string, o: { out?: string }) => {
      const ac = abortOnSigint();
      try {
        const r = await models.convert(dir, { out: o.out, signal: ac.signal, onProgress: (p) => status(opLine(p)) });
        status(`wrote ${r.files.join(', ')} (${r.tensors} tensors, ${human(r.bytes)}) in ${r.out}`, true);
      } catch (e) {
        status('', true);
        fail(e);
      }
    });

  model
    .command('merge')
    .description('merge a LoRA or DoRA adapter (or a Chinese-LLaMA-Alpaca delta) into its base; writes an HF folder')
    .requiredOption('--model <dir>', 'base model folder')
    .requiredOption('--adapter <dir>', 'PEFT adapter folder')
    .requiredOption('--out <dir>', 'new output folder')
    .addOption(new Option('--dtype <dtype>', 'output dtype (auto = the base\'s)').choices(['auto', 'float32', 'float16', 'bfloat16']).default('auto'))
    .action(async (o: { model: string; adapter: string; out: string; dtype: 'auto' | 'float32' | 'float16' | 'bfloat16' }) => {
      const ac = abortOnSigint();
      try {
        const r = await models.merge({ ...o, signal: ac.signal, onProgress: (p) => status(opLine(p)) });
        const vocab = r.vocab_after !== r.vocab_before ? `, vocabulary ${r.vocab_before} → ${r.vocab_after}` : '';
        status(`merged ${r.merged_modules} LoRA modules${r.dora_modules ? ` (${r.dora_modules} DoRA)` : ''}, replaced ${r.replaced_tensors} tensors${vocab} (${r.dtype}) into ${r.out}`, true);
      } catch (e) {
        status('', true);
        fail(e);
      }
    });

  model
    .command('export')
    .description('GGUF for llama.cpp / Ollama / LM Studio (llama incl. Llama 3, mistral, qwen2, baichuan, minicpm, gpt_neox, bloom, falcon, chatglm2), plus an Ollama <name>.Modelfile with --template raw|alpaca|belle|vicuna')
    .requiredOption('--model <dir>', 'model folder (merged, or the base with --adapter)')
    .option('--adapter <dir>', 'merge this adapter first')
    .option('--adapter-only', "with --adapter: write the adapter alone as llama.cpp's LoRA GGUF (no merge; not for DoRA adapters)", false)
    .requiredOption('--out <file>', 'the .gguf file')
    .addOption(new Option('--dtype <dtype>', 'tensor type').choices(['f32', 'f16', 'bf16']).default('f16'))
    .addOption(
      new Option('--template <template>', "the training template: raw, alpaca, belle, vicuna (the GGUF's chat template and an Ollama Modelfile), or chat_template (the model's own, kept in the GGUF; no Modelfile)").choices([...EXPORT_TEMPLATES, 'chat_template']),
    )
    .option('--name <name>', 'general.name in the GGUF')
    .option('--overwrite', 'replace an existing --out file (and its .Modelfile); without it an existing one is refused', false)
    .action(async (o: { model: string; adapter?: string; adapterOnly: boolean; out: string; dtype: 'f32' | 'f16' | 'bf16'; template?: TemplateName; name?: string; overwrite: boolean }) => {
      const ac = abortOnSigint();
      try {
        const r = await models.exportModel({ ...o, signal: ac.signal, onProgress: (p) => status(opLine(p)) });
        if (o.adapterOnly) status(`wrote ${r.gguf} (${human(r.bytes)}, ${r.tensors} LoRA tensors, ${r.architecture}): load it with the base model's GGUF (llama.cpp --lora)`, true);
        else status(`wrote ${r.gguf} (${human(r.bytes)}, ${r.architecture}, ${r.tensors} tensors, ${r.tokenizer} tokenizer, ${r.vocab} tokens)`, true);
        if (r.modelfile) console.log(`Ollama: cd ${path.dirname(r.gguf)} && ollama create my-model -f ${path.basename(r.modelfile)}`);
        else if (!o.adapterOnly)
          console.log(
            `no Ollama Modelfile: it needs the layout the model was trained with — give --template raw, alpaca, belle or vicuna; ${o.template === 'chat_template' ? 'the GGUF carries the model\'s own chat template' : "without --template the GGUF keeps the model's own chat_template, if it has one"}`,
          );
      } catch (e) {
        status('', true);
        fail(e);
      }
    });

  model
    .command('delete <dir>')
    .description('delete a model folder (only inside the app\'s model folder unless --force)')
    .option('--force', 'also outside the app\'s model folder', false)
    .action((dir: string, o: { force: boolean }) => {
      try {
        models.remove(dir, { allowOutside: o.force });
        console.log(`deleted ${path.resolve(dir)}`);
      } catch (e) {
        fail(e);
      }
    });
}
