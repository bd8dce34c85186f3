/* EHealth: fetch a patient's history from a payer and show its progress live. No dependencies.
   Without JavaScript the forms post and the page reloads (Fetch, Cancel, Retry, Try again);
   text from the server is inserted with textContent. Loaded after emr.js, whose
   window.EHealth.initHistory wires up swapped-in history.

   Screen readers: the status line (role=status) holds one sentence, changed only when the
   step changes, when the fetch turns slow, and at the end; the figures that change with each
   poll sit beside it, not in it. Focus moves to the status on Fetch, and to the result (the
   history after a success, the message otherwise) at the end. */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function initHistory(root) { if (window.EHealth) window.EHealth.initHistory(root); }

  var sync = $("#sync");
  if (!sync) return;
  var panel = $(".sync-panel", sync);
  var live = $(".sync-live", panel);
  var detail = $(".sync-detail", panel);
  var slowBox = $(".sync-slow", panel);
  var result = $(".sync-result", panel);
  // After this long the panel says the fetch is taking longer than usual (EMR_FETCH_SLOW_SECONDS).
  var SLOW_MS = (parseFloat(sync.getAttribute("data-slow-seconds")) || 20) * 1000;
  // Often at first, so that the history shows about when the job ends (issue 6: < 3 s from
  // the click; one poll is a few indexed queries), then less often: a slow fetch is slow.
  var POLL_MS = 150;
  var followed = 0;   // the fetch the panel follows; answers about an earlier one are dropped
  var startedAt = 0;  // when the followed fetch started (ms), for the slow notice

  function announce(text) {
    if (live.textContent !== text) live.textContent = text;
  }

  function post(form) {
    return fetch(form.action, {
      method: "POST",
      body: new FormData(form),  // the CSRF token, and the attestation checkbox of a Fetch form
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": $("[name=csrfmiddlewaretoken]", form).value },
    }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body }; });
    });
  }

  function setFetchBusy(busy) {
    $$("form[data-fetch] button", sync).forEach(function (b) {
      b.disabled = busy;
      b.setAttribute("aria-busy", busy ? "true" : "false");
    });
  }

  function setActionsBusy(busy) {
    $$("form[data-fetch-cancel] button, form[data-fetch-retry] button", sync).forEach(function (b) { b.disabled = busy; });
  }

  function renderSteps(data) {
    $$(".steps li", panel).forEach(function (li, i) {
      li.className = "";
      if (data.ok || i < data.step_index) li.className = "done";
      else if (i === data.step_index && !data.done) li.className = "current";
      else if (i === data.step_index && data.done) li.className = "failed";
    });
  }

  function fillList(ul, items, fill) {
    ul.textContent = "";
    items.forEach(function (item) {
      var li = document.createElement("li");
      fill(li, item);
      ul.appendChild(li);
    });
    ul.hidden = items.length === 0;
  }

  function renderRunning(data) {
    panel.hidden = false;
    panel.classList.remove("is-done");
    result.hidden = true;
    renderSteps(data);
    detail.hidden = false;
    detail.textContent = data.detail || "";
    // The server says slow from the job's age; the page also from its own clock, in case
    // the server's answers are late.
    if (data.slow || Date.now() - startedAt >= SLOW_MS) {
      showSlow(data.waiting_on, data.payer_says ? data.payer + " says: “" + data.payer_says + "”" : "");
    } else {
      panel.classList.remove("is-slow");
      slowBox.hidden = true;
      announce(data.announce);
    }
  }

  /* The slow notice: the status line says what the fetch waits on (read out once), the box
     below it what the payer says (X-Progress, not read out) and the way out. */
  function showSlow(waitingOn, payerSays) {
    var says = $(".sync-payer-says", slowBox);
    says.textContent = payerSays || "";
    says.hidden = !payerSays;
    if (slowBox.hidden) setActionsBusy(false);
    slowBox.hidden = false;
    panel.classList.add("is-slow");
    announce("This is taking longer than usual. " + waitingOn);
  }

  function renderDone(data) {
    panel.hidden = false;
    renderSteps(data);
    panel.classList.remove("is-slow");
    panel.classList.add("is-done");
    slowBox.hidden = true;
    detail.hidden = true;
    var message = $(".sync-message", result);
    message.className = "alert sync-message " + (data.alert || "alert-error");
    message.textContent = data.message;
    if (data.ok && typeof data.elapsed_seconds === "number") {
      var took = document.createElement("span");
      took.className = "small";
      took.textContent = " (" + data.elapsed_seconds.toFixed(1) + " s)";
      message.appendChild(took);
    }
    fillList($(".sync-causes", result), data.causes || [], function (li, cause) { li.textContent = cause; });
    fillList($(".counts", result), data.counts_in_words || [], function (li, count) {
      var b = document.createElement("b");
      b.textContent = count[0];
      li.appendChild(b);
      li.appendChild(document.createTextNode(" " + count[1]));
    });
    var technical = $(".sync-technical", result);
    technical.open = false;
    technical.hidden = !data.error;
    $("pre", technical).textContent = data.error || "";
    $(".sync-again", result).hidden = data.ok || data.again === false;
    result.hidden = false;
    announce(data.announce);
    setFetchBusy(false);
    setActionsBusy(false);
  }

  function focusOn(el) {
    if (!el) return;
    if (!el.hasAttribute("tabindex") && !/^(A|BUTTON|INPUT|SELECT|TEXTAREA)$/.test(el.tagName)) el.setAttribute("tabindex", "-1");
    el.focus();
  }

  function refreshHistory(id) {
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
        if (id === followed) sync.setAttribute("data-history-loaded", "true");
      });
  }

  /* One answer about the followed fetch: show it, then poll again or finish. */
  function handle(data, id, moveFocus) {
    if (id !== followed) return;
    if (!startedAt && typeof data.elapsed_seconds === "number") startedAt = Date.now() - data.elapsed_seconds * 1000;
    if (data.cancel_url) {
      $$("form[data-fetch-cancel]", sync).forEach(function (f) { f.action = data.cancel_url; });
      $$("form[data-fetch-retry]", sync).forEach(function (f) { f.action = data.retry_url; });
    }
    // The statuses this page went through, for whoever wants to know (and the tests).
    var seen = (sync.getAttribute("data-seen") || "").split(" ").filter(Boolean);
    if (data.status && seen[seen.length - 1] !== data.status) seen.push(data.status);
    sync.setAttribute("data-seen", seen.join(" "));
    if (!data.done) {
      renderRunning(data);
      var age = Date.now() - startedAt;
      var delay = age < 5000 ? POLL_MS : age < SLOW_MS ? 500 : 1000;
      window.setTimeout(function () { poll(data.progress_url, id, moveFocus); }, delay);
      return;
    }
    renderDone(data);
    // Whatever the end, the page's other parts follow it (the last sync; the history, or
    // the notice that the payer no longer shares it).
    var refreshed = refreshHistory(id);
    if (!moveFocus) return;
    if (!data.ok) {
      focusOn($(".sync-message", result));
      return;
    }
    refreshed.then(function () {
      if (id === followed) focusOn($("#history [data-focus-after-fetch]") || $("#history h2") || $("#history section"));
    });
  }

  function poll(url, id, moveFocus) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) { handle(data, id, moveFocus); })
      .catch(function () {
        // A lost poll (network hiccup, server restart) is retried, more slowly.
        if (id !== followed) return;
        if (startedAt && Date.now() - startedAt >= SLOW_MS) showSlow("The EMR server is not answering; the fetch may still be running.");
        window.setTimeout(function () { poll(url, id, moveFocus); }, 2000);
      });
  }

  function couldNotStart(message, id) {
    handle({ done: true, ok: false, again: false, status: "failed", step_index: 0, alert: "alert-error",
             message: message, announce: "The fetch could not start.", causes: [], error: "" }, id, true);
  }

  /* Fetch, Retry and Try again: start a fetch (Retry cancels the one running first) and follow it. */
  function start(form) {
    var id = ++followed;
    startedAt = Date.now();
    sync.removeAttribute("data-history-loaded");  // set again once this fetch's end is on the page
    setFetchBusy(true);
    setActionsBusy(true);
    panel.hidden = false;
    result.hidden = true;
    panel.classList.remove("is-slow", "is-done");
    slowBox.hidden = true;
    detail.hidden = true;
    announce("");
    live.focus();
    announce("Starting the fetch…");
    post(form)
      .then(function (res) {
        if (res.status !== 202) return couldNotStart(res.body.error || "The fetch could not start.", id);
        handle(res.body, id, true);
      })
      .catch(function () { couldNotStart("The fetch could not start: the EMR server did not answer.", id); });
  }

  function cancel(form) {
    setActionsBusy(true);
    post(form)
      .then(function (res) {
        if (res.status !== 200) throw new Error("HTTP " + res.status);
        handle(res.body, ++followed, true);  // no more polls of it
      })
      .catch(function () {
        setActionsBusy(false);
        showSlow("The cancel did not reach the EMR server; try again.");
      });
  }

  $$("form[data-fetch], form[data-fetch-retry]", sync).forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      start(form);
    });
  });
  $$("form[data-fetch-cancel]", sync).forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      cancel(form);
    });
  });
  var resume = sync.getAttribute("data-progress-url");
  if (resume) poll(resume, ++followed, false);
})();
