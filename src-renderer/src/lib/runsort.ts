// runsort.ts — the runs list's sort (Runs and Compare's picker): which column, which direction, kept for the tab
// like the wizard keeps its draft (sessionStorage, a module copy where storage is refused), so leaving the screen
// or reloading keeps it. The sorting itself happens in the database over every run (listRunsPage).
import type { RunSort, SortDir } from '../../../src-main/api/contract';

export interface SortChoice {
  sort: RunSort;
  dir: SortDir;
}

/** every column the core sorts by, and the direction a first click picks (lowest loss first, newest/largest first) */
export const FIRST_DIR = {
  created: 'desc',
  finished: 'desc',
  name: 'asc',
  status: 'asc',
  bestEval: 'asc',
  finalLoss: 'asc',
  lr: 'asc',
  loraR: 'asc',
  tokens: 'desc',
  duration: 'desc',
} as const satisfies Record<RunSort, SortDir>;
export const SORT_KEYS = Object.keys(FIRST_DIR) as RunSort[];
export const DEFAULT_SORT: SortChoice = { sort: 'created', dir: 'desc' };

const memory = new Map<string, string>();

export function readSort(key: string): SortChoice {
  let raw = memory.get(key) ?? null;
  try {
    raw = sessionStorage.getItem(key) ?? raw;
  } catch {
    /* storage disabled: the module copy only */
  }
  try {
    const v = raw ? (JSON.parse(raw) as Partial<SortChoice>) : null;
    if (v && SORT_KEYS.includes(v.sort as RunSort) && (v.dir === 'asc' || v.dir === 'desc')) return { sort: v.sort as RunSort, dir: v.dir };
  } catch {
    /* a damaged value: the default */
  }
  return { ...DEFAULT_SORT };
}

export function writeSort(key: string, v: SortChoice): void {
  const raw = JSON.stringify(v);
  memory.set(key, raw);
  try {
    sessionStorage.setItem(key, raw);
  } catch {
    /* ignore */
  }
}

/** A click on a column's header: the same column turns around, another starts in its natural direction. */
export function nextSort(cur: SortChoice, sort: RunSort): SortChoice {
  return cur.sort === sort ? { sort, dir: cur.dir === 'asc' ? 'desc' : 'asc' } : { sort, dir: FIRST_DIR[sort] };
}

export function ariaSort(cur: SortChoice, sort: RunSort): 'ascending' | 'descending' | 'none' {
  return cur.sort !== sort ? 'none' : cur.dir === 'asc' ? 'ascending' : 'descending';
}
