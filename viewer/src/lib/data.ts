// Loading a bundle: the index first, everything else lazily, per layer and trajectory.
// Every fetch is cached by URL; decoded attribution frames are cached per file (LRU).

import { AttributionFile } from "./codec";
import type { BundleIndex, FeatureDetail, LayerEntry, TrajectoryData } from "./types";
import { FORMAT_NAME, FORMAT_VERSION } from "./types";

export class BundleError extends Error {}

/** Least-recently-used map with a size budget. */
class LRU<K, V> {
  private map = new Map<K, { value: V; size: number }>();
  private total = 0;
  constructor(private budget: number) {}
  get(key: K): V | undefined {
    const hit = this.map.get(key);
    if (!hit) return undefined;
    this.map.delete(key);
    this.map.set(key, hit);
    return hit.value;
  }
  set(key: K, value: V, size: number): void {
    const old = this.map.get(key);
    if (old) {
      this.total -= old.size;
      this.map.delete(key);
    }
    this.map.set(key, { value, size });
    this.total += size;
    for (const [k, v] of this.map) {
      if (this.total <= this.budget || this.map.size <= 1) break;
      this.map.delete(k);
      this.total -= v.size;
    }
  }
}

export class Bundle {
  readonly base: URL;
  private json = new Map<string, Promise<unknown>>();
  private images = new Map<string, Promise<HTMLImageElement>>();
  private imageData = new Map<string, Promise<ImageData>>();
  private attribution = new Map<string, Promise<AttributionFile>>();
  private frames = new LRU<string, Uint16Array>(96 * 1024 * 1024);
  /** bytes fetched so far, for the first-load measurement */
  fetchedBytes = 0;

  private constructor(readonly url: string, readonly index: BundleIndex) {
    this.base = new URL(".", url);
  }

  static async load(url: string): Promise<Bundle> {
    const absolute = new URL(url, document.baseURI).href;
    let response: Response;
    try {
      response = await fetch(absolute);
    } catch (err) {
      throw new BundleError(`cannot fetch ${absolute}: ${err}`);
    }
    if (!response.ok) throw new BundleError(`cannot fetch ${absolute}: HTTP ${response.status}`);
    const text = await response.text();
    const index = JSON.parse(text) as BundleIndex;
    if (index.format !== FORMAT_NAME) throw new BundleError(`${absolute} is not a gallery bundle`);
    if (index.format_version !== FORMAT_VERSION) {
      throw new BundleError(`bundle format version ${index.format_version}; this viewer reads ` +
        `version ${FORMAT_VERSION}. Rebuild the interface with this gallery.`);
    }
    const bundle = new Bundle(absolute, index);
    bundle.fetchedBytes += text.length;
    return bundle;
  }

  resolve(file: string): string {
    return new URL(file, this.base).href;
  }

  private async fetchBytes(file: string): Promise<ArrayBuffer> {
    const response = await fetch(this.resolve(file));
    if (!response.ok) throw new BundleError(`cannot fetch ${file}: HTTP ${response.status}`);
    const buffer = await response.arrayBuffer();
    this.fetchedBytes += buffer.byteLength;
    return buffer;
  }

  /** A JSON file of the bundle; `.gz` files are decompressed by the browser. */
  private cachedJSON<T>(file: string): Promise<T> {
    let hit = this.json.get(file);
    if (!hit) {
      hit = this.fetchBytes(file).then(async (b) => {
        const bytes = new Uint8Array(b);
        // A server may already have decoded it (Content-Encoding: gzip): check the magic.
        if (!file.endsWith(".gz") || bytes[0] !== 0x1f || bytes[1] !== 0x8b) {
          return JSON.parse(new TextDecoder().decode(bytes));
        }
        const stream = new Blob([b]).stream().pipeThrough(new DecompressionStream("gzip"));
        return JSON.parse(await new Response(stream).text());
      });
      this.json.set(file, hit);
    }
    return hit as Promise<T>;
  }

  trajectory(index: number): Promise<TrajectoryData> {
    return this.cachedJSON<TrajectoryData>(this.index.trajectories[index].data);
  }

  /** A feature's views. */
  featureDetail(file: string): Promise<FeatureDetail> {
    return this.cachedJSON<FeatureDetail>(file);
  }

  /** RGBA pixels of an (opaque) image, for exact per-pixel work. */
  pixels(file: string): Promise<ImageData> {
    let hit = this.imageData.get(file);
    if (!hit) {
      hit = this.image(file).then((img) => {
        const c = document.createElement("canvas");
        c.width = img.naturalWidth;
        c.height = img.naturalHeight;
        const ctx = c.getContext("2d", { willReadFrequently: true })!;
        ctx.drawImage(img, 0, 0);
        return ctx.getImageData(0, 0, c.width, c.height);
      });
      this.imageData.set(file, hit);
    }
    return hit;
  }

  image(file: string): Promise<HTMLImageElement> {
    let hit = this.images.get(file);
    if (!hit) {
      hit = (async () => {
        const blob = new Blob([await this.fetchBytes(file)], { type: "image/webp" });
        const img = new Image();
        img.src = URL.createObjectURL(blob);
        await img.decode();
        return img;
      })();
      this.images.set(file, hit);
    }
    return hit;
  }

  layer(name: string): LayerEntry {
    const layer = this.index.layers.find((l) => l.name === name);
    if (!layer) throw new BundleError(`no layer ${name} in this bundle`);
    return layer;
  }

  attributionFile(layer: string, output: string, trajectory: number): string | null {
    const files = this.layer(layer).attribution[output];
    return files ? files[trajectory] ?? null : null;
  }

  attributionData(file: string): Promise<AttributionFile> {
    let hit = this.attribution.get(file);
    if (!hit) {
      hit = this.fetchBytes(file).then((b) => new AttributionFile(b));
      this.attribution.set(file, hit);
    }
    return hit;
  }

  /** Decoded codes of one frame of an attribution file (cached). */
  frameCodes(file: string, data: AttributionFile, t: number): Uint16Array {
    const key = `${file}#${t}`;
    let codes = this.frames.get(key);
    if (!codes) {
      codes = data.decodeFrame(t);
      this.frames.set(key, codes, codes.byteLength);
    }
    return codes;
  }

  /** Where frame t of a trajectory is: the atlas image and the tile's top-left corner. */
  frameTile(trajectory: number, t: number): { file: string; x: number; y: number; w: number; h: number } {
    const { frames } = this.index.trajectories[trajectory];
    const atlas = frames.atlases.find((a) => t >= a.start && t < a.start + a.count) ?? frames.atlases[0];
    const i = t - atlas.start;
    const [h, w] = frames.tile;
    return { file: atlas.file, x: (i % frames.columns) * w, y: Math.floor(i / frames.columns) * h, w, h };
  }

  /** Where an extra observation (by its original index) is, or null if not in the bundle. */
  extraTile(original: number): { file: string; x: number; y: number; w: number; h: number } | null {
    const extra = this.index.extra_observations;
    if (!extra) return null;
    let lo = 0, hi = extra.indices.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = extra.indices[mid];
      if (v === original) {
        const atlas = extra.atlases.find((a) => mid >= a.start && mid < a.start + a.count)!;
        const i = mid - atlas.start;
        const [h, w] = extra.tile;
        return { file: atlas.file, x: (i % extra.columns) * w, y: Math.floor(i / extra.columns) * h, w, h };
      }
      if (v < original) lo = mid + 1; else hi = mid - 1;
    }
    return null;
  }
}
