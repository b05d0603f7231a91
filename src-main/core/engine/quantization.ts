// quantization.ts — which base-weight quantization a model loads with for inference (chat, predictions, evaluation).
// QLoRA trains an adapter against the base model's block linears quantized to 4 bits; answering with that adapter on
// the same 4-bit base gives the numbers it was trained with and fits the GPU it was trained on (a 7B base: ≈ 3.9 GB
// instead of 13.5 GB in bf16). "auto" therefore follows the adapter's run: the job.json RunService writes into a run's
// output folder (beside the final adapter; one level up from a checkpoint-N folder).
import fs from 'node:fs';
import path from 'node:path';

/** What a user may ask for: "auto" (as the adapter was trained), "none" (the weights as stored), "nf4" or "fp4". */
export type InferenceQuantization = 'auto' | 'none' | 'nf4' | 'fp4';
export const INFERENCE_QUANTIZATIONS: readonly InferenceQuantization[] = ['auto', 'none', 'nf4', 'fp4'];

/** The engine's quantization argument of the adapter's run ("nf4", "fp4", or the job's object form as JSON text), or
 *  null when the adapter did not come from a quantized run (or from no run this app can read). */
export function trainedQuantization(adapter: string | null | undefined): string | null {
  if (!adapter) return null;
  const dir = path.resolve(adapter);
  for (const d of [dir, path.dirname(dir)]) {
    let job: unknown;
    try {
      job = JSON.parse(fs.readFileSync(path.join(d, 'job.json'), 'utf8'));
    } catch {
      continue; // no job.json here (or not ours): look one level up, then give up
    }
    if (d !== dir && !/^checkpoint-\d+$/.test(path.basename(dir))) return null; // a parent's job is not this adapter's
    const q = (job as { quantization?: unknown } | null)?.quantization;
    if (q === 'nf4' || q === 'fp4') return q;
    if (q && typeof q === 'object') {
      const o = q as { type?: unknown; double_quant?: unknown };
      const type = o.type === 'fp4' ? 'fp4' : o.type === undefined || o.type === 'nf4' ? 'nf4' : null;
      if (!type) return null;
      return o.double_quant === false ? JSON.stringify({ type, double_quant: false }) : type;
    }
    return null;
  }
  return null;
}

/** The engine's quantization argument for loading `adapter`'s base: the asked one, or for "auto" its run's. */
export function resolveQuantization(asked: InferenceQuantization | null | undefined, adapter: string | null | undefined): string {
  const q = asked ?? 'auto';
  if (q === 'auto') return trainedQuantization(adapter) ?? 'none';
  return q;
}
