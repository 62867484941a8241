// Full feature views laid out from their grids (method.md 7), as
// gallery.dataset_examples.feature_view assembles them: one patch per grid cell, centred on
// the cell, `expand_mult` cells wide, taken from the extra observation the grid names, on a
// light checkerboard where it leaves the frame; alpha = activation / the largest, then
// rescaled so that weak patches stay visible (rescale_opacity, max_scale 10).

import { roundHalfEven } from "./draw";
import type { FeatureDetail, FeatureGrid } from "./types";

export const MIN_OPACITY = 15 / 255;

export interface Layout {
  width: number;
  height: number;
  /** pixel edges of the rows and columns of patches */
  top: number[];
  left: number[];
  rows: [number, number][];
  cols: [number, number][];
}

export function patchBounds(centre: number, cell: number, expand: number): [number, number] {
  return [roundHalfEven((centre - 0.5 * expand) * cell), roundHalfEven((centre + 0.5 * expand) * cell)];
}

export function layout(detail: FeatureDetail, grid: FeatureGrid, expand: number): Layout {
  const [H, W] = detail.observation_shape;
  const [h, w] = detail.layer_shape;
  const rows = grid.centre_rows.map((c) => patchBounds(c, H / h, expand));
  const cols = grid.centre_cols.map((c) => patchBounds(c, W / w, expand));
  const top = [0], left = [0];
  for (const [a, b] of rows) top.push(top[top.length - 1] + (b - a));
  for (const [a, b] of cols) left.push(left[left.length - 1] + (b - a));
  return { width: left[left.length - 1], height: top[top.length - 1], top, left, rows, cols };
}

/** numpy.percentile (linear) of pixel alphas, given per-cell alphas and pixel counts. */
export function weightedPercentile(values: number[], counts: number[], q: number): number {
  const order = values.map((_, i) => i).sort((a, b) => values[a] - values[b]);
  const total = counts.reduce((s, c) => s + c, 0);
  if (total === 0) return 0;
  const pos = (q / 100) * (total - 1);
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  let seen = 0, vlo = NaN, vhi = NaN;
  for (const i of order) {
    const next = seen + counts[i];
    if (Number.isNaN(vlo) && lo < next) vlo = values[i];
    if (hi < next) { vhi = values[i]; break; }
    seen = next;
  }
  return vlo + (pos - lo) * (vhi - vlo);
}

/** Opacity (0..1) of each cell after rescale_opacity(max_scale=10). */
export function cellOpacities(grid: FeatureGrid, lay: Layout): number[] {
  const largest = Math.max(...grid.acts);
  const alphas = grid.acts.map((a) => a / (largest !== 0 ? largest : 1));
  const [gh, gw] = grid.shape;
  const counts: number[] = [];
  for (let i = 0; i < gh; i++) {
    for (let j = 0; j < gw; j++) counts.push((lay.top[i + 1] - lay.top[i]) * (lay.left[j + 1] - lay.left[j]));
  }
  const amax = Math.max(...alphas);
  let threshold = Math.max(weightedPercentile(alphas, counts, 90), amax / 10);
  if (threshold === 0) threshold = 1;
  return alphas.map((a) => Math.min(1, MIN_OPACITY + (a * (1 - MIN_OPACITY)) / threshold));
}

export type ObservationPixels = (index: number) => { data: ImageData; x: number; y: number } | null;

/** The view as RGBA bytes (straight alpha); `opaque` sets every alpha to 255. */
export function composeView(detail: FeatureDetail, grid: FeatureGrid, expand: number,
                            observation: ObservationPixels, opaque: boolean): ImageData {
  const lay = layout(detail, grid, expand);
  const [H, W] = detail.observation_shape;
  const [gh, gw] = grid.shape;
  const opacity = cellOpacities(grid, lay);
  const out = new ImageData(Math.max(1, lay.width), Math.max(1, lay.height));
  const px = out.data;
  for (let i = 0; i < gh; i++) {
    const [r0] = lay.rows[i];
    const ph = lay.top[i + 1] - lay.top[i];
    for (let j = 0; j < gw; j++) {
      const [c0] = lay.cols[j];
      const pw = lay.left[j + 1] - lay.left[j];
      const cell = i * gw + j;
      const src = observation(grid.indices[cell]);
      const alpha = opaque ? 255 : Math.round(opacity[cell] * 255);
      for (let y = 0; y < ph; y++) {
        const oy = r0 + y;
        for (let x = 0; x < pw; x++) {
          const ox = c0 + x;
          const o = 4 * ((lay.top[i] + y) * out.width + lay.left[j] + x);
          if (src && oy >= 0 && oy < H && ox >= 0 && ox < W) {
            const s = 4 * ((src.y + oy) * src.data.width + src.x + ox);
            px[o] = src.data.data[s]; px[o + 1] = src.data.data[s + 1]; px[o + 2] = src.data.data[s + 2];
          } else {
            const v = ((oy + ox) % 2 + 2) % 2 === 1 ? 255 : 191;
            px[o] = px[o + 1] = px[o + 2] = v;
          }
          px[o + 3] = alpha;
        }
      }
    }
  }
  return out;
}

/** The grid cell under a point of the view (fractions of its width and height). */
export function cellAt(grid: FeatureGrid, lay: Layout, fx: number, fy: number): number {
  const y = fy * lay.height, x = fx * lay.width;
  let i = lay.top.findIndex((t, k) => k > 0 && y < t) - 1;
  let j = lay.left.findIndex((t, k) => k > 0 && x < t) - 1;
  if (i < 0) i = grid.shape[0] - 1;
  if (j < 0) j = grid.shape[1] - 1;
  return i * grid.shape[1] + j;
}
