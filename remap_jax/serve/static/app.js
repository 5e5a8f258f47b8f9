// remap-serve's page: search by image (drop, pick, or click a result), show the top-k, and a heatmap of
// what drove the match to a chosen result (see GET /explain). Plain JS, no build step, no external files.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, file: null, id: null, results: [], chosen: null, explanation: null, size: null, box: null };

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function search() {
  const form = new FormData();
  if (state.file) form.append("image", state.file, state.file.name || "query");
  else if (state.id) form.append("id", state.id);
  else return;
  const k = $("k").value.trim();
  if (k) form.append("k", k);
  if ($("rerank").checked) form.append("rerank", "superglobal");
  const box = $("box").value.trim();
  if (box) form.append("box", box);
  setStatus("searching…");
  clearHeat();
  const started = performance.now();
  let response;
  try {
    response = await fetch("/search", { method: "POST", body: form });
  } catch (e) {
    setStatus(`search failed: ${e}`, true);
    return;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  const answer = await response.json();
  state.query = answer.query;
  state.results = answer.results;
  state.size = answer.query_size;
  state.box = answer.box;
  $("again").disabled = false;
  setStatus(`${answer.results.length} results in ${Math.round(performance.now() - started)} ms ` +
            `(${answer.source === "upload" ? "uploaded image" : answer.source}` +
            (answer.box ? `, box ${answer.box.join(",")})` : ")"));
  renderResults();
  if (answer.results.length) explain(answer.results[0].id);
}

function renderResults() {
  const grid = $("results");
  grid.replaceChildren();
  $("results-title").textContent = `Results (${state.results.length})`;
  for (const r of state.results) {
    const tile = document.createElement("div");
    tile.className = "result";
    tile.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = r.thumb_url;
    img.alt = r.id;
    img.title = `search with ${r.id}`;
    img.addEventListener("click", () => searchById(r.id));
    const line = document.createElement("div");
    line.className = "line";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${r.rank}  ${r.score.toFixed(4)}`;
    const why = document.createElement("button");
    why.type = "button";
    why.textContent = "why?";
    why.addEventListener("click", () => explain(r.id));
    line.append(score, why);
    const id = document.createElement("div");
    id.className = "id";
    id.textContent = r.id;
    tile.append(img, line, id);
    grid.append(tile);
  }
}

function showQuery(src) {
  $("query-img").src = src;
}

// Show the query with its long side at QUERY_SIDE pixels (small queries enlarged, large ones reduced).
const QUERY_SIDE = 400;
function sizeQuery() {
  const img = $("query-img");
  if (!img.naturalWidth) return;
  const scale = Math.min(QUERY_SIDE / Math.max(img.naturalWidth, img.naturalHeight),
                         ($("query-panel").clientWidth || QUERY_SIDE) / img.naturalWidth);
  img.style.width = `${Math.round(img.naturalWidth * scale)}px`;
  img.style.height = `${Math.round(img.naturalHeight * scale)}px`;
}

function searchWithFile(file) {
  if (!file) return;
  state.file = file;
  state.id = null;
  $("box").value = "";
  showQuery(URL.createObjectURL(file));
  search();
}

function searchById(id) {
  state.file = null;
  state.id = id;
  $("box").value = "";
  showQuery("/images/" + encodeURIComponent(id).replace(/%2F/g, "/"));
  search();
}

async function explain(id) {
  state.chosen = id;
  for (const tile of document.querySelectorAll(".result")) tile.classList.toggle("chosen", tile.dataset.id === id);
  const url = `/explain?query=${encodeURIComponent(state.query)}&result=${encodeURIComponent(id)}`;
  const response = await fetch(url);
  if (!response.ok) {
    $("explain").hidden = false;
    $("numbers").textContent = await errorText(response);
    clearHeat();
    return;
  }
  state.explanation = await response.json();
  $("explain").hidden = false;
  $("explain-title").textContent = `to ${id}`;
  const e = state.explanation;
  const scored = state.results.find((r) => r.id === id);
  $("numbers").textContent =
    `similarity ${e.similarity.toFixed(4)} = regions ${e.regions_total.toFixed(4)} + whitening bias ` +
    `${e.bias.toFixed(4)}` + (scored ? ` (index score ${scored.score.toFixed(4)})` : "") +
    `; ${e.regions.length} regions`;
  drawHeat();
}

function clearHeat() {
  const canvas = $("heat");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "0";
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function colour(value, scale, kind) {
  const a = Math.min(1, Math.abs(value) / (scale || 1));
  if (kind === "weights") return [20, 160, 60, Math.round(200 * a)];
  return value >= 0 ? [220, 30, 30, Math.round(200 * a)] : [30, 80, 230, Math.round(200 * a)];
}

function drawHeat() {
  const e = state.explanation;
  const img = $("query-img");
  if (!e || !img.complete || !img.naturalWidth) return;
  const kind = mode();
  $("help-share").hidden = kind !== "share";
  $("help-weights").hidden = kind !== "weights";
  const values = e.grid[kind];
  const gh = e.grid.height, gw = e.grid.width;
  let scale = 0;
  for (const row of values) for (const v of row) scale = Math.max(scale, Math.abs(v));
  const cells = document.createElement("canvas");
  cells.width = gw;
  cells.height = gh;
  const cctx = cells.getContext("2d");
  const pixels = cctx.createImageData(gw, gh);
  for (let y = 0; y < gh; y++) {
    for (let x = 0; x < gw; x++) {
      const c = colour(values[y][x], scale, kind);
      pixels.data.set(c, 4 * (y * gw + x));
    }
  }
  cctx.putImageData(pixels, 0, 0);
  // The heatmap covers what was described: the box when one was given, else the whole image.
  const sx = img.clientWidth / img.naturalWidth, sy = img.clientHeight / img.naturalHeight;
  const [x0, y0, x1, y1] = state.box || [0, 0, img.naturalWidth, img.naturalHeight];
  const canvas = $("heat");
  canvas.style.left = `${x0 * sx}px`;
  canvas.style.top = `${y0 * sy}px`;
  canvas.width = Math.max(1, Math.round((x1 - x0) * sx));
  canvas.height = Math.max(1, Math.round((y1 - y0) * sy));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "1";
  canvas.dataset.mode = kind;
  const frame = $("box-frame");
  frame.hidden = !state.box;
  if (state.box) Object.assign(frame.style, { left: canvas.style.left, top: canvas.style.top,
    width: `${canvas.width}px`, height: `${canvas.height}px` });
  drawLegend(kind, scale);
}

function drawLegend(kind, scale) {
  const legend = $("legend");
  legend.replaceChildren();
  const bar = document.createElement("canvas");
  bar.width = 160;
  bar.height = 12;
  const ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    const t = kind === "weights" ? x / (bar.width - 1) : 2 * x / (bar.width - 1) - 1;
    const [r, g, b, a] = colour(t, 1, kind);
    ctx.fillStyle = `rgba(${r},${g},${b},${a / 255})`;
    ctx.fillRect(x, 0, 1, bar.height);
  }
  const low = document.createElement("span");
  low.textContent = kind === "weights" ? "0" : `−${scale.toPrecision(2)}`;
  const high = document.createElement("span");
  high.textContent = `+${scale.toPrecision(2)} per cell`;
  legend.append(low, bar, high);
}

// Drag on the query to search with a box: only that part of the image is described.
function boxFromDrag() {
  const img = $("query-img");
  let start = null;
  const point = (ev) => {
    const rect = img.getBoundingClientRect();
    return [Math.min(Math.max(ev.clientX - rect.left, 0), rect.width),
            Math.min(Math.max(ev.clientY - rect.top, 0), rect.height)];
  };
  img.addEventListener("mousedown", (ev) => { ev.preventDefault(); start = point(ev); });
  window.addEventListener("mousemove", (ev) => {
    if (!start) return;
    const [x, y] = point(ev);
    Object.assign($("box-frame").style, { left: `${Math.min(x, start[0])}px`, top: `${Math.min(y, start[1])}px`,
      width: `${Math.abs(x - start[0])}px`, height: `${Math.abs(y - start[1])}px` });
    $("box-frame").hidden = false;
  });
  window.addEventListener("mouseup", (ev) => {
    if (!start) return;
    const [x, y] = point(ev);
    const sx = img.naturalWidth / img.clientWidth, sy = img.naturalHeight / img.clientHeight;
    const box = [Math.min(x, start[0]) * sx, Math.min(y, start[1]) * sy, Math.max(x, start[0]) * sx,
                 Math.max(y, start[1]) * sy].map(Math.round);
    start = null;
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) { $("box-frame").hidden = !state.box; return; }
    $("box").value = box.join(",");
    search();
  });
}

function init() {
  boxFromDrag();
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });
  $("file").addEventListener("change", (ev) => searchWithFile(ev.target.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    searchWithFile(ev.dataTransfer.files[0]);
  });
  $("options").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", drawHeat);
  $("query-img").addEventListener("load", () => { sizeQuery(); drawHeat(); });
  window.addEventListener("resize", () => { sizeQuery(); drawHeat(); });
  fetch("/healthz").then((r) => r.json()).then((h) => {
    $("about").textContent = `${h.images} images, ${h.dim}-d descriptors, ${h.platform}`;
    $("k").max = 100;
  }).catch(() => {});
}

init();
