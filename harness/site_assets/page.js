
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("lb-data").textContent);
  var byId = {};
  DATA.rows.forEach(function (r) { byId[r.id] = r; });
  var table = document.getElementById("lb");
  var tbody = table.tBodies[0];
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7a5195", "#444444"];

  // ---- sorting: rows without a value always go last
  function cellValue(tr, idx, type) {
    var v = tr.cells[idx].getAttribute("data-v");
    if (v === null || v === "") return null;
    return type === "num" ? parseFloat(v) : v;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
    var btn = th.querySelector("button");
    if (!btn) return;
    btn.addEventListener("click", function () {
      var type = th.getAttribute("data-type");
      var cur = th.getAttribute("aria-sort");
      var dir = cur === "none" ? (type === "num" ? "descending" : "ascending")
                               : (cur === "ascending" ? "descending" : "ascending");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) {
        if (o.hasAttribute("aria-sort")) o.setAttribute("aria-sort", "none");
      });
      th.setAttribute("aria-sort", dir);
      var rows = Array.prototype.slice.call(tbody.rows);
      var sign = dir === "ascending" ? 1 : -1;
      rows.sort(function (a, b) {
        var x = cellValue(a, idx, type), y = cellValue(b, idx, type);
        if (x === null && y === null) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
    });
  });

  // ---- filters
  var selects = document.querySelectorAll(".filters select");
  function applyFilters() {
    var shown = 0;
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var ok = true;
      Array.prototype.forEach.call(selects, function (s) {
        if (s.value !== "" && tr.getAttribute("data-" + s.getAttribute("data-field")) !== s.value) ok = false;
      });
      tr.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("count").textContent = shown + " of " + tbody.rows.length + " rows";
    drawCharts();
  }
  Array.prototype.forEach.call(selects, function (s) { s.addEventListener("change", applyFilters); });

  // ---- per-layer curves (inline SVG)
  function depth(stage, nLayers) {
    if (stage === "encoder") return 0;
    if (stage === "adapter") return 1;
    if (stage === "llm.final") return 6;
    var m = /^llm\.(\d+)$/.exec(stage);
    if (m) return 1 + 4 * (parseInt(m[1], 10) + 1) / Math.max(nLayers, 1);
    return null;
  }
  function nLayers(curves) {
    var n = 0;
    curves.forEach(function (c) {
      var m = /^llm\.(\d+)$/.exec(c.stage);
      if (m) n = Math.max(n, parseInt(m[1], 10) + 1);
    });
    return n;
  }
  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function label(r) {
    return r.model + (r.checkpoint_label ? " (" + r.checkpoint_label + ")" : "") + " · " + r.dataset + " · " + (r.attribute === null ? "(model-level)" : r.attribute) +
      " · " + r.protocol + (r.kind === "reported" ? " (reported)" : "");
  }
  function plotted() {
    var out = [];
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var box = tr.querySelector("input.plot");
      if (box && box.checked && !tr.hidden) out.push(byId[tr.getAttribute("data-id")]);
    });
    return out;
  }
  // a round tick step (1, 2, 2.5 or 5 times a power of ten) giving about n intervals up to max
  function niceStep(max, n) {
    var raw = max / n, p = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10)), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
  }
  function decimals(step) {
    var d = 0;
    while (Math.abs(Math.round(step * Math.pow(10, d)) - step * Math.pow(10, d)) > 1e-9 && d < 6) d += 1;
    return d;
  }
  function drawChart(svg, series, field, yMax, chance, step, yMin) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    yMin = yMin || 0;
    var W = 560, H = 300, L = 52, R = 14, T = 14, B = 40;
    var x = function (d) { return L + (W - L - R) * d / 6; };
    var y = function (v) { return T + (H - T - B) * (1 - (v - yMin) / (yMax - yMin)); };
    var nTicks = Math.round((yMax - yMin) / step), dec = decimals(step);
    for (var k = 0; k <= nTicks; k++) {
      var v = yMin + step * k;
      el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), "class": v === 0 && yMin < 0 ? "axis" : "grid"}, svg);
      el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end", "class": "tick"}, svg, v.toFixed(dec));
    }
    var base = y(yMin);
    el("line", {x1: L, x2: W - R, y1: base, y2: base, "class": "axis"}, svg);
    el("line", {x1: L, x2: L, y1: T, y2: base, "class": "axis"}, svg);
    [[0, "encoder"], [1, "adapter"], [2, "25%"], [3, "50%"], [4, "75%"], [5, "100%"], [6, "final"]].forEach(function (t) {
      el("line", {x1: x(t[0]), x2: x(t[0]), y1: base, y2: base + 4, "class": "axis"}, svg);
      el("text", {x: x(t[0]), y: base + 16, "text-anchor": "middle"}, svg, t[1]);
    });
    el("text", {x: x(3.5), y: H - 4, "text-anchor": "middle"}, svg, "stage (LLM blocks by fraction of depth)");
    el("text", {x: 12, y: T + (H - T - B) / 2, "text-anchor": "middle",
                transform: "rotate(-90 12 " + (T + (H - T - B) / 2) + ")"}, svg,
       field === "accuracy" ? "probe accuracy" : "I_probe (bits)");
    if (!series.length) {
      el("text", {x: x(3), y: y(yMax / 2), "text-anchor": "middle"}, svg, "tick a row to plot its per-layer curve");
      return;
    }
    series.forEach(function (s) {
      var r = s.row, color = s.color, n = nLayers(r.curves);
      var pts = r.curves.filter(function (c) { return c[field] !== null && c[field] !== undefined && depth(c.stage, n) !== null; });
      if (field === "accuracy") {
        var band = pts.filter(function (c) { return c.ci_low !== null && c.ci_high !== null; });
        if (band.length > 1) {
          var up = band.map(function (c) { return x(depth(c.stage, n)) + "," + y(c.ci_high); });
          var lo = band.slice().reverse().map(function (c) { return x(depth(c.stage, n)) + "," + y(c.ci_low); });
          el("polygon", {points: up.concat(lo).join(" "), fill: color, "fill-opacity": 0.13, stroke: "none"}, svg);
        }
        if (r.chance !== null && r.chance !== undefined && chance) {
          el("line", {x1: L, x2: W - R, y1: y(r.chance), y2: y(r.chance), stroke: color, "stroke-width": 1,
                      "stroke-dasharray": "1 3"}, svg);
        }
      }
      var line = el("polyline", {points: pts.map(function (c) { return x(depth(c.stage, n)) + "," + y(c[field]); }).join(" "),
                                 fill: "none", stroke: color, "stroke-width": 2, "data-row": r.id,
                                 "stroke-dasharray": r.kind === "reported" ? "6 4" : "none"}, svg);
      el("title", {}, line, label(r));
      pts.forEach(function (c) {
        var dot = el("circle", {cx: x(depth(c.stage, n)), cy: y(c[field]), r: 3.2,
                                fill: color, stroke: color, "stroke-width": 1.6}, svg);
        if (r.kind === "reported") dot.style.fill = "var(--bg)";  // hollow marker: reported
        el("title", {}, dot, label(r) + "\n" + c.stage + ": " + c[field].toFixed(3));
      });
    });
  }
  function drawCharts() {
    var rows = plotted();
    var series = rows.map(function (r, i) { return {row: r, color: COLORS[i % COLORS.length]}; });
    var ipMax = 0, ipMin = 0;  // I_probe is an estimate: it can dip below 0
    rows.forEach(function (r) { r.curves.forEach(function (c) {
      if (c.i_probe_bits !== null && c.i_probe_bits !== undefined) {
        ipMax = Math.max(ipMax, c.i_probe_bits); ipMin = Math.min(ipMin, c.i_probe_bits);
      } }); });
    drawChart(document.getElementById("chart-acc"), series.filter(function (s) {
      return s.row.curves.some(function (c) { return c.accuracy !== null; }); }), "accuracy", 1, true, 0.2);
    var ipStep = niceStep(Math.max(ipMax - ipMin, 0.2) * 1.05, 4);
    drawChart(document.getElementById("chart-ip"), series.filter(function (s) {
      return s.row.curves.some(function (c) { return c.i_probe_bits !== null; }); }),
      "i_probe_bits", Math.max(1, Math.ceil(ipMax * 1.05 / ipStep)) * ipStep, false, ipStep,
      Math.floor(ipMin / ipStep) * ipStep);
    var ul = document.getElementById("series");
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    series.forEach(function (s) {
      var li = document.createElement("li");
      var sw = document.createElement("span");
      sw.className = "sw" + (s.row.kind === "reported" ? " dash" : "");
      sw.style.borderTopColor = s.color;
      li.appendChild(sw);
      li.appendChild(document.createTextNode(label(s.row)));
      ul.appendChild(li);
    });
  }

  // ---- row details
  function fmt(v, d) { return v === null || v === undefined ? "—" : Number(v).toFixed(d === undefined ? 3 : d); }
  function showDetail(r) {
    var sec = document.getElementById("detail");
    sec.hidden = false;
    document.getElementById("detail-title").textContent = label(r);
    var dl = document.getElementById("detail-meta");
    while (dl.firstChild) dl.removeChild(dl.firstChild);
    var vers = Object.keys(r.versions || {}).filter(function (k) { return r.versions[k]; })
      .map(function (k) { return k + " " + r.versions[k]; }).join(", ");
    [["kind", r.smoke ? "smoke run (random-weight checkpoint: measures no model)" : r.kind],
     ["source", (r.sources || []).join(" | ")], ["checkpoint", r.checkpoint], ["revision", r.revision],
     ["checkpoint fingerprint", r.checkpoint_fingerprint],
     ["adapter", r.adapter], ["modality", r.modality], ["dataset", r.dataset + (r.split ? " / " + r.split : "")],
     ["samples", r.n], ["protocol", r.protocol], ["analyses", (r.analyses || []).join(", ")],
     ["mch version", r.mch_version], ["git", r.git_hash], ["created", r.created_at], ["versions", vers],
     ["files", (r.files || []).join(", ")]].forEach(function (kv) {
      if (kv[1] === null || kv[1] === undefined || kv[1] === "") return;
      var dt = document.createElement("dt"); dt.textContent = kv[0]; dl.appendChild(dt);
      var dd = document.createElement("dd"); dd.textContent = String(kv[1]); dl.appendChild(dd);
    });
    var tb = document.getElementById("detail-metrics").tBodies[0];
    while (tb.firstChild) tb.removeChild(tb.firstChild);
    r.metrics.forEach(function (m) {
      var tr = document.createElement("tr");
      [m.metric, m.stage === null ? "—" : m.stage, fmt(m.value, 4),
       m.ci_low === null || m.ci_low === undefined ? "—" : "[" + fmt(m.ci_low, 4) + ", " + fmt(m.ci_high, 4) + "]",
       m.n === null || m.n === undefined ? "—" : String(m.n), m.analysis].forEach(function (v) {
        var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    var notes = document.getElementById("detail-notes");
    while (notes.firstChild) notes.removeChild(notes.firstChild);
    (r.notes || []).forEach(function (n) { var li = document.createElement("li"); li.textContent = n; notes.appendChild(li); });
  }
  function select(tr) {
    Array.prototype.forEach.call(tbody.rows, function (o) { o.classList.remove("selected"); });
    tr.classList.add("selected");
    showDetail(byId[tr.getAttribute("data-id")]);
  }
  Array.prototype.forEach.call(tbody.rows, function (tr) {
    var box = tr.querySelector("input.plot");
    if (box) box.addEventListener("change", drawCharts);
    tr.addEventListener("click", function (ev) {
      if (ev.target === box || (ev.target.closest && ev.target.closest("a"))) return;
      if (box && !box.checked) { box.checked = true; drawCharts(); }
      select(tr);
    });
    tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") tr.click(); });
  });

  // On load, plot the measured and the reported row with the most stages, side by side.
  ["measured", "reported"].forEach(function (kind) {
    var best = null, most = 0;
    Array.prototype.forEach.call(tbody.rows, function (t) {
      var n = byId[t.getAttribute("data-id")].curves.length;
      if (t.getAttribute("data-kind") === kind && t.querySelector("input.plot") && n > most) { best = t; most = n; }
    });
    if (best) best.querySelector("input.plot").checked = true;
  });
  drawCharts();
})();
