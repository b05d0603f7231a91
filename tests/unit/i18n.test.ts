// Both UI languages cover the same strings with the same placeholders; no empty string slips through.
import { describe, expect, it } from 'vitest';

import { en, format, locales, tables, zhCN } from '../../src-renderer/src/i18n/strings';

const placeholders = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

describe('i18n tables', () => {
  it('has the same keys in English and 简体中文', () => {
    expect(Object.keys(zhCN).sort()).toEqual(Object.keys(en).sort());
  });

  it('keeps the same placeholders in every translation', () => {
    for (const [key, text] of Object.entries(en)) {
      expect({ key, p: placeholders(zhCN[key as keyof typeof en]) }).toEqual({ key, p: placeholders(text) });
    }
  });

  it('has no empty strings, and the Chinese table is really translated', () => {
    for (const table of Object.values(tables)) for (const v of Object.values(table)) expect(v.trim()).not.toBe('');
    const same = Object.keys(en).filter((k) => en[k as keyof typeof en] === zhCN[k as keyof typeof en] && /[a-z]{3}/.test(en[k as keyof typeof en].replace(/\{\w+\}/g, '')));
    expect(same).toEqual(['app.name']);
  });

  it('offers both locales and formats placeholders', () => {
    expect(locales.map((l) => l.id)).toEqual(['en', 'zh-CN']);
    expect(format('{count} GPU(s): {names}', { count: 2, names: 'A, B' })).toBe('2 GPU(s): A, B');
    expect(format('keep {unknown}', {})).toBe('keep {unknown}');
  });
});
