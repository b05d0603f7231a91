// What a shell + commander hand specFromFlags for argv words: `--key value` pairs (numbers parsed), a bare
// `--flag` as true.
export function flags(args: string[]): Record<string, string | number | boolean> {
  const o: Record<string, string | number | boolean> = {};
  for (let i = 0; i < args.length; i++) {
    const k = args[i]!.replace(/^--/, '');
    const v = args[i + 1];
    if (v === undefined || v.startsWith('--')) o[k] = true;
    else {
      o[k] = /^-?\d+(\.\d+)?(e-?\d+)?$/i.test(v) ? Number(v) : v;
      i++;
    }
  }
  return o;
}
