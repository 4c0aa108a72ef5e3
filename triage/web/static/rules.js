// The Rules page: the editor's text is checked by the engine's loader as you type (debounced
// POST /api/rules/validate; the answer goes to an aria-live region beside the editor), the
// what-if is fetched on demand (POST /api/rules/simulate: figures, chart and changed studies
// as HTML drawn by the server), and after an apply the page asks GET /api/rules until the
// engine has put the new version in force. Apply and restore are plain forms.
(function () {
  "use strict";
  var form = document.getElementById("apply-form");
  var editor = document.getElementById("rules-text");
  var result = document.getElementById("validation");
  var caret = document.getElementById("caret");
  var simButton = document.getElementById("simulate");
  var simOut = document.getElementById("simulation");
  var force = document.getElementById("force");
  var forceStatus = document.getElementById("force-status");
  var csrf = form.dataset.csrf;
  var seq = 0, timer = null;

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (r) { return r.json().then(function (data) { return { status: r.status, data: data }; }); });
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function gotoLine(n) {
    var lines = editor.value.split("\n");
    var start = 0;
    for (var i = 0; i < n - 1 && i < lines.length; i++) { start += lines[i].length + 1; }
    var end = start + (lines[n - 1] || "").length;
    editor.focus();
    editor.setSelectionRange(start, end);
    var lineHeight = editor.scrollHeight / Math.max(lines.length, 1);
    editor.scrollTop = Math.max(0, (n - 3) * lineHeight);
  }

  function showCheck(data) {
    result.innerHTML = "";
    if (data.ok) {
      result.className = "ok";
      var p = el("p", "check-ok", "✓ Valid. Version ");
      p.appendChild(el("code", "", data.version_id));
      p.appendChild(document.createTextNode(data.same_as_in_force ? ", the rules in force." : "."));
      result.appendChild(p);
      editor.removeAttribute("aria-invalid");
      return;
    }
    result.className = "bad";
    result.appendChild(el("p", "check-bad", "✗ Not valid: the engine would refuse this text."));
    var ul = el("ul", "errors");
    (data.errors || []).forEach(function (e) {
      var li = el("li");
      if (e.line) {
        var b = el("button", "goto", "Line " + e.line);
        b.type = "button";
        b.dataset.line = String(e.line);
        li.appendChild(b);
        li.appendChild(document.createTextNode(" "));
      }
      li.appendChild(document.createTextNode(e.reason));
      ul.appendChild(li);
    });
    result.appendChild(ul);
    editor.setAttribute("aria-invalid", "true");
  }

  function check() {
    var mine = ++seq;
    result.setAttribute("aria-busy", "true");
    post("/api/rules/validate", { text: editor.value }).then(function (r) {
      if (mine !== seq) { return; } // an older answer: the text changed since
      result.removeAttribute("aria-busy");
      if (r.status !== 200) { result.textContent = "Cannot check: " + (r.data.detail || r.data.error || r.status); return; }
      showCheck(r.data);
    }).catch(function () {
      if (mine === seq) { result.removeAttribute("aria-busy"); result.textContent = "Cannot check: the engine did not answer."; }
    });
  }

  editor.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 350);
  });
  // the script is deferred: text typed (or pasted) before it ran raised no event it heard
  if (editor.value !== editor.defaultValue) { check(); }
  function showCaret() {
    var line = editor.value.slice(0, editor.selectionStart).split("\n").length;
    caret.textContent = "Line " + line;
  }
  editor.addEventListener("keyup", showCaret);
  editor.addEventListener("click", showCaret);
  result.addEventListener("click", function (ev) {
    var b = ev.target.closest("button.goto");
    if (b) { gotoLine(parseInt(b.dataset.line, 10)); }
  });

  simButton.addEventListener("click", function () {
    simButton.disabled = true;
    simOut.textContent = "Simulating…";
    post("/api/rules/simulate", {
      text: editor.value,
      since: document.getElementById("sim-since").value,
      readers: document.getElementById("sim-readers").value,
      read_minutes: document.getElementById("sim-minutes").value
    }).then(function (r) {
      simButton.disabled = false;
      if (r.status === 200) { simOut.innerHTML = r.data.html; return; }
      simOut.innerHTML = "";
      var p = el("p", "refused", "Cannot simulate: " + (r.data.detail || r.data.error || r.status));
      simOut.appendChild(p);
      if (r.data.errors) { showCheck({ ok: false, errors: r.data.errors }); }
    }).catch(function () {
      simButton.disabled = false;
      simOut.textContent = "Cannot simulate: the engine did not answer.";
    });
  });

  // after an apply: ask until the engine has put the rules file's version in force
  function watchForce(tries) {
    if (force.dataset.inForce === force.dataset.onFile || tries <= 0) { return; }
    setTimeout(function () {
      fetch("/api/rules", { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (st) {
          if (st.in_force.version_id !== force.dataset.inForce) {
            force.dataset.inForce = st.in_force.version_id;
            document.getElementById("force-version").textContent = st.in_force.version_id;
          }
          force.dataset.onFile = st.file.version_id;
          if (!st.file.ok) {
            forceStatus.textContent = "The rules file has an error: the engine refused it and keeps version " + st.in_force.version_id + ".";
            return;
          }
          if (st.file.in_force) {
            forceStatus.textContent = "Version " + st.in_force.version_id + " is now in force; the open studies were re-scored.";
            document.querySelectorAll("#versions-table tr[data-version]").forEach(function (tr) {
              if (tr.dataset.version === st.in_force.version_id) {
                var cell = tr.children[4];
                if (cell && /not in force yet/.test(cell.textContent)) { cell.innerHTML = "<strong>in force</strong>"; }
              }
            });
            return;
          }
          watchForce(tries - 1);
        })
        .catch(function () { watchForce(tries - 1); });
    }, 1000);
  }
  watchForce(600);
})();
