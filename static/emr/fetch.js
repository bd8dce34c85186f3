/* EHealth: fetch a patient's history from a payer and show its progress live. No dependencies.
   Without JavaScript the form posts and the page reloads; text from the server is inserted with
   textContent. Loaded after emr.js, whose window.EHealth.initHistory wires up swapped-in history. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function initHistory(root) { if (window.EHealth) window.EHealth.initHistory(root); }

  /* Fetch from a payer: POST the form, then poll the job until it ends. */
  var sync = $("#sync");
  function renderProgress(data) {
    var panel = $(".sync-panel", sync);
    panel.hidden = false;
    $$(".steps li", panel).forEach(function (li, i) {
      li.className = "";
      if (data.ok || i < data.step_index) li.className = "done";
      else if (i === data.step_index && !data.done) li.className = "current";
      else if (i === data.step_index && data.done && !data.ok) li.className = "failed";
    });
    var live = $(".sync-live", panel);
    live.textContent = "";
    var p = document.createElement("p");
    if (data.done) {
      p.className = "alert sync-message " + (data.ok ? "alert-success" : data.status === "no_data" ? "alert-warning" : "alert-error");
      p.textContent = data.message;
      if (data.error) {
        var detail = document.createElement("span");
        detail.className = "small";
        detail.textContent = data.error;
        p.appendChild(document.createElement("br"));
        p.appendChild(detail);
      }
      if (data.ok && data.elapsed_seconds !== null) {
        var took = document.createElement("span");
        took.className = "small";
        took.textContent = " (" + data.elapsed_seconds.toFixed(1) + " s)";
        p.appendChild(took);
      }
      live.appendChild(p);
    } else {
      p.className = "sync-status";
      p.textContent = (data.headline || data.status_label) + "…";
      live.appendChild(p);
      var extra = [];
      if (data.files_total) extra.push(data.files_downloaded + " of " + data.files_total + " files downloaded, " + data.files_ingested + " ingested");
      if (data.resources_ingested) extra.push(data.resources_ingested + " records stored");
      if (data.poll_count) extra.push(data.poll_count + " status check" + (data.poll_count === 1 ? "" : "s"));
      if (extra.length) {
        var d = document.createElement("p");
        d.className = "sync-detail";
        d.textContent = extra.join(" · ");
        live.appendChild(d);
      }
    }
    var counts = Object.keys(data.counts || {});
    if (counts.length) {
      var ul = document.createElement("ul");
      ul.className = "counts";
      ul.setAttribute("aria-label", "Records ingested by type");
      counts.forEach(function (type) {
        var li = document.createElement("li");
        var b = document.createElement("b");
        b.textContent = data.counts[type];
        li.appendChild(b);
        li.appendChild(document.createTextNode(" " + type));
        ul.appendChild(li);
      });
      live.appendChild(ul);
    }
  }

  function setBusy(busy) {
    $$("form[data-fetch] button", sync).forEach(function (b) {
      b.disabled = busy;
      b.setAttribute("aria-busy", busy ? "true" : "false");
    });
  }

  function refreshHistory() {
    return fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["last-sync", "payer-record"].forEach(function (id) {
          var part = doc.getElementById(id), here = document.getElementById(id);
          if (part && here) here.replaceWith(document.importNode(part, true));
        });
        var fresh = doc.getElementById("history");
        var current = document.getElementById("history");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
          initHistory(document.getElementById("history"));
        }
        sync.setAttribute("data-history-loaded", "true");
      });
  }

  var POLL_MS = 150;
  function poll(url) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        renderProgress(data);
        // The statuses this page went through, for whoever wants to know (and the tests).
        var seen = (sync.getAttribute("data-seen") || "").split(" ").filter(Boolean);
        if (seen[seen.length - 1] !== data.status) seen.push(data.status);
        sync.setAttribute("data-seen", seen.join(" "));
        // Often enough that the history shows about when the job ends (issue 6: < 3 s
        // from the click); one poll is a few indexed queries.
        if (!data.done) { window.setTimeout(function () { poll(url); }, POLL_MS); return; }
        setBusy(false);
        if (data.ok) refreshHistory();
      })
      .catch(function () {
        // A lost poll (network hiccup, server restart) is retried, more slowly.
        window.setTimeout(function () { poll(url); }, 2000);
      });
  }

  if (sync) {
    $$("form[data-fetch]", sync).forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        setBusy(true);
        renderProgress({ step_index: 0, done: false, status_label: "Starting", progress: "", counts: {} });
        fetch(form.action, {
          method: "POST",
          body: new FormData(form),  // the attestation checkbox, with the CSRF token
          credentials: "same-origin",
          headers: { "Accept": "application/json", "X-CSRFToken": $("[name=csrfmiddlewaretoken]", form).value },
        })
          .then(function (r) { return r.json().then(function (body) { return { status: r.status, body: body }; }); })
          .then(function (res) {
            if (res.status !== 202) {
              setBusy(false);
              renderProgress({ done: true, ok: false, step_index: 0, status: "failed", message: res.body.error || "The fetch could not start.", counts: {} });
              return;
            }
            renderProgress(res.body);
            poll(res.body.progress_url);
          })
          .catch(function () {
            setBusy(false);
            renderProgress({ done: true, ok: false, step_index: 0, status: "failed", message: "The fetch could not start: the EMR server did not answer.", counts: {} });
          });
      });
    });
    var resume = sync.getAttribute("data-progress-url");
    if (resume) poll(resume);
  }

})();
