// The viewer's public API: mount an interface for one bundle into any element.
//
//   import { mountViewer } from "./viewer/viewer.js";   // + <link rel="stylesheet" href="./viewer/viewer.css">
//   const viewer = mountViewer(document.getElementById("app"), { bundleUrl: "bundle/bundle.json" });
//   await viewer.ready;            // the first frame is drawn
//   viewer.getState(); viewer.setState({ layer: "2b", frame: 40 }); viewer.destroy();
//
// See docs/bundle.md ("Embedding the viewer").

import { mount, unmount } from "svelte";
import Viewer from "./components/Viewer.svelte";
import "./viewer.css";
import { Bundle } from "./lib/data";
import { GroupMember } from "./lib/group";
import { formatDeepLink, parseDeepLink, ViewerState } from "./lib/viewstate.svelte";
import { standalonePage } from "./lib/share";
import { Stats } from "./lib/stats";
import type { ViewState } from "./lib/types";

export interface MountOptions {
  /** URL of the bundle's index (bundle.json), relative to the page or absolute. */
  bundleUrl: string;
  /** Initial view: a partial state, or a deep link ("#layer=2b&frame=3..."). */
  state?: Partial<ViewState> | string;
  /** Read the initial state from location.hash and keep it updated (default false). */
  syncUrl?: boolean;
  /** Arrow keys and space control this viewer (default true). */
  hotkeys?: boolean;
  /** The standalone interface's page, which embed snippets show in an iframe (default: the
   *  index.html beside the bundle's folder, as `gallery interface` writes it). */
  embedUrl?: string;
  /** Called whenever the view state changes. */
  onStateChange?: (state: ViewState) => void;
  /** Viewers mounted with the same group name play in step (lib/group.ts): trajectory,
   *  frame and overlay always, layer and attribution rows where the other viewer has them.
   *  The group's first ready viewer sets the view of those that join later. */
  group?: string;
  /** Draw attribution frames ahead of time in a Web Worker (default true); false draws
   *  every frame on the main thread when it is shown (for measurements). */
  worker?: boolean;
}

export interface ViewerHandle {
  /** Resolves once the bundle is loaded and the first frame drawn; rejects on failure. */
  ready: Promise<void>;
  getState(): ViewState;
  setState(state: Partial<ViewState>): void;
  /** The deep link ("#...") of the current view. */
  deepLink(): string;
  /** Drawing statistics (frame draw times, frames shown while playing). */
  stats: Stats;
  destroy(): void;
}

export function mountViewer(element: HTMLElement, options: MountOptions): ViewerHandle {
  if (!(element instanceof HTMLElement)) throw new TypeError("mountViewer needs an element");
  if (!options || typeof options.bundleUrl !== "string") {
    throw new TypeError("mountViewer needs { bundleUrl: 'path/to/bundle.json' }");
  }
  const stats = new Stats();
  let component: ReturnType<typeof mount> | null = null;
  let state: ViewerState | null = null;
  let destroyed = false;
  let resolveDrawn: () => void = () => {};
  const drawn = new Promise<void>((resolve) => (resolveDrawn = resolve));
  let loaded: Bundle | null = null;
  let member: GroupMember | null = null;
  const status = document.createElement("p");
  status.className = "gallery-viewer-status";
  status.textContent = "Loading the interface…";
  element.replaceChildren(status);

  const ready = (async () => {
    let bundle: Bundle;
    try {
      bundle = await Bundle.load(options.bundleUrl);
    } catch (err) {
      status.textContent = `The interface could not be loaded: ${(err as Error).message}`;
      status.setAttribute("role", "alert");
      throw err;
    }
    if (destroyed) return;
    loaded = bundle;
    bundle.useWorker = options.worker ?? true;
    state = new ViewerState(bundle.index);
    const initial = typeof options.state === "string" ? parseDeepLink(options.state) : options.state;
    if (initial) state.apply(initial);
    if (options.syncUrl && location.hash) state.apply(parseDeepLink(location.hash));
    const group = typeof options.group === "string" && options.group ? options.group : null;
    if (group) member = new GroupMember(group, state);
    element.replaceChildren();
    component = mount(Viewer, {
      target: element,
      props: {
        bundle, vs: state, stats, hotkeys: options.hotkeys ?? true, syncUrl: options.syncUrl ?? false,
        embedUrl: options.embedUrl ?? standalonePage(options.bundleUrl),
        onStateChange: (s: ViewState) => {
          member?.changed(s);
          options.onStateChange?.(s);
        },
        onFirstDraw: () => {
          stats.readyAt = performance.now();
          resolveDrawn();
        },
      },
    });
    await drawn;
    if (!destroyed) member?.join();
  })();

  return {
    ready,
    stats,
    getState: () => {
      if (!state) throw new Error("the viewer is not ready yet (await viewer.ready)");
      return state.snapshot();
    },
    setState: (s) => {
      if (!state) throw new Error("the viewer is not ready yet (await viewer.ready)");
      state.apply(s);
    },
    deepLink: () => (state ? formatDeepLink(state.snapshot(), bundleModelId(state)) : ""),
    destroy: () => {
      destroyed = true;
      member?.leave();
      member = null;
      if (component) unmount(component);
      component = null;
      loaded?.dispose();
      loaded = null;
      element.replaceChildren();
    },
  };
}

function bundleModelId(state: ViewerState): string | undefined {
  const id = state.index.model.id;
  return typeof id === "string" ? id : undefined;
}

export { formatDeepLink, parseDeepLink };
export type { ViewState };
