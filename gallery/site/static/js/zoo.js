// The zoo's tag filter: buttons toggle tags; cards showing every selected tag stay
// visible. The selection lives in the address (#tags=a,b) so a filtered zoo can be shared,
// and model pages link to it. Works with and without Material's instant navigation.
(function () {
  "use strict";

  function selectedFromHash() {
    var match = /(?:^#|&)tags=([^&]*)/.exec(window.location.hash);
    if (!match || !match[1]) return [];
    return match[1].split(",").map(function (t) {
      try { return decodeURIComponent(t); } catch (e) { return t; }
    }).filter(Boolean);
  }

  function writeHash(selected) {
    var hash = selected.length ? "#tags=" + selected.map(encodeURIComponent).join(",") : " ";
    history.replaceState(null, "", hash === " " ? window.location.pathname + window.location.search : hash);
  }

  function cardTags(card) {
    try { return JSON.parse(card.getAttribute("data-tags") || "[]"); } catch (e) { return []; }
  }

  function apply(root, selected) {
    var cards = root.querySelectorAll(".gallery-card");
    var shown = 0;
    cards.forEach(function (card) {
      var tags = cardTags(card);
      var visible = selected.every(function (t) { return tags.indexOf(t) !== -1; });
      card.hidden = !visible;
      if (visible) shown += 1;
    });
    root.querySelectorAll(".gallery-filter__tag").forEach(function (button) {
      var on = selected.indexOf(button.getAttribute("data-tag")) !== -1;
      button.setAttribute("aria-pressed", on ? "true" : "false");
    });
    var clear = root.querySelector(".gallery-filter__clear");
    if (clear) clear.hidden = selected.length === 0;
    var status = root.querySelector(".gallery-filter__status");
    if (status) {
      status.textContent = selected.length
        ? shown + " of " + cards.length + " models tagged " + selected.join(" + ")
        : "";
    }
  }

  function init() {
    var filter = document.querySelector(".gallery-filter");
    if (!filter || filter.dataset.ready) return;
    filter.dataset.ready = "1";
    var root = document;
    var selected = selectedFromHash();
    filter.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) return;
      if (button.classList.contains("gallery-filter__clear")) {
        selected = [];
      } else {
        var tag = button.getAttribute("data-tag");
        var at = selected.indexOf(tag);
        if (at === -1) selected.push(tag); else selected.splice(at, 1);
      }
      writeHash(selected);
      apply(root, selected);
    });
    window.addEventListener("hashchange", function () {
      selected = selectedFromHash();
      apply(root, selected);
    });
    apply(root, selected);
  }

  if (typeof window.document$ !== "undefined" && window.document$.subscribe) {
    window.document$.subscribe(init);
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
