// The Electron IPC sender check: only our window's top frame on app://llms-train is served.
import { describe, expect, it } from 'vitest';

import { senderProblem } from '../../src-main/app/sender';

const ORIGIN = 'app://llms-train';

describe('senderProblem', () => {
  it('accepts our top frame', () => {
    expect(senderProblem({ senderId: 1, frame: { url: `${ORIGIN}/index.html#/runs`, parent: null } }, 1, ORIGIN)).toBeNull();
  });
  it('refuses other windows, sub-frames, gone frames and other origins', () => {
    expect(senderProblem({ senderId: 2, frame: { url: `${ORIGIN}/index.html`, parent: null } }, 1, ORIGIN)).toMatch(/unknown window/);
    expect(senderProblem({ senderId: 1, frame: { url: `${ORIGIN}/index.html`, parent: {} } }, 1, ORIGIN)).toMatch(/sub-frame/);
    expect(senderProblem({ senderId: 1, frame: null }, 1, ORIGIN)).toMatch(/gone/);
    expect(senderProblem({ senderId: 1, frame: { url: 'https://evil.example/', parent: null } }, 1, ORIGIN)).toMatch(/unexpected origin https:\/\/evil.example/);
    expect(senderProblem({ senderId: 1, frame: { url: 'file:///etc/passwd', parent: null } }, 1, ORIGIN)).toMatch(/unexpected origin/);
    expect(senderProblem({ senderId: 1, frame: { url: 'not a url', parent: null } }, 1, ORIGIN)).toMatch(/without a URL/);
  });
});
