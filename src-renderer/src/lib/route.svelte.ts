// route.svelte.ts — the hash route as rune state: `#/runs/12?x=1` → {screen: 'runs', args: ['12'], query}.
// Hash routes work the same from app:// (desktop) and from the loopback server (browser mode).
export interface Route {
  screen: string;
  args: string[];
  query: URLSearchParams;
}

/** decodeURIComponent that keeps a malformed segment (`%E0%A4%A`) as typed instead of throwing */
function decodeSegment(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

export function parse(hash: string): Route {
  const h = hash.replace(/^#\/?/, '');
  const i = h.indexOf('?');
  const p = i < 0 ? h : h.slice(0, i);
  const q = i < 0 ? '' : h.slice(i + 1);
  const parts = p.split('/').filter(Boolean).map(decodeSegment);
  let query: URLSearchParams;
  try {
    query = new URLSearchParams(q);
  } catch {
    query = new URLSearchParams();
  }
  return { screen: parts[0] ?? '', args: parts.slice(1), query };
}

/** A run id as routes carry it (`#/runs/12`): a positive safe integer written in decimal digits, else null. */
export function parseRunId(arg: string | undefined): number | null {
  if (arg === undefined || !/^[1-9]\d{0,15}$/.test(arg)) return null;
  const n = Number(arg);
  return Number.isSafeInteger(n) ? n : null;
}

export const route = $state<{ current: Route }>({ current: parse(typeof location === 'undefined' ? '' : location.hash) });

if (typeof window !== 'undefined') {
  window.addEventListener('hashchange', () => (route.current = parse(location.hash)));
}

/** Navigate: navigate('runs', 12) → #/runs/12; query values are strings. */
export function navigate(screen: string, ...rest: (string | number | Record<string, string>)[]): void {
  const args = rest.filter((r) => typeof r !== 'object').map((r) => encodeURIComponent(String(r)));
  const q = rest.find((r) => typeof r === 'object') as Record<string, string> | undefined;
  const query = q ? `?${new URLSearchParams(q).toString()}` : '';
  location.hash = `#/${[screen, ...args].join('/')}${query}`;
}
