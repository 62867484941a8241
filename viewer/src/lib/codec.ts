// Decoder of the attribution files written by gallery/attribution_codec.py (docs/bundle.md).
// A file holds, per frame, 2 (K + 1) planes of codes (P of each feature, P of the residual,
// then N of each feature, N of the residual) coded with rANS against static frequency
// tables, one per (plane, context). Codes map to values through the level table of the
// frame's step (every frame has its own step, one of the header's `steps`).

export const PROB_BITS = 12;
export const PROB_SCALE = 1 << PROB_BITS;
export const RANS_LOW = 1 << 23;
export const NUM_LEVELS = 1024;
export const NUM_CONTEXTS = 18;
export const CODEC_VERSION = 2;
export const MAX_STEPS = 256;

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
  private readonly freq: Int32Array;
  private readonly cum: Int32Array;
  private readonly lookup: Uint16Array;
  private readonly offsets: Uint32Array;
  private readonly data: Uint8Array;
  private readonly streamStart: number;

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
    const tables = this.planes * NUM_CONTEXTS;
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
    this.totals = new Float32Array(buffer.slice(pos, pos + 4 * count));
    pos += 4 * count;
    this.stepIndex = new Uint8Array(buffer.slice(pos, pos + h.frames));
    for (const i of this.stepIndex) {
      if (i >= steps.length) throw new Error("bad attribution file: step index out of range");
    }
    pos += h.frames + ((4 - (h.frames % 4)) % 4);
    this.offsets = new Uint32Array(buffer.slice(pos, pos + 4 * (h.frames + 1)));
    pos += 4 * (h.frames + 1);
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
    const half = this.planes >> 1;
    const d = this.data;
    const freq = this.freq, cum = this.cum, lookup = this.lookup;
    let pos = this.streamStart + this.offsets[t];
    let x = ((d[pos] << 24) | (d[pos + 1] << 16) | (d[pos + 2] << 8) | d[pos + 3]) >>> 0;
    pos += 4;
    let idx = 0;
    for (let p = 0; p < this.planes; p++) {
      const base = p * NUM_CONTEXTS;
      const pairOffset = p >= half ? half * size : 0;
      for (let i = 0; i < h; i++) {
        for (let j = 0; j < w; j++, idx++) {
          let ctx = base;
          if (j > 0) ctx += 3 * Math.min(out[idx - 1], 2);
          if (i > 0) ctx += Math.min(out[idx - w], 2);
          if (pairOffset && out[idx - pairOffset] !== 0) ctx += 9;
          const slot = x & (PROB_SCALE - 1);
          const s = lookup[ctx * PROB_SCALE + slot];
          out[idx] = s;
          const k = ctx * NUM_LEVELS + s;
          x = freq[k] * (x >>> PROB_BITS) + slot - cum[k];
          while (x < RANS_LOW) x = (x << 8) | d[pos++];
        }
      }
    }
    return out;
  }
}
