// The render worker: decodes attribution files and draws frames and scrubber strips off the
// main thread (see renderer.ts for the protocol). Frames asked for come first, then strips,
// then the rest of a file's frames (background); work is done
// in slices so that newer requests replace older ones quickly.

import { AttributionFile } from "./codec";
import { FrameRenderer, frameKey, type RenderSpec } from "./render";
import type { FromWorker, ToWorker } from "./renderer";
import { stripChunks } from "./strips";

interface FrameJob { channel: string; file: string; t: number; spec: RenderSpec }
interface StripJob {
  id: number; file: string; spec: RenderSpec; c0: number; c1: number; first: number;
  /** chunks still to draw, in order (set once the file is known) */
  chunks: [number, number][] | null;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
  postMessage(message: FromWorker, transfer?: Transferable[]): void;
};
const files = new Map<string, AttributionFile>();
const renderer = new FrameRenderer();
let frames: FrameJob[] = [];
let strips: StripJob[] = [];
let background: FrameJob[] = [];
let scheduled = false;

scope.onmessage = (e) => {
  const m = e.data;
  if (m.kind === "file") {
    try {
      files.set(m.file, new AttributionFile(m.bytes));
    } catch (err) {
      scope.postMessage({ kind: "error", message: `${m.file}: ${(err as Error).message}` });
    }
  } else if (m.kind === "forget") {
    files.delete(m.file);
    frames = frames.filter((j) => j.file !== m.file);
    strips = strips.filter((j) => j.file !== m.file);
    background = background.filter((j) => j.file !== m.file);
  } else if (m.kind === "frames") {
    const jobs = m.frames.map((t) => ({ channel: m.channel, file: m.file, t, spec: m.spec }));
    if (m.background) background = [...background.filter((j) => j.channel !== m.channel), ...jobs];
    else frames = [...frames.filter((j) => j.channel !== m.channel), ...jobs];
  } else if (m.kind === "strip") {
    strips.push({ id: m.id, file: m.file, spec: m.spec, c0: m.c0, c1: m.c1, first: m.first,
                  chunks: null });
  } else if (m.kind === "cancel-strip") {
    strips = strips.filter((j) => j.id !== m.id);
  }
  schedule();
};

function schedule(): void {
  if (scheduled || (!frames.length && !strips.length && !background.length)) return;
  scheduled = true;
  setTimeout(run, 0);
}

function run(): void {
  scheduled = false;
  const start = performance.now();
  while (performance.now() - start < 12 && (frames.length || strips.length || background.length)) {
    if (frames.length) renderFrame(frames.shift()!);
    else if (strips.length) renderStrip(strips[0]);
    else renderFrame(background.shift()!);
  }
  schedule();
}

function renderFrame(job: FrameJob): void {
  const data = files.get(job.file);
  if (!data || job.t >= data.header.frames) return;
  const rgba = renderer.frame(data, job.t, job.spec);
  scope.postMessage({ kind: "frame", key: frameKey(job.file, job.t, job.spec), width: data.header.width,
                      height: data.header.height, rgba }, [rgba.buffer]);
}

/** Up to 16 frames of a strip, sent as one chunk (columns [from * sw, to * sw)); the
 * chunk on screen first (stripChunks). */
function renderStrip(job: StripJob): void {
  const data = files.get(job.file);
  if (!data) {
    strips.shift();
    return;
  }
  const { frames: T, height: h } = data.header;
  const sw = job.c1 - job.c0;
  job.chunks ??= stripChunks(T, job.first, 16);
  const [from, to] = job.chunks.shift()!;
  const width = (to - from) * sw;
  const rgba = new Uint8ClampedArray(width * h * 4);
  for (let t = from; t < to; t++) {
    renderer.stripFrame(data, t, job.spec, job.c0, job.c1, rgba, width, (t - from) * sw);
  }
  if (!job.chunks.length) strips.shift();
  scope.postMessage({ kind: "strip", id: job.id, from, to, width, height: h, rgba }, [rgba.buffer]);
}
