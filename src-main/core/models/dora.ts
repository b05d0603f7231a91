// dora.ts — DoRA adapters (PEFT's LoraConfig(use_dora=True): weight-decomposed LoRA) as the app meets them. The
// engine trains, runs and merges them itself (docs/formats.md, docs/models.md); llama.cpp's adapter GGUF has no
// place for their magnitude vectors, so the adapter-only export asks for this.
import fs from 'node:fs';
import path from 'node:path';

/** Whether `dir` holds a DoRA adapter (its adapter_config.json says use_dora true). */
export function isDoraAdapter(dir: string): boolean {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as unknown;
    return !!j && typeof j === 'object' && (j as Record<string, unknown>).use_dora === true;
  } catch {
    return false;
  }
}
