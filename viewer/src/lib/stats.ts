// Drawing statistics, read by the benchmark and the browser tests.

export class Stats {
  /** milliseconds spent drawing each attribution frame (latest 4096) */
  drawTimes: number[] = [];
  /** frames shown while playing, and frames the clock asked for */
  playedFrames = 0;
  skippedFrames = 0;
  /** attribution frames drawn (any row) */
  draws = 0;

  recordDraw(ms: number): void {
    this.draws++;
    this.drawTimes.push(ms);
    if (this.drawTimes.length > 4096) this.drawTimes.shift();
  }

  percentile(p: number): number {
    if (!this.drawTimes.length) return NaN;
    const sorted = [...this.drawTimes].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  reset(): void {
    this.drawTimes = [];
    this.playedFrames = this.skippedFrames = this.draws = 0;
  }
}
