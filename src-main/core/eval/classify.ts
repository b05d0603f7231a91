// classify.ts — accuracy of a model on classification records (PromptCBLUE records with answer_choices):
// greedy generation from each prompt in its training layout (the .tok sample up to and including the first
// trained token), the prediction being the answer choice named in the generated text (metrics.ts pickChoice).
import { loadEngine } from '../engine/native.js';
import type { TokReader } from '../data/tokfile.js';
import type { Tokenizer } from '../data/tokenizer/types.js';
import { pickChoice } from './metrics.js';

export interface ClsRecord {
  target: string;
  type?: string;
  answer_choices?: string[] | null;
}

export interface ClsResult {
  accuracy: number;
  correct: number;
  total: number;
  /** predictions that contain none of the choices */
  unmatched: number;
}

/** The answer choice a generation names (see metrics.ts: earliest occurrence, ties the longest), or null. */
export { pickChoice };

/** records[i] must be sample i of `tok` (prepared from the same file, nothing skipped). */
export async function classificationAccuracy(modelDir: string, tokenizer: Tokenizer, records: ClsRecord[], tok: TokReader, maxNewTokens = 24): Promise<ClsResult> {
  const engine = loadEngine();
  if (!engine.addon) throw new Error(engine.error ?? 'the engine is unavailable');
  const model = await engine.addon.loadModel(modelDir);
  let correct = 0;
  let total = 0;
  let unmatched = 0;
  try {
    // the model's eos ids (a list counts whole: Llama-3-Instruct stops at <|eot_id|> too) and the tokenizer's
    const stop = [...new Set([...model.info().eos_ids, ...tokenizer.eosIds])];
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      if (!r.answer_choices || r.answer_choices.length === 0) continue;
      const s = tok.sample(i);
      const first = s.labels.findIndex((l) => l !== -100);
      if (first < 0) continue;
      const prompt = s.input_ids.slice(0, first + 1);
      const out = await model.generate(prompt, { do_sample: false, max_new_tokens: maxNewTokens, ...(stop.length ? { stop_ids: stop } : {}) });
      const text = tokenizer.decode(out.ids.filter((id) => !stop.includes(id)));
      const pred = pickChoice(text, r.answer_choices);
      total++;
      if (pred === null) unmatched++;
      else if (pred === r.target.trim()) correct++;
    }
  } finally {
    model.free();
  }
  return { accuracy: total ? correct / total : 0, correct, total, unmatched };
}
