// Attribution frames ready to show: a cache of drawn frames (ImageData), filled ahead of
// time by a worker (render.worker.ts) around the frame on screen and in the play direction,
// so that showing a frame is one putImageData. A frame that is not ready is drawn at once
// on the main thread (the same code), so the canvas never waits and never shows another
// selection's frame. Without workers (or if the worker fails) everything runs here.

import RenderWorker from "./render.worker?worker&inline";
import type { AttributionFile } from "./codec";
import { FrameRenderer, frameKey, type RenderSpec } from "./render";
import { stripChunks } from "./strips";

export type ToWorker =
  | { kind: "file"; file: string; bytes: ArrayBuffer }
  | { kind: "forget"; file: string }
  | { kind: "frames"; channel: string; file: string; frames: number[]; spec: RenderSpec;
      background?: boolean }
  | { kind: "strip"; id: number; file: string; spec: RenderSpec; c0: number; c1: number;
      first: number }
  | { kind: "cancel-strip"; id: number };

export type FromWorker =
  | { kind: "frame"; key: string; width: number; height: number; rgba: Uint8ClampedArray<ArrayBuffer> }
  | { kind: "strip"; id: number; from: number; to: number; width: number; height: number;
      rgba: Uint8ClampedArray<ArrayBuffer> }
  | { kind: "error"; message: string };

/** Columns [from * sw, to * sw) of a strip, as straight RGBA. */
export type StripChunk = (from: number, to: number, image: ImageData) => void;

/** Least-recently-used cache of drawn frames, by bytes. */
class FrameCache {
  private map = new Map<string, ImageData>();
  private bytes = 0;
  constructor(private budget: number) {}
  get(key: string): ImageData | undefined {
    const hit = this.map.get(key);
    if (hit) {
      this.map.delete(key);
      this.map.set(key, hit);
    }
    return hit;
  }
  has(key: string): boolean {
    return this.map.has(key);
  }
  set(key: string, image: ImageData): void {
    const old = this.map.get(key);
    if (old) this.bytes -= old.data.byteLength;
    this.map.delete(key);
    this.map.set(key, image);
    this.bytes += image.data.byteLength;
    for (const [k, v] of this.map) {
      if (this.bytes <= this.budget) break;
      this.map.delete(k);
      this.bytes -= v.data.byteLength;
    }
  }
}

export class AttributionRenderer {
  private worker: Worker | null = null;
  private sent = new Set<string>();
  private cache = new FrameCache(64 * 1024 * 1024);
  private local = new FrameRenderer();
  private strips = new Map<number, StripChunk>();
  private nextStrip = 1;
  /** per prefetch channel: what it last asked for (file and spec) */
  private asked = new Map<string, string>();
  /** frames shown from the cache / drawn on the spot */
  hits = 0;
  misses = 0;

  constructor(useWorker = true) {
    if (!useWorker || typeof Worker === "undefined") return;
    try {
      this.worker = new RenderWorker({ name: "gallery-attribution" });
      this.worker.onmessage = (e: MessageEvent<FromWorker>) => this.receive(e.data);
      this.worker.onerror = (e) => {
        e.preventDefault();
        this.stopWorker("the render worker failed; drawing on the main thread");
      };
    } catch {
      this.worker = null;
    }
  }

  get threaded(): boolean {
    return this.worker !== null;
  }

  /** Frame t of a file as an image: from the cache, or drawn now (and cached). */
  frame(file: string, data: AttributionFile, t: number, spec: RenderSpec): ImageData {
    const key = frameKey(file, t, spec);
    const hit = this.cache.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const { height: h, width: w } = data.header;
    const image = new ImageData(this.local.frame(data, t, spec), w, h);
    this.cache.set(key, image);
    return image;
  }

  /**
   * Have the worker draw these frames of the file (those not cached yet), then, in the
   * background, every other frame of it. A later call on the same channel replaces the
   * frames this one asked for and has not got yet.
   */
  prefetch(channel: string, file: string, bytes: ArrayBuffer | undefined, frames: number[],
           spec: RenderSpec, length = 0): void {
    if (!this.worker || !bytes) return;
    const missing = (t: number) => !this.cache.has(frameKey(file, t, spec));
    const wanted = frames.filter(missing);
    // While most of the frames asked for are ready or coming, there is nothing to say.
    const what = `${file}|${spec.direction}|${spec.view}`;
    const changed = this.asked.get(channel) !== what;
    if (!changed && 2 * wanted.length <= frames.length) return;
    this.asked.set(channel, what);
    this.send(file, bytes);
    const plain = plainSpec(spec);
    this.post({ kind: "frames", channel, file, frames: wanted, spec: plain });
    if (changed && length) {
      const rest = Array.from({ length }, (_, t) => t).filter((t) => missing(t) && !frames.includes(t));
      this.post({ kind: "frames", channel, file, frames: rest, spec: plain, background: true });
    }
  }

  /**
   * Draw the strip of a file (columns [c0, c1) of every frame), delivered in chunks to
   * `onChunk`, from frame `first` (the window on screen) on. Returns a function that
   * cancels it.
   */
  strip(file: string, data: AttributionFile, bytes: ArrayBuffer | undefined, spec: RenderSpec,
        c0: number, c1: number, onChunk: StripChunk, first = 0): () => void {
    const id = this.nextStrip++;
    if (this.worker && bytes) {
      this.send(file, bytes);
      this.strips.set(id, onChunk);
      this.post({ kind: "strip", id, file, spec: plainSpec(spec), c0, c1, first });
      return () => {
        this.strips.delete(id);
        this.post({ kind: "cancel-strip", id });
      };
    }
    return this.localStrip(data, spec, c0, c1, onChunk, first);
  }

  destroy(): void {
    this.worker?.terminate();
    this.worker = null;
    this.strips.clear();
  }

  private send(file: string, bytes: ArrayBuffer): void {
    if (this.sent.has(file)) return;
    this.sent.add(file);
    this.post({ kind: "file", file, bytes: bytes.slice(0) });
  }

  private post(message: ToWorker): void {
    if (!this.worker) return;
    if (message.kind === "file") this.worker.postMessage(message, [message.bytes]);
    else this.worker.postMessage(message);
  }

  private receive(m: FromWorker): void {
    if (m.kind === "frame") {
      this.cache.set(m.key, new ImageData(m.rgba, m.width, m.height));
    } else if (m.kind === "strip") {
      this.strips.get(m.id)?.(m.from, m.to, new ImageData(m.rgba, m.width, m.height));
    } else {
      console.warn(`gallery viewer: ${m.message}`);
    }
  }

  private stopWorker(reason: string): void {
    console.warn(`gallery viewer: ${reason}`);
    this.worker?.terminate();
    this.worker = null;
    this.strips.clear();
  }

  /** The strip drawn here, a few frames per slice of time, when there is no worker. */
  private localStrip(data: AttributionFile, spec: RenderSpec, c0: number, c1: number,
                     onChunk: StripChunk, first: number): () => void {
    const { height: h } = data.header;
    const sw = c1 - c0;
    const chunks = stripChunks(data.header.frames, first, 4);
    let timer = 0;
    const work = () => {
      const start = performance.now();
      while (chunks.length && performance.now() - start < 4) {
        const [from, to] = chunks.shift()!;
        const image = new ImageData((to - from) * sw, h);
        for (let t = from; t < to; t++) {
          this.local.stripFrame(data, t, spec, c0, c1, image.data, image.width, (t - from) * sw);
        }
        onChunk(from, to, image);
      }
      if (chunks.length) timer = window.setTimeout(work, 0);
    };
    timer = window.setTimeout(work, 0);
    return () => window.clearTimeout(timer);
  }
}

/** A spec without reactive proxies, fit for postMessage. */
function plainSpec(spec: RenderSpec): RenderSpec {
  return { direction: spec.direction, view: spec.view, hues: spec.hues.map((h) => [h[0], h[1], h[2]]) };
}
