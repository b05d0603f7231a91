// client.ts — the renderer's one API client. Under Electron it calls the preload's functions
// (window.llmsTrain); in a browser it speaks HTTP + WebSocket to `llms-train serve`, with the per-launch
// token taken from the page URL. Both give the same typed methods and events, and both rethrow
// `{error}` envelopes as ApiClientError.
import type { EventName, EventPayload, MethodName, Req, Res } from '../../../src-main/api/contract';

export class ApiClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly fields?: { path: string; message: string }[],
  ) {
    super(message);
    this.name = 'ApiClientError';
  }
}

type Bridge = { [K in MethodName]: (req: Req<K>) => Promise<Res<K>> } & {
  on<E extends EventName>(event: E, listener: (payload: EventPayload<E>) => void): () => void;
};

declare global {
  interface Window {
    llmsTrain?: Bridge;
  }
}

export interface Client {
  call<K extends MethodName>(method: K, req: Req<K>): Promise<Res<K>>;
  on<E extends EventName>(event: E, listener: (payload: EventPayload<E>) => void): () => void;
  readonly transport: 'ipc' | 'http';
  /** WebSocket connection state in browser mode; always true under IPC. */
  connected(): boolean;
}

function ipcClient(bridge: Bridge): Client {
  return {
    transport: 'ipc',
    connected: () => true,
    async call(method, req) {
      try {
        return await (bridge[method] as (r: unknown) => Promise<never>)(req);
      } catch (err) {
        const e = err as { code?: string; message?: string; hint?: string; fields?: { path: string; message: string }[] };
        throw new ApiClientError(e.code ?? 'INTERNAL', e.message ?? String(err), e.hint, e.fields);
      }
    },
    on: (event, listener) => bridge.on(event, listener),
  };
}

export function tokenFromLocation(loc: Location = window.location): string | null {
  const fromUrl = new URLSearchParams(loc.search).get('token');
  if (fromUrl) {
    try {
      sessionStorage.setItem('llmt-token', fromUrl);
    } catch {
      /* storage may be disabled */
    }
    return fromUrl;
  }
  try {
    return sessionStorage.getItem('llmt-token');
  } catch {
    return null;
  }
}

function httpClient(token: string | null): Client {
  const listeners = new Map<string, Set<(p: unknown) => void>>();
  let ws: WebSocket | null = null;
  let open = false;
  let retry = 500;

  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(`${proto}//${location.host}/api/events?token=${encodeURIComponent(token ?? '')}`);
    ws.onopen = () => {
      open = true;
      retry = 500;
      for (const l of listeners.get('__connection') ?? []) l(true);
    };
    ws.onmessage = (m) => {
      try {
        const { event, payload } = JSON.parse(String(m.data)) as { event: string; payload: unknown };
        for (const l of listeners.get(event) ?? []) l(payload);
      } catch {
        /* ignore malformed frames */
      }
    };
    ws.onclose = () => {
      const was = open;
      open = false;
      if (was) for (const l of listeners.get('__connection') ?? []) l(false);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10_000);
    };
  };

  return {
    transport: 'http',
    connected: () => open,
    async call(method, req) {
      let res: Response;
      try {
        res = await fetch(`./api/${method}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-LLMT-Token': token ?? '' },
          body: JSON.stringify(req ?? {}),
        });
      } catch (err) {
        throw new ApiClientError('UNAVAILABLE', `cannot reach the LLMs-train server: ${(err as Error).message}`, 'Is `llms-train serve` still running?');
      }
      let body: { result?: unknown; error?: { code: string; message: string; hint?: string; fields?: { path: string; message: string }[] } };
      try {
        body = (await res.json()) as typeof body;
      } catch {
        throw new ApiClientError('INTERNAL', `the server answered ${res.status} without JSON`);
      }
      if (body.error) throw new ApiClientError(body.error.code, body.error.message, body.error.hint, body.error.fields);
      return body.result as never;
    },
    on(event, listener) {
      if (!ws) connect();
      let set = listeners.get(event);
      if (!set) listeners.set(event, (set = new Set()));
      const l = listener as (p: unknown) => void;
      set.add(l);
      return () => set!.delete(l);
    },
  };
}

let client: Client | undefined;

export function api(): Client {
  if (!client) client = window.llmsTrain ? ipcClient(window.llmsTrain) : httpClient(tokenFromLocation());
  return client;
}
