/* EHealth: tabs, sortable and filterable tables. No dependencies.
   Every piece enhances server-rendered HTML: without JavaScript the forms post and the
   tables and panels are all shown. Text from the server is inserted with textContent. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  /* Tabs (WAI-ARIA Authoring Practices, tabs with automatic activation). The server says
     which tab is selected (?tab=); the address keeps the choice, so a reload or a link
     opens the same tab. Without JavaScript every panel shows, one after another. */
  function initTabs(root) {
    $$("[data-tabs]", root).forEach(function (box) {
      var tabs = $$("[role=tab]", box);
      function select(tab, focus, remember) {
        tabs.forEach(function (t) {
          var on = t === tab;
          t.setAttribute("aria-selected", on ? "true" : "false");
          t.tabIndex = on ? 0 : -1;
          var panel = document.getElementById(t.getAttribute("aria-controls"));
          panel.hidden = !on;
          panel.classList.toggle("selected", on);
        });
        if (focus) tab.focus();
        if (remember && window.history.replaceState) {
          var url = new URL(window.location.href);
          url.searchParams.set("tab", tab.getAttribute("data-section"));
          url.hash = "";
          window.history.replaceState(null, "", url.toString());
        }
      }
      tabs.forEach(function (tab, i) {
        tab.addEventListener("click", function () { select(tab, false, true); });
        tab.addEventListener("keydown", function (ev) {
          var next = null;
          if (ev.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
          else if (ev.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
          else if (ev.key === "Home") next = tabs[0];
          else if (ev.key === "End") next = tabs[tabs.length - 1];
          if (next) { ev.preventDefault(); select(next, true, true); }
        });
      });
      // The tab list works only with this script: without it, it stays hidden and every panel shows.
      $$("[role=tablist]", box).forEach(function (list) { list.hidden = false; });
      var selected = tabs.filter(function (t) { return t.getAttribute("aria-selected") === "true"; })[0] || tabs[0];
      if (selected) select(selected, false, false);
    });
  }

  /* The timeline's dots are one stop of the Tab key (roving tabindex): arrow keys move
     between dots in time order, Home and End to the first and last, Enter opens one. */
  function initTimeline(root) {
    $$("svg[data-timeline]", root).forEach(function (svg) {
      var dots = $$("a[data-encounter]", svg);
      if (!dots.length) return;
      dots.forEach(function (d, i) { d.setAttribute("tabindex", i === dots.length - 1 ? "0" : "-1"); });
      dots.forEach(function (dot, i) {
        // A dot focused by any means (click, Tab) is where the keyboard comes back to.
        dot.addEventListener("focus", function () {
          dots.forEach(function (d) { d.setAttribute("tabindex", d === dot ? "0" : "-1"); });
        });
        dot.addEventListener("keydown", function (ev) {
          var j = null;
          if (ev.key === "ArrowRight" || ev.key === "ArrowDown") j = Math.min(i + 1, dots.length - 1);
          else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") j = Math.max(i - 1, 0);
          else if (ev.key === "Home") j = 0;
          else if (ev.key === "End") j = dots.length - 1;
          if (j === null) return;
          ev.preventDefault();
          dots.forEach(function (d, k) { d.setAttribute("tabindex", k === j ? "0" : "-1"); });
          dots[j].focus();
        });
      });
    });
  }

  /* Lists paged and filtered on the server (encounters, claims): the filter form and the
     page links fetch the page and swap in the panel, so the rest of the page stays. Without
     JavaScript they are a plain GET of the same page. */
  function loadPanel(url, panelId) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById(panelId), here = document.getElementById(panelId);
        if (!fresh || !here) { window.location.assign(url); return; }
        // Nodes of the server's own page, parsed apart and imported: no markup is built here.
        here.replaceChildren.apply(here, Array.prototype.map.call(fresh.childNodes, function (n) { return document.importNode(n, true); }));
        initPanel(here);
        if (window.history.replaceState) window.history.replaceState(null, "", url.split("#")[0]);
        var count = $("[data-result-count]", here);
        if (count) count.focus();
      })
      .catch(function () { window.location.assign(url); });
  }
  function initLists(root) {
    $$("form[data-list]", root).forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var params = new URLSearchParams(new FormData(form));
        var keep = new URLSearchParams(window.location.search);
        keep.forEach(function (value, key) {
          // Keep the other list's filters; this list's come from its form.
          if (!form.elements.namedItem(key) && key.indexOf(form.getAttribute("data-prefix")) !== 0) params.set(key, value);
        });
        loadPanel(window.location.pathname + "?" + params.toString(), "panel-" + form.getAttribute("data-list"));
      });
    });
    $$("a[data-page-link]", root).forEach(function (link) {
      link.addEventListener("click", function (ev) {
        var panel = link.closest("[role=tabpanel]");
        if (!panel) return;
        ev.preventDefault();
        loadPanel(link.href, panel.id);
      });
    });
  }

  /* The print view's button. */
  function initPrint(root) {
    $$("[data-print-now]", root).forEach(function (b) { b.addEventListener("click", function () { window.print(); }); });
  }

  /* Sortable tables: header buttons toggle aria-sort; cells may carry data-sort-value. */
  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    var v = cell.getAttribute("data-sort-value");
    return (v !== null ? v : cell.textContent).trim().toLowerCase();
  }
  function initSort(root) {
    $$("table[data-sortable]", root).forEach(function (table) {
      var heads = $$("thead th", table);
      heads.forEach(function (th, index) {
        var button = $("button", th);
        if (!button) return;
        button.addEventListener("click", function () {
          var asc = th.getAttribute("aria-sort") !== "ascending";
          heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
          th.setAttribute("aria-sort", asc ? "ascending" : "descending");
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          rows.sort(function (a, b) {
            var x = cellValue(a, index), y = cellValue(b, index);
            return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
          });
          rows.forEach(function (r) { body.appendChild(r); });
        });
      });
    });
  }

  function initPanel(root) { initSort(root); initLists(root); initTimeline(root); }
  function initHistory(root) { initTabs(root); initPanel(root); }

  // The fetch panel (fetch.js) re-initializes the history it swaps in.
  window.EHealth = { initHistory: initHistory };

  initHistory(document);
  initPrint(document);
})();
