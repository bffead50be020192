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

  // ------------------------------------------------------------ live patches
  // Each `update` is a run of <template data-op=…> elements (see c0re_web/render.py `op`),
  // each replacing or inserting elements by id. Applied here rather than by htmx so that a
  // conversation can move to the top of the flow, a row can be inserted where it belongs
  // and a list can be kept short; every op is harmless to apply twice.

  function firstElement(fragment) {
    for (var n = fragment.firstChild; n; n = n.nextSibling) {
      if (n.nodeType === 1) return n;
    }
    return null;
  }

  function activate(el) {
    if (window.htmx && (el.hasAttribute("hx-post") || el.querySelector("[hx-post],[hx-get]"))) {
      window.htmx.process(el);
    }
  }

  function dropPlaceholder(container) {
    var empty = container.querySelector(":scope > .empty");
    if (empty) empty.remove();
  }

  function trim(container, keep, at) {
    if (!keep) return;
    var items = container.querySelectorAll(":scope > [id]");
    for (var i = items.length - 1; i >= keep; i--) {
      (at === "first" ? items[i] : items[items.length - 1 - i]).remove();
    }
  }

  function place(container, el, at) {
    if (at === "first") container.prepend(el); else container.append(el);
  }

  var touched = { rows: false, inbox: false };

  function applyOp(op) {
    var d = op.dataset;
    var fragment = op.content;
    var el, old, container;
    switch (d.op) {
      case "replace":
        old = document.getElementById(d.id);
        el = firstElement(fragment);
        if (old && el) { old.replaceWith(el); activate(el); }
        break;
      case "remove":
        old = document.getElementById(d.id);
        if (old) old.remove();
        break;
      case "inner":
        container = document.querySelector(d.target);
        if (container) { container.replaceChildren(fragment); activate(container); }
        break;
      case "append":
        container = document.querySelector(d.into);
        if (container) container.append(fragment);
        break;
      case "upsert":
        container = document.querySelector(d.into);
        Array.prototype.slice.call(fragment.children).forEach(function (item) {
          old = item.id ? document.getElementById(item.id) : null;
          if (old && !d.move) {
            old.replaceWith(item);
          } else if (container) {
            if (old) old.remove();
            dropPlaceholder(container);
            place(container, item, d.at);
          }
          activate(item);
        });
        if (container) trim(container, +d.keep, d.at);
        break;
      case "line":
        container = document.getElementById("flow");
        if (!container) break;
        var conv = document.getElementById(d.conv);
        if (!conv) {
          conv = document.createElement("article");
          conv.className = "conv";
          conv.id = d.conv;
          conv.append(document.createElement("header"));
        }
        var head = conv.querySelector(":scope > header");
        if (head && d.head) head.textContent = d.head;
        dropPlaceholder(container);
        if (container.firstElementChild !== conv) container.prepend(conv);
        el = firstElement(fragment);
        old = el && el.id ? document.getElementById(el.id) : null;
        if (old) old.replaceWith(el); else if (el) conv.append(el);
        trim(container, +d.keep, "first");
        break;
    }
    if (d.into === "#agents" || (d.id && d.id.indexOf("agent-") === 0)) touched.rows = true;
    if (d.into && d.into.indexOf("#inbox-list-") === 0) touched.inbox = true;
    if (d.id && d.id.indexOf("mstate-") === 0) touched.inbox = true;
  }

  // ------------------------------------------------------------ what the operator is typing
  // A live patch replaces whole cards and sections (an approval, a question, an agent's
  // head). Whatever the operator had typed or ticked in a form there, and the focus and the
  // cursor, move to the new element with the same place (the nearest id) and name, so a
  // redraw never wipes a note or an answer being written, nor sends a form without it.

  function fieldKey(el) {
    var owner = el.closest("[id]");
    if (!owner || !el.name || el.type === "hidden") return null;
    var key = owner.id + "|" + el.name;
    if (el.type === "checkbox" || el.type === "radio") key += "|" + el.value;
    return key;
  }

  function edited(el) {
    if (el.type === "checkbox" || el.type === "radio") return el.checked !== el.defaultChecked;
    if (el.tagName === "SELECT") {
      return Array.prototype.some.call(el.options, function (o) { return o.selected !== o.defaultSelected; });
    }
    return el.value !== el.defaultValue;
  }

  function detailsKey(el) {
    var owner = el.parentElement && el.parentElement.closest("[id]");
    if (!owner) return null;
    return owner.id + "|details|" + Array.prototype.indexOf.call(owner.querySelectorAll("details"), el);
  }

  function saveFields() {
    var saved = [];
    document.querySelectorAll("details[open]").forEach(function (el) {
      var key = detailsKey(el);
      if (key) saved.push({ key: key, el: el, details: true });
    });
    var focused = document.activeElement;
    document.querySelectorAll("input, textarea, select").forEach(function (el) {
      if (el !== focused && !edited(el)) return;
      var key = fieldKey(el);
      if (!key) return;
      var field = { key: key, el: el, value: el.value, checked: el.checked, focused: el === focused };
      try { field.start = el.selectionStart; field.end = el.selectionEnd; } catch (e) { /* no cursor */ }
      saved.push(field);
    });
    return saved;
  }

  function restoreFields(saved) {
    var replaced = saved.filter(function (f) { return !f.el.isConnected; });
    if (!replaced.length) return;
    var now = {};
    document.querySelectorAll("input, textarea, select").forEach(function (el) {
      var key = fieldKey(el);
      if (key && !(key in now)) now[key] = el;
    });
    document.querySelectorAll("details").forEach(function (el) {
      var key = detailsKey(el);
      if (key && !(key in now)) now[key] = el;
    });
    replaced.forEach(function (f) {
      var el = now[f.key];
      if (!el) return; // its card is gone (decided, answered, withdrawn)
      if (f.details) { el.open = true; return; } // an open diff stays open (and loads again)
      if (el.type === "checkbox" || el.type === "radio") el.checked = f.checked; else el.value = f.value;
      if (f.focused) {
        el.focus();
        try { if (f.start != null) el.setSelectionRange(f.start, f.end); } catch (e) { /* no cursor */ }
      }
    });
  }

  function applyPatches(html) {
    var holder = document.createElement("template");
    holder.innerHTML = html;
    var fields = saveFields();
    Array.prototype.slice.call(holder.content.children).forEach(function (op) {
      if (op.tagName === "TEMPLATE") applyOp(op);
    });
    restoreFields(fields);
    if (touched.rows) { touched.rows = false; arrangeAgents(); }
    if (touched.inbox) { touched.inbox = false; recountInbox(); }
  }

  // Remember the last event seen, so a fresh EventSource (after an error) resumes from it.
  function remember(id) {
    if (live && id) {
      var url = new URL(live.getAttribute("sse-connect"), window.location.href);
      url.searchParams.set("since", id);
      live.setAttribute("sse-connect", url.pathname + url.search);
      live.dataset.seq = id;
    }
  }

  // The server lost track of what this page shows: reload its snapshot.
  document.body.addEventListener("htmx:sseBeforeMessage", function (e) {
    if (!e.detail) return;
    if (e.detail.type === "resync") {
      e.preventDefault();
      window.location.reload();
    } else if (e.detail.type === "update") {
      e.preventDefault();
      applyPatches(e.detail.data || "");
      remember(e.detail.lastEventId);
      refreshTimes();
    }
  });

  // ------------------------------------------------------------ agents: filter and groups

  var agents = document.getElementById("agents");
  var filter = document.getElementById("agent-filter");
  var group = document.getElementById("agent-group");
  var shownNote = document.getElementById("agent-shown");
  var store = window.localStorage;

  function rowText(row) {
    var text = row.querySelector(".status-text");
    return [row.dataset.name, row.dataset.role, row.dataset.status, row.dataset.parent,
      text ? text.textContent : ""].join(" ").toLowerCase();
  }

  function arrangeAgents() {
    if (!agents) return;
    var mode = group ? group.value : "";
    var rows = Array.prototype.slice.call(agents.querySelectorAll(":scope > .agent-row"));
    var key = function (row) { return mode ? (row.dataset[mode] || "(none)") : ""; };
    rows.sort(function (a, b) {
      var ka = key(a), kb = key(b);
      if (ka !== kb) return ka < kb ? -1 : 1;
      return a.dataset.name < b.dataset.name ? -1 : a.dataset.name > b.dataset.name ? 1 : 0;
    });
    var wanted = [];
    var current = null;
    rows.forEach(function (row) {
      if (mode && key(row) !== current) {
        current = key(row);
        var head = document.createElement("div");
        head.className = "group-head";
        head.dataset.group = current;
        head.textContent = mode + ": " + current;
        wanted.push(head);
      }
      wanted.push(row);
    });
    var now = Array.prototype.slice.call(agents.querySelectorAll(":scope > .agent-row, :scope > .group-head"));
    var same = now.length === wanted.length && now.every(function (n, i) {
      var w = wanted[i];
      return n === w || (n.className === "group-head" && w.className === "group-head" && n.dataset.group === w.dataset.group);
    });
    if (!same) {
      now.forEach(function (n) { if (n.className === "group-head") n.remove(); });
      var frag = document.createDocumentFragment();
      wanted.forEach(function (n) { frag.append(n); });
      agents.append(frag);
    }
    filterAgents();
  }

  function filterAgents() {
    if (!agents) return;
    var words = (filter ? filter.value : "").toLowerCase().split(/\s+/).filter(Boolean);
    var rows = agents.querySelectorAll(":scope > .agent-row");
    var shown = 0;
    var perGroup = {};
    rows.forEach(function (row) {
      var text = rowText(row);
      var hit = words.every(function (w) { return text.indexOf(w) >= 0; });
      row.hidden = !hit;
      if (hit) {
        shown++;
        var g = group && group.value ? (row.dataset[group.value] || "(none)") : "";
        perGroup[g] = (perGroup[g] || 0) + 1;
      }
    });
    agents.querySelectorAll(":scope > .group-head").forEach(function (head) {
      var n = perGroup[head.dataset.group] || 0;
      head.hidden = n === 0;
      head.textContent = group.value + ": " + head.dataset.group + " (" + n + ")";
    });
    if (shownNote) shownNote.textContent = words.length ? shown + " of " + rows.length + " shown" : rows.length + " agents";
  }

  if (agents) {
    if (filter) {
      filter.value = store.getItem("hive.agentFilter") || "";
      filter.addEventListener("input", function () {
        store.setItem("hive.agentFilter", filter.value);
        filterAgents();
      });
    }
    if (group) {
      group.value = store.getItem("hive.agentGroup") || "";
      group.addEventListener("change", function () {
        store.setItem("hive.agentGroup", group.value);
        arrangeAgents();
      });
    }
    arrangeAgents();
  }

  // ------------------------------------------------------------ an agent's inbox counts

  function recountInbox() {
    document.querySelectorAll("[data-inbox-counts]").forEach(function (p) {
      var name = p.dataset.inboxCounts;
      var list = document.getElementById("inbox-list-" + name);
      if (!list) return;
      var lines = list.querySelectorAll(":scope > .msg");
      ["queued", "leased", "acked"].forEach(function (state) {
        var chip = p.querySelector('[data-count="' + state + '"]');
        var n = list.querySelectorAll(":scope > .msg.in .chip.state-" + state).length;
        if (chip) chip.textContent = n + " " + (state === "acked" ? "delivered" : state);
      });
      var all = p.querySelector('[data-count="all"]');
      if (all) all.textContent = lines.length;
    });
  }

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
