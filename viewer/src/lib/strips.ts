// Scrubber strips: a thin slice of every frame, laid side by side along time (method.md 6).
// The attribution strips are drawn by the renderer (renderer.ts); this is their window.

/** Positions (in strip pixels) of a window of `visible` frames centred on `frame`. */
export function windowStart(frame: number, visible: number): number {
  return frame - Math.floor(visible / 2);
}
