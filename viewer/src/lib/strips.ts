// Scrubber strips: a thin slice of every frame, laid side by side along time (method.md 6).
// The attribution strips are drawn by the renderer (renderer.ts); this is their window.

/** Positions (in strip pixels) of a window of `visible` frames centred on `frame`. */
export function windowStart(frame: number, visible: number): number {
  return frame - Math.floor(visible / 2);
}

/**
 * Chunks [from, to) of `size` frames covering 0..frames, in drawing order: the chunk holding
 * frame `first` (the start of the window on screen), those after it, then those before, so
 * that the part of a strip on screen is drawn first.
 */
export function stripChunks(frames: number, first: number, size: number): [number, number][] {
  const chunks: [number, number][] = [];
  for (let from = 0; from < frames; from += size) chunks.push([from, Math.min(frames, from + size)]);
  const at = Math.min(Math.max(0, Math.floor(first / size)), Math.max(0, chunks.length - 1));
  return [...chunks.slice(at), ...chunks.slice(0, at)];
}
