// strings/common.ts — the common screen's strings (English and 简体中文); merged into ../strings.ts.
export const en = {
  'nav.menu': 'Menu',
} as const;

export const zh: Record<keyof typeof en, string> = {
  'nav.menu': '菜单',
};
