/* imgflow report: the item list, its filters and pages. Vanilla JavaScript, no framework.
 *
 * Data comes from script files beside the page (browsers refuse fetch() on file:// URLs):
 * data/index.js calls imgflowReport.index() with what the filters need for every item, and
 * data/items-NNNNN.js call imgflowReport.chunk() with the items themselves, loaded only when a
 * page shows one of their rows. Every string from the data goes into the page with textContent
 * or as an attribute value: nothing is ever parsed as HTML.
 */
(function () {
  "use strict";

  var state = { index: null, failures: null, chunks: new Map(), pending: new Map(), page: 0, token: 0 };
  var STATUS = { d: "done", s: "skipped", f: "failed" };

  window.imgflowReport = {
    index: function (data) {
      state.index = data;
    },
    chunk: function (number, items) {
      state.chunks.set(number, items);
    },
  };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = src;
      script.onload = function () { resolve(); };
      script.onerror = function () { reject(new Error("cannot load " + src)); };
      document.body.appendChild(script);
    });
  }

  function loadChunk(number) {
    if (state.chunks.has(number)) return Promise.resolve(state.chunks.get(number));
    if (!state.pending.has(number)) {
      var name = "data/items-" + String(number).padStart(5, "0") + ".js";
      state.pending.set(number, loadScript(name).then(function () {
        state.pending.delete(number);
        return state.chunks.get(number) || [];
      }));
    }
    return state.pending.get(number);
  }

  function value(id) {
    return $(id).value;
  }

  function fillSelect(id, options) {
    var select = $(id);
    options.forEach(function (option) {
      var node = el("option", null, option[1]);
      node.value = option[0];
      select.appendChild(node);
    });
  }

  function failureMap() {
    if (!state.failures) {
      state.failures = new Map();
      state.index.failures.forEach(function (f) { state.failures.set(f[0], f); });
    }
    return state.failures;
  }

  /* Positions of the items the filters select, in input-path order. */
  function selection() {
    var ix = state.index;
    var status = value("f-status"), code = value("f-code"), step = value("f-step"), folder = value("f-folder");
    var ranges = folder === "" ? [[0, ix.total]] : ix.folders[Number(folder)][1];
    var failures = code !== "" || step !== "" ? failureMap() : null;
    var out = [];
    ranges.forEach(function (range) {
      for (var pos = range[0]; pos < range[1]; pos++) {
        if (status !== "" && ix.status.charAt(pos) !== status) continue;
        if (failures) {
          var f = failures.get(pos);
          if (!f) continue;
          if (code !== "" && f[1] !== Number(code)) continue;
          if (step !== "" && f[2] !== Number(step)) continue;
        }
        out.push(pos);
      }
    });
    return out;
  }

  function thumb(src, alt) {
    var img = el("img", "thumb");
    img.src = src;
    img.alt = alt;
    img.loading = "lazy";
    img.decoding = "async";
    return img;
  }

  function noThumb(text) {
    return el("div", "thumb none", text);
  }

  function boxesLayer(boxes) {
    var layer = el("div", "boxes");
    boxes.forEach(function (b) {
      var box = el("div", "box");
      box.style.left = b[0] * 100 + "%";
      box.style.top = b[1] * 100 + "%";
      box.style.width = Math.max(0, b[2] - b[0]) * 100 + "%";
      box.style.height = Math.max(0, b[3] - b[1]) * 100 + "%";
      box.appendChild(el("span", "label", b[4]));
      layer.appendChild(box);
    });
    return layer;
  }

  function inputFigure(item) {
    var figure = el("div", "figure");
    if (item.i) {
      figure.appendChild(thumb(item.i, "input " + item.p));
      if (item.b && $("f-boxes").checked) figure.appendChild(boxesLayer(item.b));
    } else {
      figure.appendChild(noThumb(item.s === "f" ? "no preview" : "input not available"));
    }
    return figure;
  }

  /* Before/after slider: the output over the input, uncovered from the left by a range input. */
  function slider(item, after) {
    var box = el("div", "slider");
    var before = thumb(item.i, "input " + item.p);
    var top = thumb(after[2], "output " + after[0]);
    top.classList.add("after");
    var range = el("input");
    range.type = "range";
    range.min = "0";
    range.max = "100";
    range.value = "50";
    range.setAttribute("aria-label", "before / after");
    function clip() { top.style.clipPath = "inset(0 0 0 " + range.value + "%)"; }
    range.addEventListener("input", clip);
    clip();
    box.appendChild(before);
    box.appendChild(top);
    box.appendChild(range);
    var checked = 0;
    function check() {
      if (++checked < 2) return;  /* different shapes (a crop): a slider would mislead */
      var a = before.naturalWidth / before.naturalHeight, b = top.naturalWidth / top.naturalHeight;
      if (Math.abs(a - b) > 0.03 * a) box.replaceWith(inputFigure(item));
    }
    before.addEventListener("load", check);
    top.addEventListener("load", check);
    return box;
  }

  function outputsCell(item) {
    var cell = el("td", "outputs");
    (item.o || []).forEach(function (o) {
      var link = o[1] ? el("a") : el("span");
      if (o[1]) {
        link.href = o[1];
        link.title = o[0];
      }
      link.className = "output";
      if (o[2]) link.appendChild(thumb(o[2], "output " + o[0]));
      else link.appendChild(el("span", "name", o[0]));
      cell.appendChild(link);
    });
    if (item.x) cell.appendChild(el("span", "more", "+" + item.x + " more"));
    if (!item.o || !item.o.length) cell.appendChild(el("span", "dim", item.s === "f" ? "—" : "no outputs"));
    return cell;
  }

  function row(item) {
    var tr = el("tr", "item status-" + item.s);
    var input = el("td", "input");
    var firstImage = (item.o || []).filter(function (o) { return o[2]; })[0];
    if (value("f-compare") === "slider" && item.i && firstImage) input.appendChild(slider(item, firstImage));
    else input.appendChild(inputFigure(item));
    input.appendChild(el("div", "path", item.p));
    if (item.z) input.appendChild(el("div", "dim", item.z));
    tr.appendChild(input);
    tr.appendChild(outputsCell(item));
    var status = el("td");
    status.appendChild(el("span", "chip " + item.s, STATUS[item.s] || item.s));
    tr.appendChild(status);
    var details = el("td", "details");
    if (item.s === "f") {
      var head = el("div");
      head.appendChild(el("code", "code", item.c));
      if (item.g) head.appendChild(el("span", "dim", " in " + item.g));
      details.appendChild(head);
      details.appendChild(el("div", "msg", item.m));
    }
    if (item.r) details.appendChild(el("div", "results", item.r));
    tr.appendChild(details);
    var t = item.t || [];
    tr.appendChild(el("td", "num timing", t.map(function (v) { return v === null ? "–" : v; }).join(" / ")));
    return tr;
  }

  function pager(pages) {
    var nav = $("pager");
    nav.replaceChildren();
    if (pages <= 1) return;
    var wanted = new Set([0, pages - 1]);
    for (var p = state.page - 2; p <= state.page + 2; p++) if (p >= 0 && p < pages) wanted.add(p);
    function button(label, page, current) {
      var b = el("button", current ? "current" : "", label);
      b.type = "button";
      b.disabled = page < 0 || page >= pages || current;
      b.dataset.page = String(page);
      nav.appendChild(b);
    }
    button("‹ previous", state.page - 1, false);
    var last = -1;
    Array.from(wanted).sort(function (a, b) { return a - b; }).forEach(function (page) {
      if (page > last + 1) nav.appendChild(el("span", "gap", "…"));
      button(String(page + 1), page, page === state.page);
      last = page;
    });
    button("next ›", state.page + 1, false);
  }

  function show() {
    var token = ++state.token;
    var positions = selection();
    var size = Number(value("f-size"));
    var pages = Math.max(1, Math.ceil(positions.length / size));
    state.page = Math.min(state.page, pages - 1);
    var shown = positions.slice(state.page * size, (state.page + 1) * size);
    var chunk = state.index.chunk;
    var needed = Array.from(new Set(shown.map(function (p) { return Math.floor(p / chunk); })));
    var summary = $("items-summary");
    summary.textContent = "Loading…";
    Promise.all(needed.map(loadChunk)).then(function () {
      if (token !== state.token) return;  /* a newer filter change won */
      var body = $("items-table").tBodies[0];
      var rows = document.createDocumentFragment();
      shown.forEach(function (pos) {
        var items = state.chunks.get(Math.floor(pos / chunk)) || [];
        var item = items[pos % chunk];
        /* done or skipped depends on the latest run, so the index has the letter, not the chunk */
        if (item) rows.appendChild(row(Object.assign({ s: state.index.status.charAt(pos) }, item)));
      });
      body.replaceChildren(rows);
      summary.textContent = positions.length
        ? "Items " + (state.page * size + 1).toLocaleString() + "–" + (state.page * size + shown.length).toLocaleString() +
          " of " + positions.length.toLocaleString() + (positions.length !== state.index.total ? " matching (" + state.index.total.toLocaleString() + " in all)" : "")
        : "No item matches these filters.";
      pager(pages);
    }).catch(function (error) {
      summary.textContent = "The item data could not be loaded (" + error.message + "): rewrite the report with `imgflow report`.";
    });
  }

  function start() {
    var ix = state.index;
    if (ix.compare === "slider" || ix.compare === "side") $("f-compare").value = ix.compare;
    fillSelect("f-code", ix.codes.map(function (c, i) { return [String(i), c]; }));
    fillSelect("f-step", ix.steps.map(function (s, i) { return [String(i), s]; }));
    fillSelect("f-folder", ix.folders.map(function (f, i) {
      var count = f[1].reduce(function (n, r) { return n + r[1] - r[0]; }, 0);
      return [String(i), f[0] + "/ (" + count.toLocaleString() + ")"];
    }));
    $("filters").addEventListener("change", function (event) {
      if (event.target.id !== "f-compare" && event.target.id !== "f-boxes") state.page = 0;
      show();
    });
    $("filters").addEventListener("submit", function (event) { event.preventDefault(); });
    $("pager").addEventListener("click", function (event) {
      var page = event.target.dataset && event.target.dataset.page;
      if (page === undefined || event.target.disabled) return;
      state.page = Number(page);
      show();
      $("items").scrollIntoView();
    });
    show();
  }

  loadScript("data/index.js").then(function () {
    if (!state.index) throw new Error("data/index.js holds no index");
    start();
  }).catch(function (error) {
    $("items-summary").textContent = "The item list could not be loaded (" + error.message + ").";
  });
})();
