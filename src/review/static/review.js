// medprm review: keyboard labelling and autosave of the item page. Record text is only ever
// written with textContent (never innerHTML).
(function () {
  "use strict";
  var root = document.getElementById("item");
  if (!root) return;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var steps = Array.prototype.slice.call(root.querySelectorAll(".step"));
  var banner = document.getElementById("banner");
  var saveState = document.getElementById("save-state");
  var cur = -1;

  function show(v) { return v === "1" ? "expert: + correct" : v === "0" ? "expert: − incorrect" : "expert: —"; }
  function fieldName(key) { return key.indexOf("step:") === 0 ? "step " + (parseInt(key.slice(5), 10) + 1) : key; }

  function render(el) {
    var v = el.dataset.value;
    if (el.classList.contains("step")) {
      el.querySelector(".plus").setAttribute("aria-pressed", v === "1" ? "true" : "false");
      el.querySelector(".minus").setAttribute("aria-pressed", v === "0" ? "true" : "false");
      el.querySelector(".expert").textContent = show(v);
    } else if (!el._dirty && el.value !== v) {
      el.value = v;
    }
  }

  function message(text, cls) {
    banner.textContent = text;
    banner.className = "banner " + cls;
    banner.hidden = false;
  }

  function addHistory(v) {
    var ul = document.getElementById("history");
    var none = ul.querySelector(".none");
    if (none) none.remove();
    var li = document.createElement("li");
    li.textContent = v.updated_at + " · " + v.updated_by + " · " + fieldName(v.key) + " → " + JSON.stringify(v.value);
    ul.insertBefore(li, ul.firstChild);
  }

  // Saves of one element run one after another, each with the version the previous one returned.
  function save(el, value) {
    var prev = el._queue || Promise.resolve();
    el._queue = prev.then(function () { return send(el, value); });
    return el._queue;
  }

  function send(el, value) {
    saveState.textContent = "Saving…";
    var body = { item_id: root.dataset.item, slot: root.dataset.slot, key: el.dataset.key, value: value, version: parseInt(el.dataset.version, 10) };
    return fetch("/api/save", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { return { status: r.status, body: j }; });
    }).then(function (res) {
      if (res.status === 200) {
        el.dataset.version = String(res.body.version);
        el.dataset.value = res.body.value;
        // A textarea typed on while this save was in flight stays dirty (its timer saves again).
        el._dirty = el.tagName === "TEXTAREA" && el.value !== res.body.value;
        render(el);
        addHistory(res.body);
        saveState.textContent = "Saved " + fieldName(res.body.key) + " at " + res.body.updated_at + ".";
      } else if (res.status === 409 && res.body.current) {
        var c = res.body.current;
        el.dataset.version = String(c.version);
        el.dataset.value = c.value;
        el._dirty = false;
        render(el);
        message("Conflict: " + fieldName(c.key) + " was changed by " + c.updated_by + " at " + c.updated_at +
                " (now " + (c.key.indexOf("step:") === 0 ? show(c.value) : JSON.stringify(c.value)) +
                "). Your change was not saved; the page shows their value. Save again to replace it.", "conflict");
        saveState.textContent = "Not saved (conflict).";
      } else if (res.status === 401) {
        message("Your session has ended: log in again (your last change was not saved).", "error");
      } else {
        message("Not saved: " + (res.body.error || ("HTTP " + res.status)), "error");
      }
    }).catch(function (e) {
      message("Not saved: " + e, "error");
    });
  }

  function select(i) {
    if (!steps.length) return;
    i = Math.max(0, Math.min(steps.length - 1, i));
    if (cur >= 0) steps[cur].classList.remove("current");
    cur = i;
    steps[cur].classList.add("current");
    steps[cur].focus({ preventScroll: true });
    steps[cur].scrollIntoView({ block: "nearest" });
  }

  steps.forEach(function (el, i) {
    el.querySelector(".plus").addEventListener("click", function () { select(i); save(el, "1"); });
    el.querySelector(".minus").addEventListener("click", function () { select(i); save(el, "0"); });
    el.addEventListener("focus", function () { if (cur !== i) select(i); });
  });

  Array.prototype.forEach.call(root.querySelectorAll("textarea.field"), function (el) {
    el.dataset.value = el.value;
    var timer = null;
    el.addEventListener("input", function () {
      el._dirty = true;
      clearTimeout(timer);
      timer = setTimeout(function () { save(el, el.value); }, 600);
    });
    el.addEventListener("blur", function () {
      clearTimeout(timer);
      if (el._dirty) save(el, el.value);
    });
  });

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT")) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "j") { select(cur + 1); e.preventDefault(); }
    else if (e.key === "k") { select(cur - 1); e.preventDefault(); }
    else if ((e.key === "+" || e.key === "=") && cur >= 0) { save(steps[cur], "1"); e.preventDefault(); }
    else if ((e.key === "-" || e.key === "_") && cur >= 0) { save(steps[cur], "0"); e.preventDefault(); }
    else if (e.key === "n" && root.dataset.next) { window.location.href = root.dataset.next; e.preventDefault(); }
  });

  Array.prototype.forEach.call(root.querySelectorAll("img.zoom"), function (img) {
    function toggle() { img.classList.toggle("zoomed"); }
    img.addEventListener("click", toggle);
    img.addEventListener("keydown", function (e) { if (e.key === "Enter") toggle(); });
  });

  var first = steps.findIndex(function (s) { return s.classList.contains("uncertain"); });
  select(first >= 0 ? first : 0);
})();
