// The bundle index (bundle.json), as written by gallery/bundle/__init__.py; see docs/bundle.md.

export const FORMAT_NAME = "gallery-interface-bundle";
export const FORMAT_VERSION = 2;

export type OutputKind = "value" | "action" | "action_group";
export type Direction = "abs" | "pos" | "neg";
/** "prin" | "all" | "res" | a feature index as a string ("0", "1", ...). */
export type View = string;

export interface OutputSpec {
  id: string;
  kind: OutputKind;
  label: string;
  actions: number[];
}

export interface Atlas {
  file: string;
  start: number;
  count: number;
}

export interface TrajectoryEntry {
  index: number;
  length: number;
  data: string;
  frames: { tile: [number, number]; columns: number; atlases: Atlas[] };
  episodes_completed: number;
  total_reward: number;
}

export interface TrajectoryData {
  length: number;
  actions: number[];
  rewards: number[];
  firsts: number[];
  dones: number[];
  logits: number[][];
  values: number[];
  advantages: number[];
}

export interface Bookmark {
  trajectory: number;
  step: number;
  score: number;
}

export interface LayerEntry {
  name: string;
  kind: "attribution" | "gradients";
  shape: [number, number, number];
  features: number;
  hues: [number, number, number][];
  colours: string[];
  views: View[];
  /** output id -> one file per trajectory */
  attribution: Record<string, string[]>;
  legend: { file: string; tile: [number, number] } | null;
  feature_views: (string | null)[] | null;
  /** Optional labels of features (manifest text, shown as text): index -> label. */
  labels?: Record<string, string>;
}

/** One grid of a feature-view file (features/L<l>/f<k>.gfv), decoded by lib/features.ts. */
export interface FeatureGrid {
  subdiv_mult: number;
  shape: [number, number];
  centre_rows: number[];
  centre_cols: number[];
  /** extra-observation index of each cell, row by row */
  indices: number[];
  /** the feature's amount at each cell over the grid's largest (to 1/act_levels) */
  alphas: number[];
  /** the largest amount (for reference; only alphas are drawn) */
  act_max: number;
  act_levels: number;
}

export interface FeatureDetail {
  feature: number;
  layer_shape: [number, number];
  observation_shape: [number, number];
  expand_mults: number[];
  grids: FeatureGrid[];
}

export interface Presentation {
  video_speed: number;
  attribution_weight: number;
  scrub_range: [number, number];
  scrubber_visible_duration: number;
  vis_subdiv_mult_default: number;
  vis_expand_mult_default: number;
  graph_colours: Record<string, string>;
}

export interface BundleIndex {
  format: string;
  format_version: number;
  codec_version: number;
  model: Record<string, unknown> & { id?: string; title?: string };
  provenance: Record<string, unknown>;
  presentation: Presentation;
  action_names: string[];
  action_groups: OutputSpec[];
  outputs: OutputSpec[];
  single_features: boolean;
  trajectories: TrajectoryEntry[];
  bookmarks: { high: Bookmark[]; low: Bookmark[] };
  layers: LayerEntry[];
  default_layer: string;
  extra_observations: {
    indices: number[];
    tile: [number, number];
    columns: number;
    atlases: Atlas[];
  } | null;
  files: Record<string, { bytes: number; sha256: string }>;
}

/** One row of the Attribution section. */
export interface Row {
  output: string;
  direction: Direction;
  view: View;
}

/** Everything a deep link restores. */
export interface ViewState {
  layer: string;
  trajectory: number;
  frame: number;
  rows: Row[];
  feature: number | null;
  overlay: boolean;
}
