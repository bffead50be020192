// hyperhive dashboard: the few behaviours htmx does not cover. Loaded as a file (the CSP
// forbids inline script); no build step, no framework.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var liveStatus = document.getElementById("live-status");

  function setLive(state, text) {
    if (liveStatus) {
      liveStatus.dataset.state = state;
      liveStatus.textContent = text;
    }
  }

  // Remember the last event seen, so a fresh EventSource (after an error) resumes from it.
  document.body.addEventListener("htmx:sseMessage", function (e) {
    var id = e.detail && e.detail.lastEventId;
    if (live && id) {
      var url = new URL(live.getAttribute("sse-connect"), window.location.href);
      url.searchParams.set("since", id);
      live.setAttribute("sse-connect", url.pathname + url.search);
      live.dataset.seq = id;
    }
    refreshTimes();
  });

  // The server lost track of what this page shows: reload its snapshot.
  document.body.addEventListener("htmx:sseBeforeMessage", function (e) {
    if (e.detail && e.detail.type === "resync") {
      e.preventDefault();
      window.location.reload();
    }
  });

  document.body.addEventListener("htmx:sseOpen", function () {
    setLive("on", "live");
  });

  // A stream error is either the network or an ended session; only the latter needs the login page.
  document.body.addEventListener("htmx:sseError", function () {
    setLive("off", "reconnecting…");
    fetch("/api/ping", { credentials: "same-origin", headers: { Accept: "text/plain" } })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/login");
        }
      })
      .catch(function () {});
  });

  // Toasts go away on their own (errors stay longer) or on a click.
  var toasts = document.getElementById("toasts");
  if (toasts) {
    new MutationObserver(function (mutations) {
      mutations.forEach(function (mutation) {
        mutation.addedNodes.forEach(function (node) {
          if (node.nodeType !== 1) return;
          node.addEventListener("click", function () { node.remove(); });
          window.setTimeout(function () { node.remove(); }, node.classList.contains("bad") ? 15000 : 6000);
        });
      });
    }).observe(toasts, { childList: true });
  }

  // Relative times ("3m ago") stay true without a redraw.
  function ago(ts) {
    var s = Math.floor(Date.now() / 1000 - ts);
    if (s < 0) return "just now";
    if (s >= 86400) return Math.floor(s / 86400) + "d ago";
    if (s >= 3600) return Math.floor(s / 3600) + "h ago";
    if (s >= 60) return Math.floor(s / 60) + "m ago";
    return s + "s ago";
  }
  // How long something has waited ("5m", "2h"): an open question's age.
  function age(since) {
    var s = Math.max(0, Math.floor(Date.now() / 1000 - since));
    if (s >= 86400) return Math.floor(s / 86400) + "d";
    if (s >= 3600) return Math.floor(s / 3600) + "h";
    if (s >= 60) return Math.floor(s / 60) + "m";
    return s + "s";
  }
  function refreshTimes() {
    document.querySelectorAll("time[data-ts]").forEach(function (t) {
      t.textContent = ago(parseFloat(t.dataset.ts));
    });
    document.querySelectorAll("[data-since]").forEach(function (t) {
      t.textContent = age(parseFloat(t.dataset.since));
    });
  }
  window.setInterval(refreshTimes, 15000);

  // "reply" on a message fills the composer; "cancel" clears it.
  document.body.addEventListener("click", function (e) {
    var composer = document.getElementById("composer");
    if (!composer) return;
    var reply = e.target.closest("[data-reply-id]");
    var cancel = e.target.closest("[data-reply-cancel]");
    var marker = composer.querySelector(".replying");
    var field = composer.querySelector("[name=in_reply_to]");
    if (reply) {
      field.value = reply.dataset.replyId;
      composer.querySelector("[name=to]").value = reply.dataset.replyTo;
      marker.querySelector("b").textContent = reply.dataset.replyId;
      marker.hidden = false;
      composer.querySelector("textarea").focus();
    } else if (cancel) {
      field.value = "";
      marker.hidden = true;
    }
  });
})();
