// ipc.ts — serves the API contract to the window: one `api:<method>` channel per method, each call's
// sender checked (our window, our app:// origin), answered with the dispatcher's envelope; push events
// go out on `event:<name>`. Registering a channel twice fails at start-up.
import { type BrowserWindow, type IpcMainInvokeEvent, ipcMain } from 'electron';

import { methodNames } from '../api/contract.js';
import type { Core } from '../core/core.js';
import { senderProblem } from './sender.js';

export function checkSender(event: IpcMainInvokeEvent, win: BrowserWindow, origin: string): string | null {
  return senderProblem({ senderId: event.sender.id, frame: event.senderFrame }, win.webContents.id, origin);
}

const registered = new Set<string>();

export function registerIpc(core: Core, win: BrowserWindow, origin: string): void {
  for (const name of methodNames) {
    const channel = `api:${name}`;
    if (registered.has(channel)) throw new Error(`IPC channel ${channel} registered twice`);
    registered.add(channel);
    ipcMain.handle(channel, async (event, body: unknown) => {
      const bad = checkSender(event, win, origin);
      if (bad) return { ok: false, error: { code: 'UNAUTHORIZED', message: bad } };
      return core.dispatcher.call(name, body);
    });
  }
  const unsubscribe = core.events.subscribe((name, payload) => {
    if (!win.isDestroyed()) win.webContents.send(`event:${name}`, payload);
  });
  win.webContents.on('did-finish-load', () => core.publishStatus(true));
  win.on('closed', () => {
    unsubscribe();
    for (const name of methodNames) {
      ipcMain.removeHandler(`api:${name}`);
      registered.delete(`api:${name}`);
    }
  });
}
