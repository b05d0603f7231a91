// sender.ts — the IPC sender check, free of Electron imports so it can be tested alone: a call is served
// only if it comes from our window's top frame on our app:// origin.
export interface SenderInfo {
  senderId: number;
  frame: { url: string; parent: unknown } | null;
}

export function senderProblem(info: SenderInfo, windowId: number, origin: string): string | null {
  if (info.senderId !== windowId) return 'IPC from an unknown window';
  const frame = info.frame;
  if (!frame) return 'IPC from a frame that is gone';
  if (frame.parent !== null) return 'IPC from a sub-frame';
  let frameOrigin: string;
  try {
    // Not URL.origin: for a custom scheme such as app:// Node's URL gives the opaque origin "null".
    const u = new URL(frame.url);
    frameOrigin = `${u.protocol}//${u.host}`;
  } catch {
    return 'IPC from a frame without a URL';
  }
  return frameOrigin === origin ? null : `IPC from an unexpected origin ${frameOrigin}`;
}
