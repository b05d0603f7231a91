// strings/chat.ts — the chat screen's strings (English and 简体中文); merged into ../strings.ts.
export const en = {
} as const;

export const zh: Record<keyof typeof en, string> = {
};
