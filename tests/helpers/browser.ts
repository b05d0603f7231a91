// browser.ts — Debian's Chromium driven by playwright-core (no browser download). LLMT_CHROMIUM overrides
// the binary. The flags keep Chromium from reaching out to the network, which this machine refuses.
// openPage gives the e2e suites one page with console errors collected; screenshot writes test-results/screens/.
import fs from 'node:fs';
import path from 'node:path';

import { type Browser, chromium, type Page } from 'playwright-core';

import { ROOT } from './app';

export const SCREENS = path.join(ROOT, 'test-results', 'screens');

export function chromiumPath(): string {
  const candidates = [process.env.LLMT_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].filter(Boolean) as string[];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) throw new Error(`no Chromium found (looked for ${candidates.join(', ')}); install Debian's \`chromium\` or set LLMT_CHROMIUM`);
  return found;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

/** Chromium with one page of this size; console errors and uncaught page errors go into `consoleErrors`. */
export async function openPage(viewport: { width: number; height: number }, consoleErrors?: string[]): Promise<{ browser: Browser; page: Page }> {
  const browser = await launchChromium();
  const page = await browser.newPage({ viewport });
  if (consoleErrors) {
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
  }
  return { browser, page };
}

/** test-results/screens/<name>.png (the whole page unless `fullPage` is false). */
export async function screenshot(page: Page, name: string, fullPage = true): Promise<void> {
  fs.mkdirSync(SCREENS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENS, `${name}.png`), fullPage });
}
