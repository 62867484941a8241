// The view state (what the user looks at) and its deep-link form.

import type { BundleIndex, Direction, Row, View, ViewState } from "./types";

const DIRECTIONS: Direction[] = ["abs", "pos", "neg"];

export class ViewerState {
  layer = $state("");
  trajectory = $state(0);
  frame = $state(0);
  rows = $state<Row[]>([]);
  /** feature whose popup is open (of the current layer), or null */
  feature = $state<number | null>(null);
  /** attribution drawn over the (greyscale) observation */
  overlay = $state(true);
  playing = $state(false);
  /** +1 forwards, -1 backwards */
  playDirection = $state<1 | -1>(1);
  /** feature isolated while hovering the legend, or null */
  isolate = $state<number | null>(null);

  constructor(readonly index: BundleIndex) {
    this.layer = index.default_layer;
    this.rows = [{ output: index.outputs[0]?.id ?? "value", direction: "abs", view: "all" }];
  }

  get length(): number {
    return this.index.trajectories[this.trajectory]?.length ?? 1;
  }

  snapshot(): ViewState {
    return {
      layer: this.layer, trajectory: this.trajectory, frame: this.frame,
      rows: this.rows.map((r) => ({ ...r })), feature: this.feature, overlay: this.overlay,
    };
  }

  /** Apply a (partial) state, ignoring anything the bundle does not have. */
  apply(s: Partial<ViewState>): void {
    const idx = this.index;
    if (s.layer !== undefined && idx.layers.some((l) => l.name === s.layer)) this.layer = s.layer;
    if (s.trajectory !== undefined && s.trajectory >= 0 && s.trajectory < idx.trajectories.length) {
      this.trajectory = Math.floor(s.trajectory);
    }
    if (s.rows !== undefined) {
      const outputs = new Set(idx.outputs.map((o) => o.id));
      const rows = s.rows.filter((r) => outputs.has(r.output) && DIRECTIONS.includes(r.direction));
      if (rows.length) this.rows = rows.map((r) => ({ ...r }));
    }
    this.setLayerViews();
    if (s.frame !== undefined) this.seek(s.frame);
    if (s.feature !== undefined) {
      const layer = idx.layers.find((l) => l.name === this.layer)!;
      this.feature = s.feature !== null && s.feature >= 0 && s.feature < layer.features &&
        layer.feature_views ? s.feature : null;
    }
    if (s.overlay !== undefined) this.overlay = s.overlay;
  }

  /** Keep every row's view valid for the current layer. */
  setLayerViews(): void {
    const layer = this.index.layers.find((l) => l.name === this.layer);
    if (!layer) return;
    for (const row of this.rows) {
      if (!layer.views.includes(row.view)) row.view = layer.views.includes("all") ? "all" : layer.views[0];
    }
  }

  seek(frame: number): void {
    this.frame = Math.max(0, Math.min(this.length - 1, Math.round(frame)));
  }

  step(delta: number): void {
    this.seek(this.frame + delta);
  }

  /** Play or pause; playing from the last frame (in the play direction) starts over. */
  togglePlay(): void {
    const next = this.frame + this.playDirection;
    if (!this.playing && (next < 0 || next >= this.length)) {
      this.seek(this.playDirection > 0 ? 0 : this.length - 1);
    }
    this.playing = !this.playing;
  }
}

/** `#layer=2b&trajectory=1&frame=5&rows=value.abs.all~action-3.pos.prin&feature=2` */
export function formatDeepLink(s: ViewState, model?: string): string {
  const params = new URLSearchParams();
  if (model) params.set("model", model);
  params.set("layer", s.layer);
  params.set("trajectory", String(s.trajectory));
  params.set("frame", String(s.frame));
  params.set("rows", s.rows.map((r) => `${r.output}.${r.direction}.${r.view}`).join("~"));
  if (s.feature !== null) params.set("feature", String(s.feature));
  if (!s.overlay) params.set("overlay", "0");
  return "#" + params.toString();
}

export function parseDeepLink(hash: string): Partial<ViewState> & { model?: string } {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const out: Partial<ViewState> & { model?: string } = {};
  const int = (key: string): number | undefined => {
    const v = params.get(key);
    if (v === null || v === "" || !/^-?\d+$/.test(v)) return undefined;
    return Number(v);
  };
  if (params.has("model")) out.model = params.get("model")!;
  if (params.has("layer")) out.layer = params.get("layer")!;
  const trajectory = int("trajectory");
  if (trajectory !== undefined) out.trajectory = trajectory;
  const frame = int("frame");
  if (frame !== undefined) out.frame = frame;
  const rows = params.get("rows");
  if (rows) {
    out.rows = rows.split("~").map((text) => {
      const [output, direction, view] = text.split(".");
      return { output, direction: direction as Direction, view: (view ?? "all") as View };
    }).filter((r) => r.output && DIRECTIONS.includes(r.direction));
  }
  if (params.has("feature")) {
    const f = int("feature");
    out.feature = f === undefined ? null : f;
  }
  if (params.has("overlay")) out.overlay = params.get("overlay") !== "0";
  return out;
}
