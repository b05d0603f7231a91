// defaults.ts — what a first start registers so the app opens on something usable with no download: the
// tiny demo model (created on first use) and the bundled sample dataset. Runs only when nothing is configured.
import fs from 'node:fs';
import path from 'node:path';

import type { Core } from './core.js';
import { appRoot } from './paths.js';
import { ensureDemoModel } from './runs/demo.js';

/**
 * With nothing configured yet, the app opens on its embedded defaults: the tiny demo model (created on first
 * use, well under a second) and the bundled sample dataset, so a first fine-tune needs no download.
 */
export function registerDefaults(core: Core): void {
  if (core.store.models.list().length === 0) {
    try {
      const dir = ensureDemoModel(core.home);
      core.store.models.upsert({ path: dir, name: 'LLMs-train demo (tiny LLaMA, 590k parameters)', family: 'llama', modelType: 'llama' });
    } catch (err) {
      console.warn(`the demo model could not be created: ${(err as Error).message}`);
    }
  }
  if (core.store.datasets.list().length === 0) {
    const dir = path.join(appRoot(), 'resources', 'datasets', 'promptcblue-demo');
    for (const split of ['train', 'dev', 'test']) {
      const file = path.join(dir, `${split}.json`);
      if (!fs.existsSync(file)) continue;
      const records = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim()).length;
      core.store.datasets.upsert({ path: file, name: `PromptCBLUE sample (${split})`, format: 'promptcblue', records });
    }
  }
}

