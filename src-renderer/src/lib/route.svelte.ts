// route.svelte.ts — the hash route as rune state: `#/runs/12?x=1` → {screen: 'runs', args: ['12'], query}.
// Hash routes work the same from app:// (desktop) and from the loopback server (browser mode).
export interface Route {
  screen: string;
  args: string[];
  query: URLSearchParams;
}

function parse(hash: string): Route {
  const h = hash.replace(/^#\/?/, '');
  const [p = '', q = ''] = h.split('?');
  const parts = p.split('/').filter(Boolean).map(decodeURIComponent);
  return { screen: parts[0] ?? '', args: parts.slice(1), query: new URLSearchParams(q) };
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
