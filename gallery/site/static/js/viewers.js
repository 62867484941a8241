// Interactive interfaces mounted into the site's pages (docs/bundle.md, "Embedding the
// viewer"): every element with data-gallery-viewer gets a viewer of its bundle.
//
//   <div data-gallery-viewer data-bundle="interface/bundle/bundle.json"
//        data-viewer-js="../../viewer/viewer.js" data-viewer-css="../../viewer/viewer.css"
//        data-sync-url="true" data-group="compare"></div>
//
// - data-sync-url: the viewer reads and keeps location.hash (deep links to any view);
// - data-group: viewers of one group play in step: a change of trajectory, frame, layer,
//   rows (output, direction, view) or overlay in one is relayed to the others with
//   setState (they show the same observations). Only the group's first viewer takes the
//   arrow keys and space, so one key press moves every viewer once.
// Mounted on every page load; with Material's instant navigation (document$), viewers of
// the previous page are destroyed first.
(function () {
  "use strict";

  const SYNCED = ["trajectory", "frame", "layer", "rows", "overlay"];
  let mounted = [];

  function loadCss(href) {
    const url = new URL(href, document.baseURI).href;
    if ([...document.querySelectorAll("link[rel=stylesheet]")].some((l) => l.href === url)) return;
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = url;
    document.head.appendChild(link);
  }

  function picked(state) {
    const out = {};
    for (const key of SYNCED) if (state && key in state) out[key] = state[key];
    return out;
  }

  function relay(group, from, state) {
    const wanted = picked(state);
    const text = JSON.stringify(wanted);
    for (const other of group) {
      if (other === from || !other.handle || !other.ready) continue;
      let current;
      try {
        current = JSON.stringify(picked(other.handle.getState()));
      } catch (err) {
        continue;
      }
      if (current !== text) other.handle.setState(wanted);
    }
  }

  function showError(element, message) {
    const p = document.createElement("p");
    p.className = "gallery-viewer__error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    element.replaceChildren(p);
  }

  async function mountAll() {
    for (const m of mounted) if (m.handle) m.handle.destroy();
    mounted = [];
    const elements = [...document.querySelectorAll("[data-gallery-viewer]")];
    if (!elements.length) return;
    const groups = new Map();
    for (const element of elements) {
      const entry = { element, handle: null, ready: false, group: null };
      const name = element.dataset.group;
      if (name) {
        if (!groups.has(name)) groups.set(name, []);
        entry.group = groups.get(name);
        entry.group.push(entry);
      }
      mounted.push(entry);
    }
    const current = mounted;
    for (const entry of current) {
      const data = entry.element.dataset;
      if (data.viewerCss) loadCss(data.viewerCss);
      let api;
      try {
        api = await import(new URL(data.viewerJs, document.baseURI).href);
      } catch (err) {
        showError(entry.element, `The viewer could not be loaded: ${err.message}`);
        continue;
      }
      if (current !== mounted) return; // the page changed meanwhile
      const first = !entry.group || entry.group[0] === entry;
      entry.handle = api.mountViewer(entry.element, {
        bundleUrl: new URL(data.bundle, document.baseURI).href,
        syncUrl: data.syncUrl === "true",
        hotkeys: first,
        onStateChange: (state) => {
          if (entry.group && entry.ready) relay(entry.group, entry, state);
        },
      });
      entry.handle.ready.then(() => {
        entry.ready = true;
        entry.element.dataset.ready = "true";
        if (entry.group) {
          // a late viewer takes the view of the group's first ready one
          const leader = entry.group.find((e) => e.ready && e !== entry);
          if (leader) relay(entry.group, leader, leader.handle.getState());
          else relay(entry.group, entry, entry.handle.getState());
        }
      }, (err) => {
        entry.element.dataset.ready = "failed";
        console.warn("gallery viewer:", err);
      });
    }
    window.galleryViewers = current.map((e) => e.handle);
  }

  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(() => { mountAll(); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mountAll);
  } else {
    mountAll();
  }
})();
