/* EHealth: tabs, sortable and filterable tables. No dependencies.
   Every piece enhances server-rendered HTML: without JavaScript the forms post and the
   tables and panels are all shown. Text from the server is inserted with textContent. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  /* Tabs (WAI-ARIA Authoring Practices, tabs with automatic activation). */
  function initTabs(root) {
    $$("[data-tabs]", root).forEach(function (box) {
      var tabs = $$("[role=tab]", box);
      function select(tab, focus) {
        tabs.forEach(function (t) {
          var on = t === tab;
          t.setAttribute("aria-selected", on ? "true" : "false");
          t.tabIndex = on ? 0 : -1;
          document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
        });
        if (focus) tab.focus();
      }
      tabs.forEach(function (tab, i) {
        tab.addEventListener("click", function () { select(tab, false); });
        tab.addEventListener("keydown", function (ev) {
          var next = null;
          if (ev.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
          else if (ev.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
          else if (ev.key === "Home") next = tabs[0];
          else if (ev.key === "End") next = tabs[tabs.length - 1];
          if (next) { ev.preventDefault(); select(next, true); }
        });
      });
      var selected = tabs.filter(function (t) { return t.getAttribute("aria-selected") === "true"; })[0] || tabs[0];
      if (selected) select(selected, false);
    });
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

  /* Filters: free text over the whole row, selects over a data-* attribute of the row. */
  function initFilters(root) {
    $$("[data-filter-for]", root).forEach(function (box) {
      var table = document.getElementById(box.getAttribute("data-filter-for"));
      var counter = $("[data-result-count]", box.parentNode);
      var text = $("[data-filter-text]", box);
      var selects = $$("[data-filter-col]", box);
      function apply() {
        var words = (text.value || "").toLowerCase().split(/\s+/).filter(Boolean);
        var shown = 0, rows = table.tBodies[0].rows;
        Array.prototype.forEach.call(rows, function (row) {
          var hay = row.textContent.toLowerCase();
          var ok = words.every(function (w) { return hay.indexOf(w) !== -1; });
          selects.forEach(function (s) {
            if (s.value && row.getAttribute("data-" + s.getAttribute("data-filter-col")) !== s.value) ok = false;
          });
          row.hidden = !ok;
          if (ok) shown++;
        });
        if (counter) counter.textContent = shown + " of " + rows.length + " encounters";
      }
      text.addEventListener("input", apply);
      selects.forEach(function (s) { s.addEventListener("change", apply); });
    });
  }

  function initHistory(root) { initTabs(root); initSort(root); initFilters(root); }

  // The fetch panel (fetch.js) re-initializes the history it swaps in.
  window.EHealth = { initHistory: initHistory };

  initHistory(document);
})();
