// The live worklist: rows pushed by the engine (server-sent events) replace the table body;
// the filters (modality, location, state) are applied here; arrow keys move between studies.
(function () {
  "use strict";
  var table = document.getElementById("worklist");
  var body = document.getElementById("rows");
  var live = document.getElementById("live");
  var count = document.getElementById("count");
  var shown = document.getElementById("shown");
  var selects = Array.prototype.slice.call(document.querySelectorAll("#filters select"));

  function rows() { return Array.prototype.slice.call(body.querySelectorAll("tr[data-uid]")); }
  function visibleLinks() {
    return rows().filter(function (tr) { return !tr.hidden; })
      .map(function (tr) { return tr.querySelector("a.row-link"); });
  }

  function refreshOptions() {
    selects.forEach(function (sel) {
      var key = sel.dataset.key, chosen = sel.value, seen = {};
      rows().forEach(function (tr) { var v = tr.dataset[key]; if (v) { seen[v] = true; } });
      if (chosen) { seen[chosen] = true; }
      var values = Object.keys(seen).sort();
      var have = Array.prototype.slice.call(sel.options, 1).map(function (o) { return o.value; });
      if (values.join("\n") === have.join("\n")) { return; }
      while (sel.options.length > 1) { sel.remove(1); }
      values.forEach(function (v) { var o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o); });
      sel.value = chosen;
    });
  }

  function applyFilters() {
    var total = 0, visible = 0;
    rows().forEach(function (tr) {
      total += 1;
      var ok = selects.every(function (sel) { return !sel.value || tr.dataset[sel.dataset.key] === sel.value; });
      tr.hidden = !ok;
      if (ok) { visible += 1; }
    });
    shown.textContent = visible === total ? "" : "showing " + visible + " of " + total;
  }

  function focusedUid() {
    var el = document.activeElement;
    var tr = el && el.closest ? el.closest("tr[data-uid]") : null;
    return tr && body.contains(tr) ? tr.dataset.uid : null;
  }

  function update(data) {
    var uid = focusedUid();
    body.innerHTML = data.rows_html;
    count.textContent = data.count + " studies";
    refreshOptions();
    applyFilters();
    if (uid) {
      var again = rows().filter(function (tr) { return tr.dataset.uid === uid; })[0];
      var link = again && again.querySelector("a.row-link");
      if (link) { link.focus(); }
    }
    table.dataset.updated = String(Date.now());
  }

  body.addEventListener("keydown", function (ev) {
    var links = visibleLinks();
    var i = links.indexOf(document.activeElement);
    if (i < 0) { return; }
    var next = null;
    if (ev.key === "ArrowDown" || ev.key === "j") { next = links[Math.min(i + 1, links.length - 1)]; }
    else if (ev.key === "ArrowUp" || ev.key === "k") { next = links[Math.max(i - 1, 0)]; }
    else if (ev.key === "Home") { next = links[0]; }
    else if (ev.key === "End") { next = links[links.length - 1]; }
    if (next) { ev.preventDefault(); next.focus(); }
  });
  body.addEventListener("focusin", function (ev) {
    var tr = ev.target.closest("tr"); if (tr) { tr.classList.add("focused"); }
  });
  body.addEventListener("focusout", function (ev) {
    var tr = ev.target.closest("tr"); if (tr) { tr.classList.remove("focused"); }
  });
  selects.forEach(function (sel) { sel.addEventListener("change", applyFilters); });
  applyFilters();  // filters chosen before this deferred script ran apply now
  table.dataset.keys = "on";  // the arrow keys work from here (the script is deferred)

  if (!window.EventSource) { live.textContent = "live updates need a newer browser; reload to refresh"; return; }
  var source = new EventSource("/worklist/events");
  source.addEventListener("open", function () { live.textContent = "live"; });
  source.addEventListener("error", function () { live.textContent = "reconnecting…"; });
  source.addEventListener("worklist", function (ev) { update(JSON.parse(ev.data)); live.textContent = "live"; });
})();
