// Decoder of the attribution files written by gallery/bundle/codec.py (docs/bundle.md).
// A file holds, per frame, 2 (K + 1) planes of codes (P of each feature, P of the residual,
// then N of each feature, N of the residual) coded with rANS against static frequency
// tables. Each code is first coded as min(code, ESCAPE) with a table chosen by its context
// (the file's context model); the excess of the escaped codes follows, after all planes,
// with a table per plane class. Codes map to values through the level table of the
// frame's step (every frame has its own step, one of the header's `steps`).

export const PROB_BITS = 12;
export const PROB_SCALE = 1 << PROB_BITS;
export const RANS_LOW = 1 << 23;
export const NUM_LEVELS = 1024;
export const CODEC_VERSION = 3;
export const MAX_STEPS = 256;
export const ESCAPE = 3;
export const LOCAL_CONTEXTS = 18;
export const PLANE_CLASSES = 4;
/** The context models a file may use ([per plane, density buckets, activity buckets]),
 * as gallery/bundle/codec.py's CONTEXT_MODELS; no other is read. */
export const CONTEXT_MODELS: number[][] = [[0, 5, 3], [1, 1, 3], [0, 1, 3], [1, 3, 1], [1, 1, 1]];
/** The causal neighbours (dy, dx) of the density count: the cell (i - dy, j - dx). */
export const NEIGHBOURS: [number, number][] = [[0, 1], [0, 2], [1, -2], [1, -1], [1, 0], [1, 1],
  [1, 2], [2, -2], [2, -1], [2, 0], [2, 1], [2, 2]];

export interface AttributionHeader {
  version: number;
  frames: number;
  height: number;
  width: number;
  features: number;
  scale: number;
  /** the distinct steps of the frames; each frame's byte indexes this list */
  steps: number[];
  /** L of each step */
  linears: number[];
  /** the residual planes' step for each of `steps` (same index), and its L */
  residual_steps: number[];
  residual_linears: number[];
  worst_mae: number;
  worst_psnr: number;
  /** [per plane (1) or per plane class (0), density buckets, activity buckets] */
  context_model: number[];
  /** totals are float16 multiples of this */
  totals_unit: number;
}

/** Class of plane p of `planes`: 0 feature P, 1 residual P, 2 feature N, 3 residual N
 * (attribution_codec.plane_classes). */
export function planeClass(p: number, planes: number): number {
  const half = planes >> 1;
  return p < half ? (p === half - 1 ? 1 : 0) : (p === planes - 1 ? 3 : 2);
}

/** A float16 (IEEE 754 binary16) from its 16 bits. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Levels: c * step up to c = linear, then geometric steps of ratio 1 + 1 / linear. */
export function levelValues(step: number, linear: number): Float64Array {
  const out = new Float64Array(NUM_LEVELS);
  const top = linear * step;
  const ratio = 1 + 1 / linear;
  for (let c = 0; c < NUM_LEVELS; c++) {
    out[c] = c <= linear ? c * step : top * Math.pow(ratio, c - linear);
  }
  return out;
}

export class AttributionFile {
  readonly header: AttributionHeader;
  readonly planes: number;
  /** one level table per step of the header, for the features' planes */
  readonly levelTables: Float64Array[];
  /** the same for the residual's planes */
  readonly residualTables: Float64Array[];
  /** (T) index of each frame's step */
  readonly stepIndex: Uint8Array;
  /** (T, K + 1): unscaled features and residual summed over positions. */
  readonly totals: Float32Array;
  private readonly perPlane: boolean;
  private readonly density: number;
  private readonly activity: number;
  /** tables of the first symbols; the excess tables of the plane classes follow */
  private readonly smallTables: number;
  private readonly freq: Int32Array;
  private readonly cum: Int32Array;
  private readonly lookup: Uint16Array;
  private readonly offsets: Float64Array;
  private readonly data: Uint8Array;
  private readonly streamStart: number;
  /** scratch: codes with a border of 2 rows above and 2 columns on each side, per plane */
  private padded = new Uint16Array(0);
  private activityCount = new Uint8Array(0);
  private escaped = new Int32Array(0);

  constructor(buffer: ArrayBuffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(buffer);
    const magic = String.fromCharCode(...bytes.subarray(0, 4));
    if (magic !== "GATR") throw new Error("not a gallery attribution file");
    const metaLen = view.getUint32(4, true);
    this.header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + metaLen)));
    if (this.header.version !== CODEC_VERSION) {
      throw new Error(`attribution file version ${this.header.version}, viewer reads ${CODEC_VERSION}`);
    }
    const h = this.header;
    this.planes = 2 * (h.features + 1);
    const { steps, linears, residual_steps: rSteps, residual_linears: rLinears } = h;
    const lists = [steps, linears, rSteps, rLinears];
    if (!lists.every(Array.isArray) || steps.length < 1 || steps.length > MAX_STEPS ||
        !lists.every((x) => x.length === steps.length)) {
      throw new Error("bad attribution header: steps");
    }
    const model = h.context_model;
    if (!Array.isArray(model) ||
        !CONTEXT_MODELS.some((m) => m.length === model.length && m.every((v, i) => v === model[i]))) {
      throw new Error("bad attribution header: context_model");
    }
    this.perPlane = model[0] === 1;
    this.density = model[1];
    this.activity = model[2];
    const makeTables = (qs: number[], Ls: number[]) => qs.map((q, i) => {
      const L = Ls[i];
      if (!(q > 0 && Number.isFinite(q)) || !Number.isInteger(L) || L < 1 || L >= NUM_LEVELS) {
        throw new Error("bad attribution header: steps");
      }
      return levelValues(q, L);
    });
    this.levelTables = makeTables(steps, linears);
    this.residualTables = makeTables(rSteps, rLinears);
    let pos = 8 + metaLen;
    const bodyLen = view.getUint32(pos, true);
    pos += 4;
    const groups = this.perPlane ? this.planes : PLANE_CLASSES;
    this.smallTables = groups * LOCAL_CONTEXTS * this.density * this.activity;
    const tables = this.smallTables + PLANE_CLASSES;
    this.freq = new Int32Array(tables * NUM_LEVELS);
    this.cum = new Int32Array(tables * NUM_LEVELS);
    this.lookup = new Uint16Array(tables * PROB_SCALE);
    // per table: varint n, then n x (varint gap to the previous code minus one, varint
    // frequency); varints are 1 or 2 bytes, 7 bits each, low first
    let p = pos;
    const end = Math.min(pos + bodyLen, bytes.length);
    const bad = () => new Error("bad attribution file: frequency tables");
    const varint = (): number => {
      if (p >= end) throw bad();
      const first = bytes[p++];
      if (first < 128) return first;
      if (p >= end) throw bad();
      const second = bytes[p++];
      if (second >= 128) throw bad();
      return (first & 0x7f) | (second << 7);
    };
    for (let t = 0; t < tables; t++) {
      const n = varint();
      if (n > NUM_LEVELS) throw bad();
      let c = 0;
      let s = -1;
      for (let i = 0; i < n; i++) {
        s += varint() + 1;
        const f = varint();
        if (s >= NUM_LEVELS || c + f > PROB_SCALE) throw bad();
        this.freq[t * NUM_LEVELS + s] = f;
        this.cum[t * NUM_LEVELS + s] = c;
        this.lookup.fill(s, t * PROB_SCALE + c, t * PROB_SCALE + c + f);
        c += f;
      }
      if (n && c !== PROB_SCALE) throw bad();
    }
    pos += bodyLen;
    const count = h.frames * (h.features + 1);
    if (pos + 2 * count > bytes.length) throw new Error("truncated attribution file");
    this.totals = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      this.totals[i] = halfToFloat(view.getUint16(pos + 2 * i, true)) * h.totals_unit;
    }
    pos += 2 * count + ((4 - ((2 * count) % 4)) % 4);
    this.stepIndex = new Uint8Array(buffer.slice(pos, pos + h.frames));
    if (this.stepIndex.length !== h.frames) throw new Error("truncated attribution file");
    for (const i of this.stepIndex) {
      if (i >= steps.length) throw new Error("bad attribution file: step index out of range");
    }
    pos += h.frames + ((4 - (h.frames % 4)) % 4);
    // stream lengths: unsigned LEB128 (7 bits per byte, low first), then padding to 4
    this.offsets = new Float64Array(h.frames + 1);
    const start = pos;
    for (let t = 0; t < h.frames; t++) {
      let value = 0;
      for (let shift = 0; ; shift += 7) {
        if (pos >= bytes.length || shift > 21) throw new Error("bad attribution file: stream lengths");
        const byte = bytes[pos++];
        value += (byte & 0x7f) * 2 ** shift;
        if (byte < 0x80) break;
      }
      this.offsets[t + 1] = this.offsets[t] + value;
    }
    pos += (4 - ((pos - start) % 4)) % 4;
    this.streamStart = pos;
    this.data = bytes;
    if (pos + this.offsets[h.frames] !== bytes.length) throw new Error("truncated attribution file");
  }

  /** The level table (code -> plane value) of the features' planes of frame t. */
  levelsOf(t: number): Float64Array {
    return this.levelTables[this.stepIndex[t]];
  }

  /** The level table of the residual's planes of frame t. */
  residualLevelsOf(t: number): Float64Array {
    return this.residualTables[this.stepIndex[t]];
  }

  get frameSize(): number {
    return this.planes * this.header.height * this.header.width;
  }

  /** Codes (P * h * w, plane-major) of frame t. */
  decodeFrame(t: number, out: Uint16Array = new Uint16Array(this.frameSize)): Uint16Array {
    const { height: h, width: w } = this.header;
    const size = h * w;
    const planes = this.planes;
    const half = planes >> 1;
    const pw = w + 4;
    const psize = (h + 2) * pw;
    if (this.padded.length !== planes * psize) {
      this.padded = new Uint16Array(planes * psize);
      this.activityCount = new Uint8Array(size);
      this.escaped = new Int32Array(planes * size);
    }
    const padded = this.padded, act = this.activityCount, escaped = this.escaped;
    padded.fill(0);
    act.fill(0);
    const d = this.data;
    const freq = this.freq, cum = this.cum, lookup = this.lookup;
    const density = this.density, activity = this.activity;
    const dMax = density - 1, aMax = activity - 1;
    // the density count of NEIGHBOURS (two cells left; columns j - 2 .. j + 2 of the two rows
    // above) slides along the row: colsum holds the non-zero codes of those two rows per
    // column, with two zero columns on each side
    const colsum = new Uint8Array(w + 5);
    let pos = this.streamStart + this.offsets[t];
    const end = this.streamStart + this.offsets[t + 1];
    let x = ((d[pos] << 24) | (d[pos + 1] << 16) | (d[pos + 2] << 8) | d[pos + 3]) >>> 0;
    pos += 4;
    let nEscaped = 0;
    let idx = 0;
    for (let p = 0; p < planes; p++) {
      const group = this.perPlane ? p : planeClass(p, planes);
      const base = group * LOCAL_CONTEXTS;
      const plane = p * psize;
      const pairPlane = p >= half ? (p - half) * psize : -1;
      for (let i = 0; i < h; i++) {
        let q = plane + (i + 2) * pw + 2;
        let window = 0;
        if (density > 1) {
          const r1 = plane + (i + 1) * pw + 2, r2 = plane + i * pw + 2;
          for (let j = 0; j < w; j++) colsum[j + 2] = (padded[r1 + j] !== 0 ? 1 : 0) + (padded[r2 + j] !== 0 ? 1 : 0);
          window = colsum[2] + colsum[3] + colsum[4];
        }
        for (let j = 0; j < w; j++, idx++, q++) {
          const left = padded[q - 1], up = padded[q - pw];
          let ctx = base + 3 * (left < 2 ? left : 2) + (up < 2 ? up : 2);
          if (pairPlane >= 0 && padded[q - plane + pairPlane] !== 0) ctx += 9;
          if (density > 1) {
            const c = window + (left !== 0 ? 1 : 0) + (padded[q - 2] !== 0 ? 1 : 0);
            ctx = ctx * density + (c < dMax ? c : dMax);
            window += colsum[j + 5] - colsum[j];
          }
          const cell = i * w + j;
          if (activity > 1) {
            const a = act[cell];
            ctx = ctx * activity + (a < aMax ? a : aMax);
          }
          const slot = x & (PROB_SCALE - 1);
          const s = lookup[ctx * PROB_SCALE + slot];
          padded[q] = s;
          out[idx] = s;
          if (s !== 0) {
            act[cell]++;
            if (s === ESCAPE) escaped[nEscaped++] = idx;
          }
          const k = ctx * NUM_LEVELS + s;
          x = freq[k] * (x >>> PROB_BITS) + slot - cum[k];
          while (x < RANS_LOW) {
            if (pos >= end) throw new Error("corrupt attribution file: a stream ends early");
            x = ((x << 8) | d[pos++]) >>> 0;
          }
        }
      }
    }
    // the excess of the escaped codes, in order, one table per plane class
    for (let e = 0; e < nEscaped; e++) {
      const at = escaped[e];
      const p = (at / size) | 0;
      const table = this.smallTables + planeClass(p, planes);
      const slot = x & (PROB_SCALE - 1);
      const s = lookup[table * PROB_SCALE + slot];
      out[at] = ESCAPE + s;
      const k = table * NUM_LEVELS + s;
      x = freq[k] * (x >>> PROB_BITS) + slot - cum[k];
      while (x < RANS_LOW) {
        if (pos >= end) throw new Error("corrupt attribution file: a stream ends early");
        x = ((x << 8) | d[pos++]) >>> 0;
      }
    }
    return out;
  }
}
