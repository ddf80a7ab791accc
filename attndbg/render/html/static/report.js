/* attndbg interactive report: the overview grid (cases × heads) and one head's heatmap.
   Reads two inline JSON blocks; fetches nothing. */
(() => {
  "use strict";
  const $ = (selector) => document.querySelector(selector);
  const REPORT = JSON.parse($("#attndbg-report").textContent);
  const MAPS = JSON.parse($("#attndbg-maps").textContent);
  const CASES = REPORT.cases;
  const PALETTES = {
    viridis: ["440154", "481a6c", "472f7d", "414487", "39568c", "31688e", "2a788e", "23888e",
      "1f988b", "22a884", "35b779", "54c568", "7ad151", "a5db36", "d2e21b", "fde725"],
    cividis: ["00224e", "002e6c", "1e3a6f", "35456c", "47516c", "575d6d", "666970", "757575",
      "848279", "948e77", "a59c74", "b7a96e", "c8b866", "dbc75a", "eed649", "fee838"],
  };
  const STATS = [
    { key: "entropy_ratio", label: "entropy ÷ log(keys)", range: [0, 1] },
    { key: "entropy", label: "entropy (nats)" },
    { key: "sink_mass", label: "sink mass (first key)", range: [0, 1] },
    { key: "max_logit", label: "max |logit|" },
    { key: "diagonal_mass", label: "diagonal mass", range: [0, 1] },
    { key: "previous_mass", label: "previous-token mass", range: [0, 1] },
    { key: "next_mass", label: "next-token mass", range: [0, 1] },
    { key: "max_weight", label: "max weight", range: [0, 1] },
    { key: "findings", label: "findings (worst severity)", range: [0, 3] },
  ];
  const RANK = { info: 1, warning: 2, error: 3 };
  const SEVERITY = ["none", "info", "warning", "error"];
  const state = { stretch: false, stat: "entropy_ratio", palette: "viridis", caseIndex: null, head: null, batch: 0, scale: "linear", cursor: null };

  // ---- colours ------------------------------------------------------------------------------
  const luts = {};
  function lut(name) {
    if (!luts[name]) {
      const stops = PALETTES[name].map((hex) => [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)));
      const table = new Uint8Array(256 * 3);
      for (let k = 0; k < 256; k++) {
        const x = (k / 255) * (stops.length - 1);
        const i = Math.min(Math.floor(x), stops.length - 2);
        const f = x - i;
        for (let c = 0; c < 3; c++) table[k * 3 + c] = Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f);
      }
      luts[name] = table;
    }
    return luts[name];
  }
  function colour(t) {
    const table = lut(state.palette);
    const k = Math.round(Math.min(Math.max(Number.isFinite(t) ? t : 0, 0), 1) * 255) * 3;
    return `rgb(${table[k]},${table[k + 1]},${table[k + 2]})`;
  }
  function gradient() {
    return `linear-gradient(to right, ${PALETTES[state.palette].map((h) => "#" + h).join(", ")})`;
  }
  // weights that are not numbers: colours neither palette has (the terminal and PNG use them too)
  const NONFINITE = { nan: { colour: "#ff00ff", label: "NaN" }, inf: { colour: "#ff6a00", label: "±inf" } };
  const nonfinite = (v) => (Number.isNaN(v) ? "nan" : Number.isFinite(v) ? null : "inf");
  function number(v) {
    if (typeof v !== "number") return String(v);
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a >= 1e5 || a < 1e-3 ? v.toExponential(2) : a >= 100 ? v.toFixed(1) : v.toFixed(4);
  }

  // ---- findings by head ---------------------------------------------------------------------
  const byHead = CASES.map(() => new Map());
  const caseLevel = CASES.map(() => []);
  // the heads a finding names: its head, and the heads its evidence lists (as page.named_heads)
  const namedHeads = (f) => [...new Set([f.head, ...(Array.isArray(f.evidence && f.evidence.heads) ? f.evidence.heads : [])]
    .filter((h) => Number.isInteger(h)))];
  CASES.forEach((c, ci) => {
    for (const f of c.findings) {
      const heads = namedHeads(f);
      if (!heads.length) caseLevel[ci].push(f);
      for (const h of heads) {
        if (!byHead[ci].has(h)) byHead[ci].set(h, []);
        byHead[ci].get(h).push(f);
      }
    }
  });
  const worst = (list) => list.reduce((r, f) => Math.max(r, RANK[f.severity] || 0), 0);
  const headCount = (ci) => Math.max(CASES[ci].heads.length, MAPS[ci] ? MAPS[ci].heads : 0, ...[...byHead[ci].keys()].map((h) => h + 1));

  // ---- the overview grid ----------------------------------------------------------------------
  const available = STATS.filter((s) => s.key === "findings" || CASES.some((c) => c.heads.some((h) => typeof h[s.key] === "number")));
  if (!available.some((s) => s.key === state.stat)) state.stat = available[0].key;
  const statSelect = $("#stat");
  for (const s of available) statSelect.add(new Option(s.label, s.key));
  statSelect.value = state.stat;

  function statValue(ci, h, key) {
    if (key === "findings") return worst(byHead[ci].get(h) || []);
    const row = CASES[ci].heads.find((x) => x.head === h);
    const v = row ? row[key] : undefined;
    return typeof v === "number" ? v : null;
  }
  function statRange(key) {
    const spec = STATS.find((s) => s.key === key);
    if (spec.range && !(state.stretch && key !== "findings")) return spec.range;
    let lo = Infinity, hi = -Infinity;
    CASES.forEach((c, ci) => { for (let h = 0; h < headCount(ci); h++) { const v = statValue(ci, h, key); if (v !== null && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } } });
    return lo <= hi ? [lo, hi > lo ? hi : lo + 1] : [0, 1];
  }
  function describeHead(ci, h) {
    const spec = STATS.find((s) => s.key === state.stat);
    const v = statValue(ci, h, state.stat);
    const shown = state.stat === "findings" ? SEVERITY[v] : v === null ? "no statistics" : number(v);
    const found = (byHead[ci].get(h) || []).map((f) => `${f.code} (${f.severity})`);
    return `${CASES[ci].name} · head ${h}: ${spec.label} ${shown}` + (found.length ? ` · findings: ${found.join(", ")}` : "");
  }

  const cells = [];
  function buildGrid() {
    const wrap = $("#grid-wrap");
    const width = Math.max(0, ...CASES.map((c, ci) => headCount(ci)));
    const table = document.createElement("table");
    table.className = "grid";
    table.setAttribute("role", "grid");
    table.setAttribute("aria-describedby", "grid-help");
    const header = table.createTHead().insertRow();
    header.insertCell().outerHTML = '<th scope="col">case \\ head</th>';
    for (let h = 0; h < width; h++) { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; header.appendChild(th); }
    const body = table.createTBody();
    CASES.forEach((c, ci) => {
      const tr = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.className = "case-name";
      const tally = caseLevel[ci].length ? ` (+${caseLevel[ci].length} about the whole case)` : "";
      th.textContent = c.name;
      th.title = `${c.file}${tally}`;
      if (caseLevel[ci].length) th.classList.add("sev-" + SEVERITY[worst(caseLevel[ci])]);
      tr.appendChild(th);
      cells[ci] = [];
      if (!headCount(ci)) {
        const td = tr.insertCell();
        td.colSpan = Math.max(width, 1);
        td.className = "muted";
        td.textContent = "no head statistics: " + (c.stages.find((s) => s.status === "skipped")?.reason || "nothing to compute them from");
      }
      for (let h = 0; h < width; h++) {
        const td = tr.insertCell();
        if (h >= headCount(ci)) continue;
        td.setAttribute("role", "gridcell");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "cell";
        button.tabIndex = -1;
        button.dataset.case = ci;
        button.dataset.head = h;
        const sev = worst(byHead[ci].get(h) || []);
        if (sev) button.classList.add("sev-" + SEVERITY[sev]);
        button.addEventListener("click", () => {
          openHead(ci, h);
          // a tall grid hides the map below it: bring the map into view
          if ($("#detail").getBoundingClientRect().top > window.innerHeight * 0.8) $("#detail").scrollIntoView({ block: "start" });
        });
        button.addEventListener("focus", () => { $("#grid-status").textContent = describeHead(ci, h); });
        button.addEventListener("mouseenter", () => { $("#grid-status").textContent = describeHead(ci, h); });
        td.appendChild(button);
        cells[ci][h] = button;
      }
    });
    const first = cells.flat().find(Boolean);
    if (first) first.tabIndex = 0;
    table.addEventListener("keydown", onGridKey);
    wrap.appendChild(table);
  }
  function colourGrid() {
    const [lo, hi] = statRange(state.stat);
    const spec = STATS.find((s) => s.key === state.stat);
    cells.forEach((row, ci) => row.forEach((button, h) => {
      if (!button) return;
      const v = statValue(ci, h, state.stat);
      button.classList.toggle("nostat", v === null);
      button.style.background = v === null ? "" : colour((v - lo) / (hi - lo));
      const text = describeHead(ci, h);
      button.title = text;
      button.setAttribute("aria-label", text);
    }));
    const ends = state.stat === "findings" ? ["none", "error"] : [number(lo), number(hi)];
    $("#legend").innerHTML = "";
    const fixed = spec.range && !(state.stretch && state.stat !== "findings");
    $("#legend").append(ends[0], Object.assign(document.createElement("span"), { className: "bar" }), ends[1] + (fixed ? "" : " (range of this report)"));
    $("#legend .bar").style.background = gradient();
  }
  function onGridKey(event) {
    const button = event.target.closest(".cell");
    if (!button) return;
    let ci = Number(button.dataset.case), h = Number(button.dataset.head);
    const moves = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0] };
    if (event.key in moves) {
      const [dr, dc] = moves[event.key];
      ci = Math.min(Math.max(ci + dr, 0), cells.length - 1);
      h = Math.min(Math.max(h + dc, 0), cells[ci].length - 1);
    } else if (event.key === "Home") h = 0;
    else if (event.key === "End") h = cells[ci].length - 1;
    else if (event.key === "PageUp") ci = 0;
    else if (event.key === "PageDown") ci = cells.length - 1;
    else return;
    event.preventDefault();
    h = Math.min(h, cells[ci].length - 1);
    focusCell(ci, h);
  }
  function focusCell(ci, h) {
    const target = cells[ci] && cells[ci][h];
    if (!target) return;
    cells.flat().forEach((b) => { if (b) b.tabIndex = -1; });
    target.tabIndex = 0;
    target.focus();
  }

  // ---- decoding the maps ----------------------------------------------------------------------
  function bytes(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function half(h) {
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    if (exponent === 0) return sign * fraction * 2 ** -24;
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  // every map of a case is one zlib stream of float16: inflated once, when a head of it opens
  const inflated = new Map();
  const ready = new Map();
  function caseWeights(ci) {
    if (!inflated.has(ci)) {
      inflated.set(ci, (async () => {
        const stream = new Blob([bytes(MAPS[ci].weights)]).stream().pipeThrough(new DecompressionStream("deflate"));
        const raw = new Uint8Array(await new Response(stream).arrayBuffer());
        const view = new DataView(raw.buffer);
        const out = new Float32Array(raw.length / 2);
        for (let i = 0; i < out.length; i++) out[i] = half(view.getUint16(2 * i, true));
        ready.set(ci, out);
        return out;
      })());
    }
    return inflated.get(ci);
  }
  const maskCache = new Map();
  function mapData(ci, b, h) {
    const m = MAPS[ci], n = m.rows * m.cols;
    const weights = ready.get(ci).subarray((b * m.heads + h) * n, (b * m.heads + h + 1) * n);
    const which = m.masked[b].length > 1 ? h : 0;
    const key = `${ci}/${b}/${which}`;
    if (!maskCache.has(key)) {
      const bits = bytes(m.masked[b][which]);
      const masked = new Uint8Array(n);
      for (let i = 0; i < n; i++) masked[i] = (bits[i >> 3] >> (7 - (i & 7))) & 1;
      maskCache.set(key, masked);
    }
    return { weights, masked: maskCache.get(key) };
  }

  // ---- one head ---------------------------------------------------------------------------------
  function openHead(ci, h, batch) {
    if (ci === null || !CASES[ci]) return;
    const m = MAPS[ci];
    state.caseIndex = ci;
    state.head = Math.min(Math.max(h || 0, 0), headCount(ci) - 1);
    state.batch = m ? Math.min(Math.max(batch || 0, 0), m.batches - 1) : 0;
    state.cursor = null;
    cells.flat().forEach((b) => b && b.classList.remove("selected"));
    const cell = cells[ci] && cells[ci][state.head];
    if (cell) cell.classList.add("selected");
    const select = $("#batch");
    select.innerHTML = "";
    if (m) {
      m.labels.forEach((_, b) => {
        const rows = m.labels[b] && m.row_step === 1 ? m.labels[b].rows : [];
        const words = rows.some((label, i) => label !== String(i)); // tokens, not positions
        const tokens = words ? rows.slice(0, 6).join(" ") : "";
        select.add(new Option(`batch ${b}${tokens ? ": " + tokens + " …" : ""}`, b));
      });
      select.value = state.batch;
    }
    select.disabled = !m || m.batches < 2;
    $("#detail").hidden = false;
    renderDetail();
    writeHash();
  }
  function renderDetail() {
    const ci = state.caseIndex, h = state.head, m = MAPS[ci];
    const c = CASES[ci];
    $("#detail-title").textContent = `${c.name} · head ${h}` + (m ? ` · batch ${state.batch}` : "");
    const canvas = $("#heatmap");
    if (!m) {
      canvas.hidden = true;
      $("#map-legend").innerHTML = "";
      $("#detail-note").textContent = "No attention map for this case (nothing to recompute it from, or its shapes leave attention undefined — see its findings).";
    } else {
      canvas.hidden = false;
      const pooled = m.row_step > 1 || m.col_step > 1;
      const pooling = pooled ? `max-pooled: ${m.row_step} query rows × ${m.col_step} keys per cell` : "1 cell = 1 weight";
      const more = m.batch_size > m.batches ? ` · batch rows 0–${m.batches - 1} of ${m.batch_size} embedded` : "";
      $("#detail-note").textContent = `${m.q_len} queries × ${m.k_len} keys · ${pooling} · weights ${m.source}${more}`;
      if (ready.has(ci)) draw();
      else {
        const wanted = ci;
        caseWeights(ci).then(() => { if (state.caseIndex === wanted) draw(); }, (error) => {
          $("#detail-note").textContent = `This browser could not inflate the embedded maps (${error}); a browser with DecompressionStream (Chromium 80+, Firefox 113+, Safari 16.4+) can.`;
        });
      }
    }
    const row = c.heads.find((x) => x.head === h);
    const stats = $("#detail-stats");
    const leftOut = row && row.padding_rows ? ` (${row.padding_rows} padding query rows left out)` : "";
    stats.textContent = row
      ? `averaged over the batch${leftOut}: ` + STATS.filter((s) => typeof row[s.key] === "number").map((s) => `${s.label} ${number(row[s.key])}`).join(" · ") + " · "
      : "";
    stats.append(Object.assign(document.createElement("a"), { href: `#case-${ci}`, textContent: "settings and assumptions of this case" }));
    const box = $("#detail-findings");
    box.innerHTML = "";
    const mine = [...document.querySelectorAll("#findings article.finding")].filter(
      (a) => Number(a.dataset.case) === ci && (a.dataset.heads === "" || a.dataset.heads.split(" ").map(Number).includes(h)));
    if (mine.length) {
      const title = document.createElement("h3");
      title.textContent = `Findings about this head or its case (${mine.length})`;
      box.append(title, ...mine.map((a) => { const copy = a.cloneNode(true); copy.classList.add("current"); copy.querySelector(".goto")?.remove(); return copy; }));
    }
  }
  let geometry = null;
  let hatch = null;
  function hatchPattern(ctx) {
    if (!hatch) {
      const tile = document.createElement("canvas");
      tile.width = tile.height = 6;
      const t = tile.getContext("2d");
      t.strokeStyle = "#6f6f6f";
      t.lineWidth = 1;
      t.beginPath(); t.moveTo(0, 6); t.lineTo(6, 0); t.moveTo(-1, 1); t.lineTo(1, -1); t.moveTo(5, 7); t.lineTo(7, 5); t.stroke();
      hatch = tile;
    }
    return ctx.createPattern(hatch, "repeat");
  }
  function shorten(label) { return label.length > 16 ? label.slice(0, 15) + "…" : label; }
  function draw() {
    const ci = state.caseIndex, m = MAPS[ci];
    const { weights, masked } = mapData(ci, state.batch, state.head);
    const labels = m.labels[state.batch] || { rows: [], cols: [] };
    const canvas = $("#heatmap");
    const ctx = canvas.getContext("2d");
    const font = "11px system-ui, sans-serif";
    ctx.font = font;
    const widest = (list) => Math.min(130, Math.max(16, ...list.map((s) => ctx.measureText(shorten(s)).width)));
    const available = Math.max(240, $("#canvas-wrap").clientWidth || 900);
    const left = Math.max(widest(labels.rows) + 10, 64), top = widest(labels.cols) + 24;
    const cell = Math.max(3, Math.min(28, Math.floor((available - left - 12) / m.cols), Math.floor(1400 / m.rows)));
    const width = left + m.cols * cell + 12, height = top + m.rows * cell + 12;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    Object.assign(canvas.dataset, { left, top, cell, rows: m.rows, cols: m.cols, view: `${ci}/${state.batch}/${state.head}/${state.scale}` });
    geometry = { left, top, cell };
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    // scale
    let top1 = 0;
    const rowMax = new Float32Array(m.rows);
    for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) {
      const v = weights[i * m.cols + j];
      if (Number.isFinite(v) && !masked[i * m.cols + j]) { rowMax[i] = Math.max(rowMax[i], v); top1 = Math.max(top1, v); }
    }
    top1 = top1 > 0 ? top1 : 1;
    const floor = Math.log10(top1) - 4;
    const scaled = (v, i) => {
      if (state.scale === "row") return v / (rowMax[i] > 0 ? rowMax[i] : top1);
      if (state.scale === "log") return v > 0 ? (Math.log10(v) - floor) / 4 : 0;
      return v / top1;
    };
    const pattern = hatchPattern(ctx);
    const broken = new Set();
    for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) {
      const k = i * m.cols + j, v = weights[k], kind = nonfinite(v);
      const x = left + j * cell, y = top + i * cell;
      if (kind) { broken.add(kind); ctx.fillStyle = NONFINITE[kind].colour; }
      else if (masked[k] && !(v > 0)) ctx.fillStyle = "#e3e3e3";
      else ctx.fillStyle = colour(scaled(v, i));
      ctx.fillRect(x, y, cell, cell);
      if (masked[k] && !kind) { ctx.fillStyle = pattern; ctx.fillRect(x, y, cell, cell); }
    }
    canvas.dataset.nonfinite = [...broken].sort().join(" ");
    // labels: all of them when a cell is tall enough for the text, else every few
    ctx.fillStyle = "#333";
    ctx.font = font;
    const every = Math.max(1, Math.ceil(11 / cell));
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i < m.rows; i += every) ctx.fillText(shorten(labels.rows[i] ?? String(i * m.row_step)), left - 5, top + (i + 0.5) * cell);
    for (let j = 0; j < m.cols; j += every) {
      ctx.save();
      ctx.translate(left + (j + 0.5) * cell, top - 5);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(shorten(labels.cols[j] ?? String(j * m.col_step)), 0, 0);
      ctx.restore();
    }
    ctx.fillStyle = "#666";
    ctx.textAlign = "left";
    ctx.fillText("keys →", left, 10);
    ctx.fillText("queries ↓", 4, top - 6);
    if (state.cursor) {
      const [i, j] = state.cursor;
      ctx.strokeStyle = "#ff2d55";
      ctx.lineWidth = 2;
      ctx.strokeRect(left + j * cell + 1, top + i * cell + 1, cell - 2, cell - 2);
    }
    const legend = $("#map-legend");
    legend.innerHTML = "";
    const ends = state.scale === "row" ? ["0", "row max"] : state.scale === "log" ? [number(10 ** floor), number(top1)] : ["0", number(top1)];
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.background = gradient();
    legend.append(ends[0], bar, ends[1], Object.assign(document.createElement("span"), { className: "hatch" }), "masked");
    for (const kind of ["nan", "inf"].filter((x) => broken.has(x))) {
      const swatch = Object.assign(document.createElement("span"), { className: `swatch ${kind}` });
      swatch.style.background = NONFINITE[kind].colour;
      legend.append(swatch, NONFINITE[kind].label);
    }
  }
  function cellText(i, j) {
    const m = MAPS[state.caseIndex];
    const { weights, masked } = mapData(state.caseIndex, state.batch, state.head);
    const labels = m.labels[state.batch] || { rows: [], cols: [] };
    const k = i * m.cols + j, v = weights[k];
    const span = (index, step, total, noun, plural, label) => {
      if (step === 1) return `${noun} ${index}` + (label !== undefined && label !== String(index) ? ` “${label}”` : "");
      return `${plural} ${index * step}–${Math.min((index + 1) * step, total) - 1}`;
    };
    const pooled = m.row_step > 1 || m.col_step > 1;
    // float16 carries the maps: a finite weight beyond its range (65504) arrives as inf
    const weight = Number.isNaN(v) ? "NaN" : Number.isFinite(v) ? number(v) : `${v > 0 ? "+" : "-"}inf (or beyond float16's range)`;
    return `${span(i, m.row_step, m.q_len, "query", "queries", labels.rows[i])} → ${span(j, m.col_step, m.k_len, "key", "keys", labels.cols[j])}` +
      ` · ${pooled ? "max weight" : "weight"} ${weight}` + (masked[k] ? " · masked" : "");
  }
  function showTooltip(i, j, x, y) {
    const tip = $("#tooltip");
    tip.textContent = cellText(i, j);
    const { weights } = mapData(state.caseIndex, state.batch, state.head);
    tip.classList.toggle("nonfinite", nonfinite(weights[i * MAPS[state.caseIndex].cols + j]) !== null);
    tip.hidden = false;
    const wrap = $("#canvas-wrap");
    const maxX = wrap.scrollLeft + wrap.clientWidth - tip.offsetWidth - 4;
    tip.style.left = Math.max(0, Math.min(x + 14, maxX)) + "px";
    tip.style.top = y + 14 + "px";
  }
  function hitTest(event) {
    const canvas = $("#heatmap"), m = MAPS[state.caseIndex];
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left - geometry.left, y = event.clientY - rect.top - geometry.top;
    const j = Math.floor(x / geometry.cell), i = Math.floor(y / geometry.cell);
    return i >= 0 && j >= 0 && i < m.rows && j < m.cols ? [i, j] : null;
  }
  function wireCanvas() {
    const canvas = $("#heatmap");
    canvas.tabIndex = 0;
    canvas.addEventListener("mousemove", (event) => {
      if (!geometry) return;
      const hit = hitTest(event);
      if (!hit) { $("#tooltip").hidden = true; return; }
      showTooltip(hit[0], hit[1], canvas.offsetLeft + geometry.left + hit[1] * geometry.cell, canvas.offsetTop + geometry.top + hit[0] * geometry.cell + geometry.cell);
    });
    canvas.addEventListener("mouseleave", () => { $("#tooltip").hidden = true; });
    canvas.addEventListener("keydown", (event) => {
      const m = MAPS[state.caseIndex];
      if (!m || !ready.has(state.caseIndex)) return;
      const moves = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0] };
      if (!m || !(event.key in moves)) return;
      event.preventDefault();
      // the first key press puts the cursor on the first cell, the next ones move it
      const [di, dj] = state.cursor ? moves[event.key] : [0, 0];
      const [i0, j0] = state.cursor || [0, 0];
      const i = Math.min(Math.max(i0 + di, 0), m.rows - 1);
      const j = Math.min(Math.max(j0 + dj, 0), m.cols - 1);
      state.cursor = [i, j];
      draw();
      showTooltip(i, j, canvas.offsetLeft + geometry.left + j * geometry.cell, canvas.offsetTop + geometry.top + (i + 1) * geometry.cell);
    });
  }

  // ---- state in the address, so that a link opens the same head ----------------------------
  function writeHash() {
    const hash = `#case=${state.caseIndex}&head=${state.head}&batch=${state.batch}&scale=${state.scale}`;
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("case")) return;
    if (params.has("scale") && ["linear", "row", "log"].includes(params.get("scale"))) { state.scale = params.get("scale"); $("#scale").value = state.scale; }
    openHead(Number(params.get("case")), Number(params.get("head") || 0), Number(params.get("batch") || 0));
    $("#detail").scrollIntoView({ block: "start" });
  }

  statSelect.addEventListener("change", () => { state.stat = statSelect.value; colourGrid(); });
  $("#stretch").addEventListener("change", (e) => { state.stretch = e.target.checked; colourGrid(); });
  $("#palette").addEventListener("change", (e) => { state.palette = e.target.value; colourGrid(); if (state.caseIndex !== null) renderDetail(); });
  $("#batch").addEventListener("change", (e) => { state.batch = Number(e.target.value); state.cursor = null; renderDetail(); writeHash(); });
  $("#scale").addEventListener("change", (e) => { state.scale = e.target.value; if (state.caseIndex !== null) { renderDetail(); writeHash(); } });
  window.addEventListener("hashchange", readHash);
  buildGrid();
  colourGrid();
  wireCanvas();
  if (location.hash) readHash();
  else if (document.body.dataset.open) {
    const [ci, h, b] = document.body.dataset.open.split("/").map(Number);
    openHead(ci, h, b);
  } else {
    // open the head the worst finding names, else the first head: the page never starts empty
    const named = CASES.flatMap((c, ci) => c.findings.filter((f) => namedHeads(f).length).map((f) => [RANK[f.severity] || 0, ci, namedHeads(f)[0]]));
    named.sort((a, b) => b[0] - a[0]);
    const [, ci, h] = named[0] || [0, MAPS.findIndex(Boolean), 0];
    if (ci >= 0 && CASES.length) openHead(ci, h, 0);
  }
  document.documentElement.dataset.ready = "true";
})();
