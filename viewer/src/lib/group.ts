// Sync groups: viewers mounted with the same `group` name (mountViewer's option) play in
// step. A change a viewer makes itself (a click, a key, setState, playback) is sent to the
// others of its group as the keys that changed; each takes only what it can show:
//
// - trajectory, when it has that trajectory; frame (clamped to the trajectory's length);
//   overlay;
// - layer, only when it has a layer of that name (models analysed at different layers,
//   1a..4a and conv1..conv3, keep their own);
// - rows (output, direction, view), only when it has every row's output; a view its
//   layer lacks falls back there, as a deep link's would.
//
// The feature popup is never shared (feature numbers of two models are unrelated).
// An update received from the group is never sent on: a member remembers the shared keys
// as they stand after it applied the update, and only a later difference from them is its
// own change. So two viewers that cannot show each other's layer do not ping-pong.
//
// The registry lives on globalThis, so viewers mounted from two copies of viewer.js on one
// page share their groups too.

import type { BundleIndex, Row, ViewState } from "./types";

type SharedKey = "trajectory" | "frame" | "layer" | "rows" | "overlay";
const KEYS: SharedKey[] = ["trajectory", "frame", "layer", "rows", "overlay"];
type Shared = Partial<Pick<ViewState, SharedKey>>;

/** What a group needs of a viewer. */
export interface GroupTarget {
  index: BundleIndex;
  snapshot(): ViewState;
  apply(s: Partial<ViewState>): void;
}

interface Peer {
  readonly index: BundleIndex;
  snapshot(): ViewState;
  receive(update: Shared): void;
}

const REGISTRY = Symbol.for("gallery-viewer.groups");

function groups(): Map<string, Peer[]> {
  const holder = globalThis as unknown as Record<symbol, Map<string, Peer[]>>;
  holder[REGISTRY] ??= new Map();
  return holder[REGISTRY];
}

/** The part of `update` a viewer of bundle `index` can show. */
export function showable(update: Shared, index: BundleIndex): Shared {
  const out: Shared = {};
  if (update.trajectory !== undefined && update.trajectory >= 0 &&
      update.trajectory < index.trajectories.length) out.trajectory = update.trajectory;
  if (update.frame !== undefined) out.frame = update.frame;
  if (update.overlay !== undefined) out.overlay = update.overlay;
  if (update.layer !== undefined && index.layers.some((l) => l.name === update.layer)) {
    out.layer = update.layer;
  }
  if (update.rows !== undefined) {
    const outputs = new Set(index.outputs.map((o) => o.id));
    if (update.rows.length && update.rows.every((r: Row) => outputs.has(r.output))) {
      out.rows = update.rows.map((r) => ({ ...r }));
    }
  }
  return out;
}

function keyed(s: ViewState): Record<SharedKey, string> {
  return Object.fromEntries(KEYS.map((k) => [k, JSON.stringify(s[k])])) as Record<SharedKey, string>;
}

export class GroupMember implements Peer {
  /** The shared keys as this viewer last sent or received them. */
  private last: Record<SharedKey, string> | null = null;
  /** Updates received from the group and applied (for tests and statistics). */
  received = 0;
  /** Changes of its own this viewer sent to the group. */
  sent = 0;

  constructor(readonly name: string, private readonly target: GroupTarget) {}

  get index(): BundleIndex {
    return this.target.index;
  }

  snapshot(): ViewState {
    return this.target.snapshot();
  }

  /** Join the group (once the viewer is ready): take the view of its first member. */
  join(): void {
    const all = groups();
    const members = all.get(this.name) ?? [];
    all.set(this.name, members);
    const leader = members[0];
    this.last = keyed(this.target.snapshot());
    if (leader) this.receive(leader.snapshot());
    members.push(this);
  }

  leave(): void {
    const all = groups();
    const members = all.get(this.name);
    if (!members) return;
    const at = members.indexOf(this);
    if (at >= 0) members.splice(at, 1);
    if (!members.length) all.delete(this.name);
    this.last = null;
  }

  /** The viewer's state changed (from its change notification): send what it changed. */
  changed(s: ViewState): void {
    if (this.last === null) return; // not (or no longer) in the group
    const now = keyed(s);
    const update: Shared = {};
    for (const key of KEYS) {
      if (now[key] !== this.last[key]) (update as Record<string, unknown>)[key] = s[key];
    }
    this.last = now;
    if (!Object.keys(update).length) return; // an update received, or nothing shared
    this.sent++;
    for (const peer of groups().get(this.name) ?? []) {
      if (peer !== this) peer.receive(update);
    }
  }

  receive(update: Shared): void {
    if (this.last === null) return;
    const wanted = showable(update, this.target.index);
    if (!Object.keys(wanted).length) return;
    this.received++;
    this.target.apply(wanted);
    // what this viewer shows now (frames clamped, views fallen back) is the group's, not
    // a change of its own: it is not sent on
    this.last = keyed(this.target.snapshot());
  }
}
