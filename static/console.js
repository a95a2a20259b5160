/* Tenant console: the few things htmx and the server cannot do.
 *
 * The server renders every region and pushes what changed over the websocket;
 * htmx's ws extension swaps it in by id and idiomorph morphs it into the page
 * (so open log panels, an open dialog, typed text and scroll positions stay).
 * This file keeps only: the live indicator and the silent-socket watchdog,
 * the server's clock offset, elapsed times and a progress bar that eases
 * inside long steps and never goes backwards, toasts' timers, and "Copy
 * diagnostics".
 */
(function () {
  "use strict";

  // ------------------------------------------------------------ server clock
  // Times on the page are the server's; the offset keeps elapsed times and the
  // progress bar right on a client whose clock is off. The page says the
  // server's time once (data-now on its live root), so pushes never carry a
  // clock that would make every render differ.
  var clockOffset = 0; // client now - server now, in ms

  function serverNow() {
    return Date.now() - clockOffset;
  }

  function readClock(root) {
    var el = root.querySelector ? root.querySelector("[data-now]") : null;
    if (root.matches && root.matches("[data-now]")) el = root;
    if (el && el.dataset.now) {
      var t = Date.parse(el.dataset.now);
      if (!isNaN(t)) clockOffset = Date.now() - t;
    }
  }

  function formatElapsed(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
  }

  // ------------------------------------------------------------ live indicator
  var everOpen = false;
  var retryDelay = 1000;
  var unloading = false;
  var lastHeard = Date.now();
  var liveSocket = null; // the socket the ws extension opened last
  var abandoned = typeof WeakSet === "function" ? new WeakSet() : null; // closed here on purpose
  var attempts = 0;
  window.addEventListener("pagehide", function () { unloading = true; });

  function setLive(state, text) {
    var el = document.getElementById("live-indicator");
    if (!el) return;
    if (el.dataset.state === state) return;
    el.dataset.state = state;
    var label = el.querySelector(".live-text");
    if (label) label.textContent = text;
  }

  // htmx.createWebSocket is the ws extension's documented hook for making the
  // socket: wrapping it tells this page which socket is current, so that it
  // can close one that went silent.
  if (window.htmx && typeof htmx.createWebSocket === "function") {
    var createSocket = htmx.createWebSocket;
    htmx.createWebSocket = function (url) {
      liveSocket = createSocket(url);
      return liveSocket;
    };
  }

  // A new socket, through htmx's public API: changing an attribute of the
  // ws-connect element and processing it again makes the extension connect
  // afresh; the server then sends the full current state.
  function reconnect() {
    var root = document.querySelector("[ws-connect]");
    if (!root || unloading || !window.htmx) return;
    setLive("reconnecting", "Reconnecting…");
    if (liveSocket) {
      if (abandoned) abandoned.add(liveSocket);
      try {
        liveSocket.close(4000, "silent");
      } catch (e) {
        /* already closed */
      }
    }
    attempts += 1;
    lastHeard = Date.now();
    root.setAttribute("data-live-attempt", String(attempts));
    htmx.process(root);
  }

  // The server sends a heartbeat every data-heartbeat seconds; two intervals
  // of silence on an open socket mean something between here and the server
  // stopped forwarding without closing it.
  function heartbeatSeconds() {
    var root = document.querySelector("[ws-connect][data-heartbeat]");
    var seconds = root ? parseFloat(root.getAttribute("data-heartbeat")) : NaN;
    return isFinite(seconds) && seconds > 0 ? seconds : 0;
  }
  setInterval(function () {
    var seconds = heartbeatSeconds();
    var el = document.getElementById("live-indicator");
    if (!seconds || !el || el.dataset.state !== "live") return;
    if (Date.now() - lastHeard > 2 * seconds * 1000) reconnect();
  }, 500);

  document.addEventListener("htmx:wsConnecting", function () {
    if (everOpen) setLive("reconnecting", "Reconnecting…");
  });
  // Marks that the socket's state has been applied at least once (the first
  // message after every connect is the full current state); tests wait on it.
  document.addEventListener("htmx:wsAfterMessage", function () {
    lastHeard = Date.now();
    document.body.setAttribute("data-live-synced", "true");
  });
  document.addEventListener("htmx:wsOpen", function () {
    everOpen = true;
    retryDelay = 1000;
    lastHeard = Date.now();
    setLive("live", "Live");
  });
  document.addEventListener("htmx:wsError", function () {
    setLive("reconnecting", "Reconnecting…");
  });
  document.addEventListener("htmx:wsClose", function (evt) {
    var closed = evt.detail && evt.detail.event;
    if (unloading || (abandoned && closed && abandoned.has(closed.target))) return;
    document.body.removeAttribute("data-live-synced");
    var code = closed ? closed.code : 0;
    // The server closes with 4401 when the session no longer signs this user
    // in (signed out, deactivated, password changed): reconnecting would only
    // be refused again, so go and sign in. 4403: still signed in, with another
    // role; the whole page was rendered for the old one, so reload it.
    if (code === 4401) {
      setLive("offline", "Signed out");
      window.location.assign(
        "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search)
      );
      return;
    }
    if (code === 4403) {
      setLive("offline", "Role changed — reloading");
      window.location.reload();
      return;
    }
    setLive("reconnecting", "Reconnecting…");
    // htmx reconnects by itself after 1006, 1011, 1012 and 1013; after any
    // other close (a server closing cleanly, a restart) reconnect here, so a
    // page never stays stale. The server sends the full state on connect.
    if ([1006, 1011, 1012, 1013].indexOf(code) >= 0) return;
    var delay = retryDelay;
    retryDelay = Math.min(retryDelay * 2, 15000);
    setTimeout(reconnect, delay + Math.random() * 500);
  });

  // ------------------------------------------------------------ progress bars
  var maxProgress = Object.create(null); // per tenant and run: never go backwards

  function barPercent(d) {
    var total = Math.max(1, +d.total || 1);
    var done = +d.done || 0;
    if (d.mode === "done") return 100;
    var within = 0;
    if (d.mode === "live") {
      within = +d.reported || 0;
      if (d.started) {
        var started = Date.parse(d.started);
        var expected = Math.max(0.2, +d.expected || 1);
        if (!isNaN(started)) {
          var elapsed = Math.max(0, (serverNow() - started) / 1000);
          // Quick at first, ~92% of the step at its expected duration, then
          // creeping towards 97% when it takes longer: moving, never done early.
          var x = elapsed / expected;
          var knee = 1 - Math.exp(-2.5);
          var eased = x <= 1 ? 1 - Math.exp(-2.5 * x) : knee + (0.97 - knee) * (1 - Math.exp(-(x - 1) / 5));
          within = Math.max(within, eased);
        }
      }
      within = Math.min(within, 0.97);
    }
    return Math.min(100, ((done + within) / total) * 100);
  }

  function updateBars() {
    var bars = document.querySelectorAll("[data-progress]");
    for (var i = 0; i < bars.length; i++) {
      var bar = bars[i];
      var pct = barPercent(bar.dataset);
      var key = bar.dataset.key;
      if (key) {
        pct = Math.max(pct, maxProgress[key] || 0);
        maxProgress[key] = pct;
      }
      var fill = bar.querySelector(".bar-fill");
      if (fill) fill.style.width = pct.toFixed(1) + "%";
      bar.setAttribute("aria-valuenow", String(Math.round(pct)));
    }
  }

  function updateTimes() {
    var now = serverNow();
    var since = document.querySelectorAll("[data-since]");
    for (var i = 0; i < since.length; i++) {
      var t = Date.parse(since[i].dataset.since);
      if (!isNaN(t)) since[i].textContent = formatElapsed(now - t);
    }
    var countdowns = document.querySelectorAll("[data-countdown]");
    for (var j = 0; j < countdowns.length; j++) {
      var at = Date.parse(countdowns[j].dataset.countdown);
      if (isNaN(at)) continue;
      var left = Math.ceil((at - now) / 1000);
      countdowns[j].textContent = left > 0 ? "(in " + left + "s)" : "(now)";
    }
  }

  // ------------------------------------------------------------ morphing
  // What the user opened stays open when a region is morphed: the server's
  // HTML never removes "open" from a log panel or a dialog (it may add it).
  if (window.Idiomorph) {
    Idiomorph.defaults.ignoreActiveValue = true;
    Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, node, change) {
      return !(change === "remove" && name === "open");
    };
  }

  // An item inserted into a list (a new event on top, a toast) that the page
  // already shows is not added twice: an action's own response and the push
  // that announces it can both bring it. Swaps by id (a Document fragment)
  // replace, so they need nothing.
  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    var fragment = evt.detail.fragment;
    if (!fragment || fragment instanceof DocumentFragment || !fragment.children) return;
    Array.prototype.slice.call(fragment.children).forEach(function (item) {
      if (item.id && document.getElementById(item.id)) item.remove();
    });
  });

  // ------------------------------------------------------------ forms
  document.addEventListener("click", function (evt) {
    var toastClose = evt.target.closest("[data-close-toast]");
    if (toastClose) dismissToast(toastClose.closest(".toast"));
  });

  // A form posted without htmx (sign-in, create): once clicked, once sent.
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!form.hasAttribute("data-once")) return;
    setTimeout(function () {
      var buttons = form.querySelectorAll("button[type='submit']");
      for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    }, 0); // after the browser has collected the form
  });

  // ------------------------------------------------------------ toasts
  function dismissToast(toast) {
    if (!toast || toast.classList.contains("toast--leaving")) return;
    toast.classList.add("toast--leaving");
    setTimeout(function () { toast.remove(); }, 300);
  }

  function armToasts(root) {
    var toasts = root.querySelectorAll ? root.querySelectorAll(".toast[data-autodismiss]") : [];
    if (root.matches && root.matches(".toast[data-autodismiss]")) toasts = [root];
    for (var i = 0; i < toasts.length; i++) {
      var toast = toasts[i];
      if (toast.dataset.armed) continue;
      toast.dataset.armed = "1";
      (function (t) {
        var ms = +t.dataset.autodismiss || 6000;
        var timer = setTimeout(function () { dismissToast(t); }, ms);
        // Hovering or focusing a toast keeps it until the pointer leaves.
        t.addEventListener("mouseenter", function () { clearTimeout(timer); });
        t.addEventListener("focusin", function () { clearTimeout(timer); });
        t.addEventListener("mouseleave", function () {
          timer = setTimeout(function () { dismissToast(t); }, 2000);
        });
      })(toast);
    }
  }

  // A toast of the page's own (a request that failed), from _toast.html's template.
  function toast(text) {
    var box = document.getElementById("toasts");
    var template = document.getElementById("toast-template");
    if (!box || !template) return;
    var el = template.content.firstElementChild.cloneNode(true);
    el.querySelector(".toast-text").textContent = text;
    box.appendChild(el);
    armToasts(el);
  }

  document.addEventListener("htmx:responseError", function (evt) {
    var status = evt.detail.xhr ? evt.detail.xhr.status : 0;
    var text =
      status === 403
        ? "Not allowed: only operators may do this."
        : status === 404
          ? "Not found: the tenant may be gone."
          : "The server could not do this (" + status + "). Reload and try again.";
    toast(text);
  });
  document.addEventListener("htmx:sendError", function () {
    toast("The request did not reach the server. Check the connection and try again.");
  });

  // ------------------------------------------------------------ diagnostics
  // "Copy diagnostics": fetch the bundle, copy it; where the clipboard API is
  // missing or refused (plain http on another host), select it in a textarea.
  function copyFallback(text, box) {
    var area = box.querySelector("textarea");
    if (!area) {
      area = document.createElement("textarea");
      area.readOnly = true;
      area.setAttribute("aria-label", "Diagnostics");
      box.appendChild(area);
    }
    area.value = text;
    area.focus();
    area.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    return ok;
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-copy-diagnostics]");
    if (!button) return;
    var box = button.closest(".diagnostics-card") || button.parentElement;
    var status = box.querySelector(".copy-status");
    var say = function (text) { if (status) status.textContent = text; };
    button.disabled = true;
    say("Collecting diagnostics…");
    fetch(button.getAttribute("data-copy-diagnostics"), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        if (!response.ok) throw new Error("the server answered " + response.status);
        return response.text();
      })
      .then(function (text) {
        var kb = Math.max(1, Math.round(text.length / 1024));
        var done = function () { say("Copied diagnostics (" + kb + " KB) to the clipboard."); };
        var fallback = function () {
          if (copyFallback(text, box)) done();
          else say("Select the text below and copy it (Ctrl+C).");
        };
        if (navigator.clipboard && window.isSecureContext) {
          return navigator.clipboard.writeText(text).then(done, fallback);
        }
        fallback();
      })
      .catch(function (err) {
        say("Could not collect diagnostics: " + err.message);
      })
      .then(function () { button.disabled = false; });
  });

  // ------------------------------------------------------------ wiring
  function onContent(root) {
    readClock(root);
    armToasts(root);
    updateBars();
    updateTimes();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var check = document.getElementById("check-result");
    if (check) check.focus();
  });

  if (window.htmx) {
    htmx.onLoad(onContent);
  } else {
    document.addEventListener("DOMContentLoaded", function () { onContent(document.body); });
  }

  setInterval(function () {
    if (document.hidden) return;
    updateBars();
  }, 250);
  setInterval(function () {
    if (document.hidden) return;
    updateTimes();
  }, 1000);
})();
