// progress.ts — a progress bar on stderr for long CLI commands: redrawn in place in a terminal, plain lines
// (every 10% and at the end) otherwise, so logs and CI output stay readable. stdout stays free for results.
export class Progress {
  private readonly tty: boolean;
  private lastDecile = -1;
  private t0 = Date.now();
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = Boolean(stream.isTTY);
  }

  /** `start`: items done before this process began (resumed), left out of the rate. */
  update(done: number, total: number, start = 0, extra = ''): void {
    const pct = total ? done / total : 1;
    const elapsed = (Date.now() - this.t0) / 1000;
    const rate = elapsed > 0 ? (done - start) / elapsed : 0;
    const eta = rate > 0 ? (total - done) / rate : 0;
    const tail = `${done}/${total} (${Math.floor(pct * 100)}%)${rate > 0 ? `  ${rate.toFixed(2)}/s  eta ${fmt(eta)}` : ''}${extra ? `  ${extra}` : ''}`;
    if (this.tty) {
      const width = 24;
      const fill = Math.round(pct * width);
      this.stream.write(`\r${this.label} [${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${tail}\x1b[K`);
      this.drawn = true;
      return;
    }
    const decile = Math.floor(pct * 10);
    if (decile === this.lastDecile) return;
    this.lastDecile = decile;
    this.stream.write(`${this.label}: ${tail}\n`);
  }

  /** Ends the in-place line (TTY). */
  done(): void {
    if (this.tty && this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}

function fmt(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${Math.round(s)}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}
