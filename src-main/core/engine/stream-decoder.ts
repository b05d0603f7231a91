// stream-decoder.ts — turns generated token ids into text deltas as they arrive. A byte-level BPE or a
// SentencePiece byte-fallback model emits one multi-byte UTF-8 character (every Chinese character) over several
// tokens; decoding those one by one gives U+FFFD. Like text-generation-inference, each step decodes a short
// window of recent ids with and without the new one and emits the difference only once it does not end in an
// incomplete character, so every delta holds complete characters and the deltas add up to the whole text.
export class StreamDecoder {
  private readonly ids: number[] = [];
  private prefix = 0;
  private read = 0;
  private emitted = '';

  /** `skip`: ids that are never text (eos, bos, pad, the template's special ids). */
  constructor(
    private readonly decode: (ids: number[]) => string,
    private readonly skip: ReadonlySet<number> = new Set(),
  ) {}

  /** Adds one generated id; returns the new complete text ('' while a character is incomplete). */
  push(id: number): string {
    if (this.skip.has(id)) return '';
    this.ids.push(id);
    const before = this.decode(this.ids.slice(this.prefix, this.read));
    const now = this.decode(this.ids.slice(this.prefix));
    if (now.length > before.length && !now.endsWith('\uFFFD') && now.startsWith(before)) {
      const delta = now.slice(before.length);
      this.prefix = this.read;
      this.read = this.ids.length;
      this.emitted += delta;
      return delta;
    }
    return '';
  }

  /** The whole text of every id pushed (the authoritative answer). */
  text(): string {
    return this.decode(this.ids);
  }

  /** At the end: what the deltas have not said yet (e.g. a genuinely invalid byte sequence, shown as U+FFFD). */
  flush(): string {
    const all = this.text();
    const rest = all.startsWith(this.emitted) ? all.slice(this.emitted.length) : '';
    this.emitted = all;
    return rest;
  }

  get count(): number {
    return this.ids.length;
  }
}
