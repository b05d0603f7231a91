// upload.ts — a picked or dropped dataset file as importDataset takes it: text as it is, a gzip-compressed file
// (told by its first two bytes, as the server's reader tells it) as base64 — read as text, its bytes would be mangled.

/** The importDataset fields for `file`. */
export async function uploadFields(file: File): Promise<{ content: string; encoding?: 'base64' }> {
  const head = new Uint8Array(await file.slice(0, 2).arrayBuffer());
  if (!(head[0] === 0x1f && head[1] === 0x8b)) return { content: await file.text() };
  const bytes = new Uint8Array(await file.arrayBuffer());
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { content: btoa(bin), encoding: 'base64' };
}
