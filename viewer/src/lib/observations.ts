// Observations of the current trajectory, from its atlas images.

import type { Bundle } from "./data";

export interface FrameSource {
  trajectory: number;
  images: ImageBitmap[];
}

/** Draw frame t of the source's trajectory into ctx (w x h at 0, 0); false if not loaded. */
export function drawObservation(ctx: CanvasRenderingContext2D, bundle: Bundle,
                                source: FrameSource | null, trajectory: number, t: number): boolean {
  if (!source || source.trajectory !== trajectory) return false;
  const entry = bundle.index.trajectories[trajectory];
  const atlasIndex = entry.frames.atlases.findIndex((a) => t >= a.start && t < a.start + a.count);
  if (atlasIndex < 0) return false;
  const tile = bundle.frameTile(trajectory, t);
  ctx.clearRect(0, 0, tile.w, tile.h);
  ctx.drawImage(source.images[atlasIndex], tile.x, tile.y, tile.w, tile.h, 0, 0, tile.w, tile.h);
  return true;
}
