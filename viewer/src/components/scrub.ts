// Pointer handling shared by the scrubbers and graphs: press to jump to the frame under
// the pointer, then drag the strip like film (right: back in time).

import type { ViewerState } from "../lib/viewstate.svelte";

export function scrubPointer(vs: ViewerState, visible: number, width: number) {
  let downFrame = 0;
  let downX = 0;
  const toPixels = (e: PointerEvent) => {
    const rect = (e.currentTarget as HTMLElement).getBoundingClientRect();
    return ((e.clientX - rect.left) / rect.width) * width;
  };
  const perFrame = width / visible;
  return {
    onpointerdown: (e: PointerEvent) => {
      vs.playing = false;
      (e.currentTarget as HTMLElement).setPointerCapture?.(e.pointerId);
      const x = toPixels(e);
      vs.seek(vs.frame + Math.round((x - width / 2) / perFrame));
      downFrame = vs.frame;
      downX = x;
    },
    onpointermove: (e: PointerEvent) => {
      if (e.buttons !== 1) return;
      vs.seek(downFrame - (toPixels(e) - downX) / perFrame);
    },
  };
}
