// i18n.svelte.ts — the current locale as rune state and t(), so every string re-renders on a switch.
// The choice is saved in Settings (SQLite) and mirrored in localStorage for the first paint.
import { type Locale, type StringKey, format, tables } from './strings';

function initial(): Locale {
  try {
    const saved = localStorage.getItem('llmt-locale');
    if (saved === 'en' || saved === 'zh-CN') return saved;
  } catch {
    /* storage may be disabled */
  }
  return navigator.language?.toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
}

export const i18n = $state<{ locale: Locale }>({ locale: initial() });

export function setLocale(locale: Locale): void {
  i18n.locale = locale;
  document.documentElement.lang = locale;
  try {
    localStorage.setItem('llmt-locale', locale);
  } catch {
    /* ignore */
  }
}

export function t(key: StringKey, params?: Record<string, string | number>): string {
  return format(tables[i18n.locale][key] ?? tables.en[key], params);
}

/** A date and time written the way the UI language writes it (not the browser's locale). */
export function dateTime(v: string | number | Date): string {
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString(i18n.locale);
}
