// Scrubber strips: a thin slice of every frame, laid side by side along time (method.md 6).

import type { AttributionFile } from "./codec";
import { channelView, scrubColumns, smoothToRGBA, type Frame } from "./draw";
import type { Direction, LayerEntry, View } from "./types";

/** Positions (in strip pixels) of a window of `visible` frames centred on `frame`. */
export function windowStart(frame: number, visible: number): number {
  return frame - Math.floor(visible / 2);
}

/**
 * Computes the attribution strip of one (file, direction, view) progressively, a few
 * frames per slice of time, so that playback stays smooth. `onProgress` is called after
 * each slice; `cancel()` stops it.
 */
export class AttributionStrip {
  readonly canvas: HTMLCanvasElement;
  readonly columns: [number, number];
  done = 0;
  private cancelled = false;
  private image: ImageData;
  private scratch: Uint16Array;

  constructor(private data: AttributionFile, private layer: LayerEntry, private direction: Direction,
              private view: View, range: [number, number], private onProgress: () => void) {
    const { frames, height, width } = data.header;
    this.columns = scrubColumns(width, range);
    const sw = this.columns[1] - this.columns[0];
    this.canvas = document.createElement("canvas");
    this.canvas.width = frames * sw;
    this.canvas.height = height;
    this.image = new ImageData(frames * sw, height);
    this.scratch = new Uint16Array(data.frameSize);
    setTimeout(() => this.work(), 0);
  }

  cancel(): void {
    this.cancelled = true;
  }

  private work(): void {
    if (this.cancelled) return;
    const { frames, height, width, features } = this.data.header;
    const [c0, c1] = this.columns;
    const sw = c1 - c0;
    const start = performance.now();
    const first = this.done;
    while (this.done < frames && performance.now() - start < 6) {
      const codes = this.data.decodeFrame(this.done, this.scratch);
      const frame: Frame = { height, width, features, codes, levels: this.data.levels, hues: this.layer.hues };
      const rgb = channelView(frame, this.direction, this.view);
      smoothToRGBA(rgb, height, width, this.image.data, c0, c1, frames * sw, this.done * sw);
      this.done++;
    }
    const ctx = this.canvas.getContext("2d")!;
    ctx.putImageData(this.image, 0, 0, first * sw, 0, (this.done - first) * sw, height);
    this.onProgress();
    if (this.done < frames) setTimeout(() => this.work(), 0);
  }
}
