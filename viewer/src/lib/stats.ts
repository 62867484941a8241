// Drawing statistics, read by the benchmark and the browser tests.

const KEEP = 4096;

export class Stats {
  /** milliseconds spent showing each attribution frame, any row (latest 4096) */
  drawTimes: number[] = [];
  /** attribution frames shown (any row), and how many of them the worker had prepared */
  draws = 0;
  preparedDraws = 0;
  /** milliseconds of main-thread work to show each played frame: every section (latest 4096) */
  frameTimes: number[] = [];
  /** frames shown while playing, and frames the clock asked for */
  playedFrames = 0;
  skippedFrames = 0;
  /** while playing: [frame, when it was due, when it was shown] (performance.now() ms) */
  playLog: [number, number, number][] = [];
  /** performance.now() when the first frame was drawn (the page is interactive) */
  readyAt = NaN;

  recordDraw(ms: number, prepared = false): void {
    this.draws++;
    if (prepared) this.preparedDraws++;
    push(this.drawTimes, ms);
  }

  recordPlayed(frame: number, due: number, shown: number, ms: number): void {
    this.playedFrames++;
    push(this.frameTimes, ms);
    if (this.playLog.length < KEEP) this.playLog.push([frame, due, shown]);
  }

  percentile(p: number, times = this.drawTimes): number {
    if (!times.length) return NaN;
    const sorted = [...times].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  reset(): void {
    this.drawTimes = [];
    this.frameTimes = [];
    this.playLog = [];
    this.playedFrames = this.skippedFrames = this.draws = this.preparedDraws = 0;
  }
}

function push(list: number[], value: number): void {
  list.push(value);
  if (list.length > KEEP) list.shift();
}
