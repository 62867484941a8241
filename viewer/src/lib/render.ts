// Rendering attribution frames and scrubber strips (method.md 6) into reusable buffers.
// Shared by the render worker (render.worker.ts) and the main thread, which draws a frame
// itself only when the worker has not prepared it yet.

import type { AttributionFile } from "./codec";
import { channelView, smoothToRGBA } from "./draw";
import type { Direction, View } from "./types";

export interface RenderSpec {
  direction: Direction;
  view: View;
  /** unit RGB per feature of the layer, (K, 3) */
  hues: number[][];
}

/** Scratch buffers reused from frame to frame (no allocation per frame). */
export class FrameRenderer {
  private codes = new Uint16Array(0);
  private rgb = new Float64Array(0);
  private acc = new Float64Array(0);

  private prepare(data: AttributionFile): void {
    const { height: h, width: w } = data.header;
    if (this.codes.length !== data.frameSize) this.codes = new Uint16Array(data.frameSize);
    if (this.rgb.length !== h * w * 3) {
      this.rgb = new Float64Array(h * w * 3);
      this.acc = new Float64Array(h * w * 3);
    }
  }

  private channels(data: AttributionFile, t: number, spec: RenderSpec): Float64Array {
    this.prepare(data);
    const { height, width, features } = data.header;
    const codes = data.decodeFrame(t, this.codes);
    return channelView({ height, width, features, codes, levels: data.levelsOf(t),
                         residualLevels: data.residualLevelsOf(t), hues: spec.hues },
                       spec.direction, spec.view, this.rgb);
  }

  /** Straight RGBA bytes (h * w * 4) of frame t. */
  frame(data: AttributionFile, t: number, spec: RenderSpec,
        out = new Uint8ClampedArray(data.header.height * data.header.width * 4)): Uint8ClampedArray<ArrayBuffer> {
    const { height: h, width: w } = data.header;
    smoothToRGBA(this.channels(data, t, spec), h, w, out, 0, w, w, 0, this.acc);
    return out as Uint8ClampedArray<ArrayBuffer>;
  }

  /** Columns [c0, c1) of frame t written at column t * (c1 - c0) of an image `outWidth` wide. */
  stripFrame(data: AttributionFile, t: number, spec: RenderSpec, c0: number, c1: number,
             out: Uint8ClampedArray, outWidth: number, outOffset: number): void {
    const { height: h, width: w } = data.header;
    smoothToRGBA(this.channels(data, t, spec), h, w, out, c0, c1, outWidth, outOffset, this.acc);
  }
}

/** Cache key of one drawn frame: the file names the layer, trajectory and output. */
export function frameKey(file: string, t: number, spec: { direction: Direction; view: View }): string {
  return `${file}#${t}|${spec.direction}|${spec.view}`;
}

/** The frames worth preparing after frame t: `count` of them in the play direction. */
export function framesAhead(t: number, direction: 1 | -1, count: number, length: number): number[] {
  const out: number[] = [];
  for (let i = 1; i <= count; i++) {
    const s = t + direction * i;
    if (s < 0 || s >= length) break;
    out.push(s);
  }
  return out;
}
