// Full feature views laid out from their grids (method.md 7), as
// gallery.method.dataset_examples.feature_view assembles them: one patch per grid cell, centred on
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
  let largest = -Infinity;
  for (const a of grid.alphas) largest = Math.max(largest, a);
  const alphas = grid.alphas.map((a) => a / (largest !== 0 ? largest : 1));
  const [gh, gw] = grid.shape;
  const counts: number[] = [];
  for (let i = 0; i < gh; i++) {
    for (let j = 0; j < gw; j++) counts.push((lay.top[i + 1] - lay.top[i]) * (lay.left[j + 1] - lay.left[j]));
  }
  let amax = -Infinity;
  for (const a of alphas) amax = Math.max(amax, a);
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

// --- feature-view files (features/L<l>/f<k>.gfv, gallery.bundle.encode_feature_views) ---

export const FEATURE_MAGIC = "GFVW";
export const FEATURE_FILE_VERSION = 1;
const SAME_LEFT = 0, SAME_UP = 1, SAME_PARENT = 2, LITERAL = 3;

/** Centres of the grid cells dataset_examples.resample_grid makes along an axis of `size`
 * layer cells: the same double-precision expression as gallery.bundle.resampled_centres. */
export function resampledCentres(size: number, cells: number): number[] {
  const step = (size + 1) / (cells + 1);
  return Array.from({ length: cells }, (_, i) => (i + 1) * step - 0.5);
}

/** For each centre, the nearest parent centre's index (the first of equals). */
function nearest(centres: number[], parent: number[]): number[] {
  return centres.map((c) => {
    let best = 0, distance = Math.abs(c - parent[0]);
    for (let k = 1; k < parent.length; k++) {
      const d = Math.abs(c - parent[k]);
      if (d < distance) { best = k; distance = d; }
    }
    return best;
  });
}

/** `count` unsigned values stored as `width` byte planes, the most significant first. */
function fromPlanes(body: Uint8Array, at: number, count: number, width: number): number[] {
  const out = new Array<number>(count).fill(0);
  for (let b = 0; b < width; b++) {
    const plane = at + b * count;
    for (let i = 0; i < count; i++) out[i] = out[i] * 256 + body[plane + i];
  }
  return out;
}

async function inflate(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

interface GridHeader {
  subdiv_mult: number;
  shape: [number, number];
  act_max: number;
  act_levels: number;
  centre_rows?: number[];
  centre_cols?: number[];
}

/** Decode a feature-view file: a JSON header, then (deflated) per grid the index symbols,
 * the literal indices and the amounts (docs/bundle.md, "features"). */
export async function decodeFeatureViews(buffer: ArrayBuffer, name = "feature views"): Promise<FeatureDetail> {
  const bytes = new Uint8Array(buffer);
  const fail = (why: string): never => { throw new Error(`${name}: ${why}`); };
  if (bytes.length < 8 || String.fromCharCode(...bytes.subarray(0, 4)) !== FEATURE_MAGIC) fail("not a feature-view file");
  const n = new DataView(buffer).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  if (header.version !== FEATURE_FILE_VERSION) fail(`version ${header.version}; this viewer reads ${FEATURE_FILE_VERSION}`);
  const body = await inflate(new Uint8Array(buffer, 8 + n));
  if (body.length !== header.body_bytes) fail(`${body.length} bytes of grids, the header says ${header.body_bytes}`);
  const [h, w] = header.layer_shape as [number, number];
  const width = header.index_bytes as number;
  const grids: FeatureGrid[] = [];
  let at = 0;
  let parent: FeatureGrid | null = null;
  for (const g of header.grids as GridHeader[]) {
    const [gh, gw] = g.shape;
    const cells = gh * gw;
    const rows = g.centre_rows ?? resampledCentres(h, gh);
    const cols = g.centre_cols ?? resampledCentres(w, gw);
    const symbols = body.subarray(at, at + cells);
    at += cells;
    let literals = 0;
    for (const s of symbols) if (s === LITERAL) literals++;
    const values = fromPlanes(body, at, literals, width);
    at += literals * width;
    const up = parent ? nearest(rows, parent.centre_rows) : null;
    const across = parent ? nearest(cols, parent.centre_cols) : null;
    const indices = new Array<number>(cells);
    let next = 0;
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        const c = i * gw + j, s = symbols[c];
        if (s === SAME_LEFT && j > 0) indices[c] = indices[c - 1];
        else if (s === SAME_UP && i > 0) indices[c] = indices[c - gw];
        else if (s === SAME_PARENT && parent) indices[c] = parent.indices[up![i] * parent.shape[1] + across![j]];
        else if (s === LITERAL) indices[c] = values[next++];
        else fail(`damaged grid (symbol ${s} at cell ${c})`);
      }
    }
    const alphas = fromPlanes(body, at, cells, 2).map((q) => q / g.act_levels);
    at += 2 * cells;
    const grid: FeatureGrid = { subdiv_mult: g.subdiv_mult, shape: [gh, gw], centre_rows: rows, centre_cols: cols,
                                indices, alphas, act_max: g.act_max, act_levels: g.act_levels };
    grids.push(grid);
    parent = grid;
  }
  if (at !== body.length) fail("grids and body size disagree");
  return { feature: header.feature, layer_shape: header.layer_shape, observation_shape: header.observation_shape,
           expand_mults: header.expand_mults, grids };
}
