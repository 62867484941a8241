// Drawing attribution as method.md section 6 specifies, from decoded planes (codec.ts).
// Pure functions over typed arrays: no DOM here except the ImageData they fill.

import type { Direction, View } from "./types";

export const KERNEL_SIZE = 15;

/** exp(-distance to the centre) inside the inscribed disk (radius 7), else 0; not normalised. */
export function diskKernel(size = KERNEL_SIZE): Float64Array {
  const r = (size - 1) / 2;
  const out = new Float64Array(size * size);
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < size; j++) {
      const d = Math.hypot(i - r, j - r);
      out[i * size + j] = d <= r ? Math.exp(-d) : 0;
    }
  }
  return out;
}

const KERNEL = diskKernel();
const R = (KERNEL_SIZE - 1) / 2;
/** Half-width of the disk in each kernel row (|dx| <= HALF[dy + R] where the weight > 0). */
const HALF = Array.from({ length: KERNEL_SIZE }, (_, i) => {
  let half = -1;
  for (let j = R; j < KERNEL_SIZE; j++) if (KERNEL[i * KERNEL_SIZE + j] > 0) half = j - R;
  return half;
});

export interface Frame {
  height: number;
  width: number;
  features: number;
  /** codes (2 (K + 1) planes of h * w) */
  codes: Uint16Array;
  /** code -> value of the features' planes */
  levels: Float64Array;
  /** code -> value of the residual's planes */
  residualLevels: Float64Array;
  /** unit RGB per feature, (K, 3) */
  hues: number[][];
}

/** RGB (h * w * 3) before smoothing: the channel view of the directed planes. */
export function channelView(frame: Frame, direction: Direction, view: View,
                            out = new Float64Array(frame.height * frame.width * 3)): Float64Array {
  const { height: h, width: w, features: K, codes, hues } = frame;
  const size = h * w;
  const half = (K + 1) * size;
  const usePos = direction !== "neg", useNeg = direction !== "pos";
  out.fill(0);
  // plane p (a feature, or K for the residual) scaled by an RGB colour
  const add = (p: number, r: number, g: number, b: number) => {
    const base = p * size;
    const levels = p === K ? frame.residualLevels : frame.levels;
    for (let c = 0; c < size; c++) {
      let v = 0;
      if (usePos) { const code = codes[base + c]; if (code) v += levels[code]; }
      if (useNeg) { const code = codes[half + base + c]; if (code) v += levels[code]; }
      if (v !== 0) {
        out[3 * c] += v * r;
        out[3 * c + 1] += v * g;
        out[3 * c + 2] += v * b;
      }
    }
  };
  if (view === "prin" || view === "all") {
    for (let k = 0; k < K; k++) add(k, hues[k][0], hues[k][1], hues[k][2]);
    if (view === "all") add(K, 1, 1, 1);
  } else if (view === "res") {
    add(K, 1, 1, 1);
  } else {
    const k = Number(view);
    if (Number.isInteger(k) && k >= 0 && k < K) add(k, hues[k][0], hues[k][1], hues[k][2]);
  }
  return out;
}

/**
 * Smooth `rgb` (h * w * 3) with the disk kernel ("same", zeros outside) and convert to
 * RGBA with opacity b = min(1, ||rgb||), colour rgb / b, written as bytes into `rgba`
 * (columns [c0, c1) of an image `outWidth` wide starting at column `outOffset`).
 */
export function smoothToRGBA(rgb: Float64Array, h: number, w: number, rgba: Uint8ClampedArray,
                             c0 = 0, c1 = w, outWidth = w, outOffset = 0,
                             acc = new Float64Array(h * w * 3)): void {
  acc.fill(0);
  // Scatter every non-zero input into the output pixels (in columns [c0, c1)) it reaches.
  const lo = Math.max(0, c0 - R), hi = Math.min(w, c1 + R);
  for (let i = 0; i < h; i++) {
    const ylo = Math.max(0, i - R), yhi = Math.min(h - 1, i + R);
    for (let j = lo; j < hi; j++) {
      const s = 3 * (i * w + j);
      const r = rgb[s], g = rgb[s + 1], b = rgb[s + 2];
      if (r === 0 && g === 0 && b === 0) continue;
      for (let y = ylo; y <= yhi; y++) {
        const half = HALF[y - i + R];
        const xlo = Math.max(c0, j - half), xhi = Math.min(c1 - 1, j + half);
        const krow = (y - i + R) * KERNEL_SIZE + R - j;
        let t = 3 * (y * w + xlo);
        for (let x = xlo; x <= xhi; x++, t += 3) {
          const k = KERNEL[krow + x];
          acc[t] += k * r;
          acc[t + 1] += k * g;
          acc[t + 2] += k * b;
        }
      }
    }
  }
  for (let y = 0; y < h; y++) {
    for (let x = c0; x < c1; x++) {
      const s = 3 * (y * w + x);
      const r = acc[s], g = acc[s + 1], b = acc[s + 2];
      const alpha = Math.min(1, Math.sqrt(r * r + g * g + b * b));
      const o = 4 * (y * outWidth + outOffset + (x - c0));
      if (alpha === 0) {
        rgba[o] = rgba[o + 1] = rgba[o + 2] = rgba[o + 3] = 0;
      } else {
        rgba[o] = roundHalfEven(Math.min(1, Math.max(0, r / alpha)) * 255);
        rgba[o + 1] = roundHalfEven(Math.min(1, Math.max(0, g / alpha)) * 255);
        rgba[o + 2] = roundHalfEven(Math.min(1, Math.max(0, b / alpha)) * 255);
        rgba[o + 3] = roundHalfEven(alpha * 255);
      }
    }
  }
}

/** The attribution image (h, w) of one frame, direction and view. */
export function renderFrame(frame: Frame, direction: Direction, view: View, image: ImageData): void {
  const rgb = channelView(frame, direction, view);
  smoothToRGBA(rgb, frame.height, frame.width, image.data);
}

/** Columns [round(a W), round(b W)) shown in the scrubber (at least one); NumPy rounding. */
export function scrubColumns(width: number, range: [number, number]): [number, number] {
  const start = roundHalfEven(range[0] * width);
  const stop = Math.max(roundHalfEven(range[1] * width), start + 1);
  return [start, stop];
}

export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Softmax of logits. */
export function softmax(logits: number[]): number[] {
  const m = Math.max(...logits);
  const e = logits.map((l) => Math.exp(l - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}
