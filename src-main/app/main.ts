// main.ts — the Electron shell: one window on the app:// scheme serving the built renderer, locked down
// (context isolation, sandbox, no Node in pages, a CSP, no navigation or new windows, every permission
// denied), with the API contract served over IPC by ipc.ts. The only folder that imports `electron`.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { BrowserWindow, app, dialog, net, protocol, session, shell, utilityProcess } from 'electron';

import { Core } from '../core/core.js';
import { electronLauncher } from '../core/engine/host.js';
import { appRoot, rendererDir } from '../core/paths.js';
import { CONTENT_SECURITY_POLICY, rendererFile } from '../server/security.js';
import { registerDefaults } from '../core/defaults.js';
import { registerIpc } from './ipc.js';

const SCHEME = 'app';
const ORIGIN = `${SCHEME}://llms-train`;

protocol.registerSchemesAsPrivileged([
  { scheme: SCHEME, privileges: { standard: true, secure: true, supportFetchAPI: true } },
]);

app.enableSandbox();

/** better-sqlite3 built against Electron's ABI (scripts/postinstall.mjs puts it here when it can). */
function electronSqliteBinding(): string | undefined {
  const p = path.join(appRoot(), 'native', 'electron', 'better_sqlite3.node');
  return fs.existsSync(p) ? p : undefined;
}

function serveRenderer(): void {
  const root = path.resolve(rendererDir());
  protocol.handle(SCHEME, async (request) => {
    const file = rendererFile(root, new URL(request.url).pathname);
    if (!file) return new Response('not found', { status: 404 });
    const res = await net.fetch(pathToFileURL(file).href);
    const headers = new Headers(res.headers);
    headers.set('Content-Security-Policy', CONTENT_SECURITY_POLICY);
    headers.set('X-Content-Type-Options', 'nosniff');
    return new Response(res.body, { status: res.status, headers });
  });
}

function createWindow(core: Core): BrowserWindow {
  const win = new BrowserWindow({
    width: 1280,
    height: 820,
    minWidth: 900,
    minHeight: 600,
    title: 'LLMs-train',
    show: false,
    webPreferences: {
      preload: path.join(__dirname, 'preload.js'),
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      spellcheck: false,
    },
  });
  win.once('ready-to-show', () => win.show());
  // No navigation away from the app, no new windows; http(s) links open in the user's browser.
  win.webContents.on('will-navigate', (event, url) => {
    if (!url.startsWith(ORIGIN + '/')) event.preventDefault();
  });
  win.webContents.setWindowOpenHandler(({ url }) => {
    if (/^https?:\/\//.test(url)) void shell.openExternal(url);
    return { action: 'deny' };
  });
  registerIpc(core, win, ORIGIN);
  void win.loadURL(`${ORIGIN}/index.html`);
  return win;
}

async function main(): Promise<void> {
  await app.whenReady();
  session.defaultSession.setPermissionRequestHandler((_wc, _permission, callback) => callback(false));
  session.defaultSession.setPermissionCheckHandler(() => false);
  app.on('web-contents-created', (_e, contents) => {
    contents.on('will-attach-webview', (event) => event.preventDefault());
  });
  serveRenderer();
  const binding = electronSqliteBinding();
  // interactive generation runs in an Electron utility process, so an engine crash cannot take the window down
  const core = new Core({ mode: 'desktop', hostLauncher: electronLauncher(utilityProcess), ...(binding ? { sqliteBinding: binding } : {}) });
  registerDefaults(core);
  createWindow(core);
  app.on('window-all-closed', () => {
    core.close();
    app.quit();
  });
  if (process.env.LLMS_TRAIN_SMOKE === '1') {
    // Electron smoke test: report that the window loaded, then quit.
    const [win] = BrowserWindow.getAllWindows();
    win?.webContents.once('did-finish-load', async () => {
      const title = await win.webContents.executeJavaScript('document.title');
      const hasApi = await win.webContents.executeJavaScript('typeof window.llmsTrain?.getStatus === "function" && typeof require === "undefined"');
      console.log(`SMOKE ${JSON.stringify({ title, hasApi })}`);
      app.quit();
    });
  }
}

main().catch((err: Error & { hint?: string }) => {
  console.error('LLMs-train failed to start:', err);
  dialog.showErrorBox('LLMs-train could not start', `${err.message}${err.hint ? `\n\n${err.hint}` : ''}\n\nBrowser mode (\`llms-train serve\`) may still work.`);
  app.exit(1);
});
