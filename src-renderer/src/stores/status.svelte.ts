// status.svelte.ts — the app status (version, engine, devices) fed by the `status` push event,
// throttled: applied at most every 500 ms, and always within 5 s of the latest event.
import type { AppStatus } from '../../../src-main/api/contract';
import { api } from '../api/client';

export const statusState = $state<{ status: AppStatus | null; connected: boolean; error: string | null }>({
  status: null,
  connected: false,
  error: null,
});

let pending: AppStatus | null = null;
let lastApplied = 0;
let timer: ReturnType<typeof setTimeout> | null = null;

function apply(): void {
  timer = null;
  if (pending) {
    statusState.status = pending;
    pending = null;
    lastApplied = Date.now();
  }
}

function receive(s: AppStatus): void {
  pending = s;
  const wait = Math.max(0, 500 - (Date.now() - lastApplied));
  if (wait === 0) apply();
  else if (!timer) timer = setTimeout(apply, Math.min(wait, 5000));
}

export function startStatus(): void {
  const client = api();
  client.on('status', (s) => {
    statusState.connected = true;
    receive(s);
  });
  if (client.transport === 'http') {
    // connection changes arrive on a private channel of the HTTP client
    (client.on as (e: string, l: (p: unknown) => void) => () => void)('__connection', (up) => {
      statusState.connected = up === true;
    });
  } else {
    statusState.connected = true;
  }
  client
    .call('getStatus', {})
    .then((s) => {
      statusState.connected = true;
      receive(s);
    })
    .catch((err: Error) => {
      statusState.error = err.message;
    });
}
