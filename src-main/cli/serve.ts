// serve.ts — start the core plus the browser-mode server and keep them until a signal; shared by
// `llms-train serve` and `llms-train start`'s fallback when no desktop window can open.
import { Core } from '../core/core.js';
import { registerDefaults } from '../core/defaults.js';
import { isLoopbackHost } from '../server/security.js';
import { startServer } from '../server/server.js';
import { rendererDir } from '../core/paths.js';

export interface ServeCliOptions {
  host: string;
  port: number;
  allowRemote: boolean;
}

export async function serve(opts: ServeCliOptions): Promise<void> {
  if (!isLoopbackHost(opts.host)) {
    if (!opts.allowRemote) {
      throw new Error(
        `--host ${opts.host} is not a loopback address. Browser mode binds to 127.0.0.1 unless you also pass --allow-remote (anyone who gets the token can then run jobs on this machine).`,
      );
    }
    console.warn(`WARNING: listening on ${opts.host}: the workbench is reachable from other machines; anyone with the token can run jobs here. Prefer an SSH tunnel to 127.0.0.1.`);
  }
  const core = new Core({ mode: 'browser' });
  registerDefaults(core);
  if (core.interruptedAtStart > 0) {
    console.log(`${core.interruptedAtStart} run(s) were still marked running from an earlier session and are now "interrupted" (resume them from the Runs screen).`);
  }
  let server;
  try {
    server = await startServer(core, { host: opts.host, port: opts.port, allowRemote: opts.allowRemote, rendererDir: rendererDir() });
  } catch (err) {
    core.close();
    throw err;
  }
  const s = core.status();
  console.log(`LLMs-train ${s.version} — data in ${core.home}`);
  console.log(`Engine: ${s.engine.available ? `llmt-engine ${s.engine.version}` : `unavailable (${s.engine.error})`}; ${s.gpus.length ? s.gpus.map((g) => g.name).join(', ') : 'CPU only'}`);
  console.log(`Open this URL in your browser: ${server.url}`);
  let closing = false;
  const shutdown = (sig: string) => {
    if (closing) return;
    closing = true;
    console.log(`\n${sig}: shutting down`);
    void server.close().finally(() => {
      core.close();
      process.exit(0);
    });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}
