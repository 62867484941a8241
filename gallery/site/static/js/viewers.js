// Interactive interfaces mounted into the site's pages (docs/bundle.md, "Embedding the
// viewer"): every element with data-gallery-viewer gets a viewer of its bundle.
//
//   <div data-gallery-viewer data-bundle="interface/bundle/bundle.json"
//        data-viewer-js="../../viewer/viewer.js" data-viewer-css="../../viewer/viewer.css"
//        data-sync-url="true" data-group="compare"></div>
//
// - data-sync-url: the viewer reads and keeps location.hash (deep links to any view);
// - data-group: viewers of one group play in step (the viewer's `group` option): a
//   trajectory, frame or overlay chosen in one is shown in all, a layer or the attribution
//   rows in those that have them (models analysed at other layers keep their own). Only the
//   group's first viewer takes the arrow keys and space, so one key press moves every
//   viewer once.
// Mounted on every page load; with Material's instant navigation (document$), viewers of
// the previous page are destroyed first.
(function () {
  "use strict";

  let mounted = [];

  function loadCss(href) {
    const url = new URL(href, document.baseURI).href;
    if ([...document.querySelectorAll("link[rel=stylesheet]")].some((l) => l.href === url)) return;
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = url;
    document.head.appendChild(link);
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
        group: entry.group ? data.group : undefined,
      });
      entry.handle.ready.then(() => {
        entry.ready = true;
        entry.element.dataset.ready = "true";
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
