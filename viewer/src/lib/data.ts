// Loading a bundle: the index first, everything else lazily, per layer and trajectory.
// Every fetch is cached by URL; drawn attribution frames are cached by the renderer.

import { AttributionFile } from "./codec";
import { decodeFeatureViews } from "./features";
import { AttributionRenderer } from "./renderer";
import type { BundleIndex, FeatureDetail, LayerEntry, OutputSpec, TrajectoryData } from "./types";
import { FORMAT_NAME, FORMAT_VERSION } from "./types";

export class BundleError extends Error {}

export class Bundle {
  readonly base: URL;
  private json = new Map<string, Promise<unknown>>();
  private images = new Map<string, Promise<ImageBitmap>>();
  private imageData = new Map<string, Promise<ImageData>>();
  private attribution = new Map<string, Promise<AttributionFile>>();
  private attributionBytes = new Map<string, ArrayBuffer>();
  private drawer: AttributionRenderer | null = null;
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

  private features = new Map<string, Promise<FeatureDetail>>();

  /** A feature's views (a .gfv file, decoded once). */
  featureDetail(file: string): Promise<FeatureDetail> {
    let hit = this.features.get(file);
    if (!hit) {
      hit = this.fetchBytes(file).then((b) => decodeFeatureViews(b, file));
      this.features.set(file, hit);
    }
    return hit;
  }

  /** RGBA pixels of an (opaque) image, for exact per-pixel work. */
  pixels(file: string): Promise<ImageData> {
    let hit = this.imageData.get(file);
    if (!hit) {
      hit = this.image(file).then((img) => {
        const c = document.createElement("canvas");
        c.width = img.width;
        c.height = img.height;
        const ctx = c.getContext("2d", { willReadFrequently: true })!;
        ctx.drawImage(img, 0, 0);
        return ctx.getImageData(0, 0, c.width, c.height);
      });
      this.imageData.set(file, hit);
    }
    return hit;
  }

  /** An image of the bundle, decoded once (drawing it never decodes again). */
  image(file: string): Promise<ImageBitmap> {
    let hit = this.images.get(file);
    if (!hit) {
      hit = (async () => {
        const type = file.endsWith(".avif") ? "image/avif" : "image/webp";
        const blob = new Blob([await this.fetchBytes(file)], { type });
        return createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
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

  /** The outputs attributed at `layer`: policy attribution may cover some layers only. */
  layerOutputs(layer: string): OutputSpec[] {
    const attributed = this.layer(layer).attribution;
    return this.index.outputs.filter((o) => o.id in attributed);
  }

  /** `output` where `layer` has it, else the layer's first output (the value): a row keeps
   * its choice while another layer shows what that layer has. */
  shownOutput(layer: string, output: string): string {
    if (output in this.layer(layer).attribution) return output;
    return this.layerOutputs(layer)[0]?.id ?? output;
  }

  attributionFile(layer: string, output: string, trajectory: number): string | null {
    const files = this.layer(layer).attribution[output];
    return files ? files[trajectory] ?? null : null;
  }

  attributionData(file: string): Promise<AttributionFile> {
    let hit = this.attribution.get(file);
    if (!hit) {
      hit = this.fetchBytes(file).then((b) => {
        const data = new AttributionFile(b);
        this.attributionBytes.set(file, b);
        return data;
      });
      this.attribution.set(file, hit);
    }
    return hit;
  }

  /** The raw bytes of a loaded attribution file (for the render worker). */
  attributionBuffer(file: string): ArrayBuffer | undefined {
    return this.attributionBytes.get(file);
  }

  /** Whether frames are drawn ahead of time in a worker (set before the first use). */
  useWorker = true;

  /** Draws attribution frames and strips, ahead of time in a worker (one per bundle). */
  get renderer(): AttributionRenderer {
    this.drawer ??= new AttributionRenderer(this.useWorker);
    return this.drawer;
  }

  /** Stop the render worker. */
  dispose(): void {
    this.drawer?.destroy();
    this.drawer = null;
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
