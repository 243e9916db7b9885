// cones2 studio: the page's logic. Talks to the JSON API of cones2/studio/server.py.
"use strict";

const $ = (sel) => document.querySelector(sel);
const S = { words: [], picked: {}, boxes: {}, weights: {}, active: null, palette: [], draft: null, start: null };

async function api(method, url, body) {
  const res = await fetch(url, {
    method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try { data = await res.json(); } catch (e) { data = { error: `the server answered ${res.status}` }; }
  if (!res.ok) throw new Error(data.error || `the server answered ${res.status}`);
  return data;
}

function showError(message) {
  const el = $("#error");
  el.textContent = String(message).split("\n")[0];
  el.hidden = false;
}
function clearError() { $("#error").hidden = true; $("#error").textContent = ""; }
const guard = (fn) => async (...args) => { try { await fn(...args); } catch (e) { showError(e.message); } };

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// ------------------------------------------------------------------ words and pickers

function boxedWords() { return S.words.map((w) => w.word).filter((w) => S.boxes[w]); }
function colourOf(word) {
  const i = boxedWords().indexOf(word);
  if (i < 0) return "rgb(170,170,170)";
  const c = S.palette[i % S.palette.length] || [120, 120, 120];
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

async function refreshWords() {
  const prompt = $("#prompt").value;
  const data = await api("GET", "/api/words?prompt=" + encodeURIComponent(prompt));
  S.words = data.words;
  const present = new Set(data.all_words);
  for (const table of [S.picked, S.boxes, S.weights]) {
    for (const w of Object.keys(table)) if (!present.has(w)) delete table[w];
  }
  if (S.active && !S.words.some((w) => w.word === S.active)) S.active = null;
  drawPickers();
  drawCanvas();
}

function drawPickers() {
  const body = $("#pickers tbody");
  body.innerHTML = "";
  $("#pickers-hint").hidden = S.words.length > 0;
  for (const entry of S.words) {
    const w = entry.word;
    const tr = document.createElement("tr");
    tr.dataset.word = w;
    const radio = `<input type="radio" name="active" class="active-word" value="${w}" ${S.active === w ? "checked" : ""}>`;
    const options = ['<option value="">(none)</option>'].concat(entry.subjects.map((s) =>
      `<option value="${s.ref}" ${S.picked[w] === s.ref ? "selected" : ""}>${s.name}${s.compatible ? "" : " (other base model)"}</option>`));
    if (S.picked[w] && !entry.subjects.some((s) => s.ref === S.picked[w])) {
      options.push(`<option value="${S.picked[w]}" selected>${S.picked[w]}</option>`);
    }
    tr.innerHTML = `<td>${radio}</td><td><span class="swatch" style="background:${colourOf(w)}"></span><b>${w}</b></td>` +
      `<td><select class="subject-pick" data-word="${w}">${options.join("")}</select></td>` +
      `<td>weight <input class="weight" data-word="${w}" type="number" step="0.1" value="${S.weights[w] ?? 2.5}"></td>`;
    body.appendChild(tr);
  }
  body.querySelectorAll(".active-word").forEach((r) => r.addEventListener("change", () => { S.active = r.value; }));
  body.querySelectorAll(".subject-pick").forEach((sel) => sel.addEventListener("change", () => {
    const w = sel.dataset.word;
    if (sel.value) { S.picked[w] = sel.value; S.active = w; } else { delete S.picked[w]; }
    drawPickers();
  }));
  body.querySelectorAll(".weight").forEach((inp) => inp.addEventListener("change", () => {
    const v = parseFloat(inp.value);
    if (Number.isFinite(v) && v !== 2.5) S.weights[inp.dataset.word] = v; else delete S.weights[inp.dataset.word];
    drawCanvas();
  }));
}

// ------------------------------------------------------------------ canvas

function canvasPoint(ev) {
  const c = $("#canvas"), r = c.getBoundingClientRect();
  const x = Math.min(Math.max((ev.clientX - r.left - c.clientLeft) / c.clientWidth, 0), 1);
  const y = Math.min(Math.max((ev.clientY - r.top - c.clientTop) / c.clientHeight, 0), 1);
  return [x, y];
}
const round4 = (v) => Math.round(v * 10000) / 10000;

function drawCanvas() {
  const c = $("#canvas"), g = c.getContext("2d"), W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#f5f5f5"; g.fillRect(0, 0, W, H);
  const all = boxedWords().map((w) => [w, S.boxes[w]]);
  if (S.draft) all.push([S.active, S.draft]);
  for (const [w, b] of all) {
    const col = colourOf(w) === "rgb(170,170,170)" ? "rgb(90,90,90)" : colourOf(w);
    g.fillStyle = col.replace("rgb", "rgba").replace(")", ",0.35)");
    g.strokeStyle = col; g.lineWidth = 2;
    g.fillRect(b[0] * W, b[1] * H, (b[2] - b[0]) * W, (b[3] - b[1]) * H);
    g.strokeRect(b[0] * W, b[1] * H, (b[2] - b[0]) * W, (b[3] - b[1]) * H);
    g.fillStyle = col; g.font = "12px sans-serif";
    g.fillText(`${w} (${S.weights[w] ?? 2.5})`, b[0] * W + 4, b[1] * H + 14);
  }
  $("#legend").innerHTML = boxedWords().map((w) =>
    `<span><span class="swatch" style="background:${colourOf(w)}"></span>${w}: weight ${S.weights[w] ?? 2.5}</span>`).join("");
  document.querySelectorAll("#pickers .swatch").forEach((sw) => {
    sw.style.background = colourOf(sw.closest("tr").dataset.word);
  });
}

function setupCanvas() {
  const c = $("#canvas");
  c.addEventListener("mousedown", (ev) => {
    if (!S.active) { showError("pick a word (the round button beside it) before drawing its box"); return; }
    S.start = canvasPoint(ev);
    S.draft = null;
  });
  c.addEventListener("mousemove", (ev) => {
    if (!S.start) return;
    const p = canvasPoint(ev);
    S.draft = [Math.min(S.start[0], p[0]), Math.min(S.start[1], p[1]), Math.max(S.start[0], p[0]), Math.max(S.start[1], p[1])];
    drawCanvas();
  });
  window.addEventListener("mouseup", (ev) => {
    if (!S.start) return;
    const p = canvasPoint(ev);
    const b = [Math.min(S.start[0], p[0]), Math.min(S.start[1], p[1]), Math.max(S.start[0], p[0]), Math.max(S.start[1], p[1])].map(round4);
    S.start = null; S.draft = null;
    if (b[2] - b[0] > 0.02 && b[3] - b[1] > 0.02) { S.boxes[S.active] = b; clearError(); }
    drawCanvas();
  });
  $("#clear-boxes").addEventListener("click", () => { S.boxes = {}; drawCanvas(); });
}

// ------------------------------------------------------------------ design, render, save, open

function design() {
  const boxes = {}, weights = {}, subjects = {};
  for (const w of boxedWords()) { boxes[w] = S.boxes[w]; if (S.weights[w] !== undefined) weights[w] = S.weights[w]; }
  for (const entry of S.words) if (S.picked[entry.word]) subjects[entry.word] = S.picked[entry.word];
  return {
    prompt: $("#prompt").value, negative_prompt: $("#negative-prompt").value || null, subjects, boxes, weights,
    preset: $("#preset").value, guidance_weight: $("#guidance-weight").value, steps: $("#steps").value,
    seed: $("#seed").value, size: $("#size").value || null, name: $("#name").value,
  };
}

async function poll(job, onUpdate) {
  for (;;) {
    onUpdate(job);
    if (job.status === "done" || job.status === "error") return job;
    await new Promise((r) => setTimeout(r, 150));
    job = await api("GET", `/api/jobs/${job.id}`);
  }
}

function renderStatus(job) {
  const bar = $("#progress");
  if (job.status === "queued") {
    $("#status").textContent = `render #${job.id} queued (${job.position} ahead)`;
  } else if (job.status === "running") {
    $("#status").textContent = `render #${job.id}: ${job.message || "loading the model"}`;
    bar.hidden = false; bar.max = job.total || 1; bar.value = job.step;
  } else if (job.status === "done") {
    $("#status").textContent = `render #${job.id} done (seed ${job.result.seed}, ${job.result.width}x${job.result.height})`;
    bar.max = 1; bar.value = 1;
  } else {
    $("#status").textContent = `render #${job.id} failed`;
  }
}

async function render() {
  clearError();
  const job = await poll(await api("POST", "/api/render", design()), renderStatus);
  if (job.status === "error") { showError(job.error); return; }
  const r = job.result;
  $("#result-image").src = r.image;
  $("#result-layout").src = r.layout || "";
  $("#result-layout").parentElement.hidden = !r.layout;
  $("#attention").innerHTML = Object.entries(r.attention).map(([w, url]) =>
    `<figure><img class="attention-map" data-word="${w}" src="${url}" alt="attention of ${w}"><figcaption>attention: ${w}</figcaption></figure>`).join("");
  $("#result").hidden = false;
}

async function save() {
  clearError();
  const out = await api("POST", "/api/save", { design: design() });
  $("#save-status").innerHTML = `saved <code id="saved-path"></code>` + (out.lock ? ` and its lock <code id="saved-lock"></code>` : "");
  $("#saved-path").textContent = out.path;
  if (out.lock) $("#saved-lock").textContent = out.lock;
}

async function applyDesign(d) {
  $("#prompt").value = d.prompt || "";
  $("#negative-prompt").value = d.negative_prompt || "";
  for (const [id, key] of [["#preset", "preset"], ["#guidance-weight", "guidance_weight"], ["#steps", "steps"], ["#seed", "seed"], ["#name", "name"]]) {
    if (d[key] !== undefined && d[key] !== null) $(id).value = d[key];
  }
  $("#size").value = d.size ? String(d.size) : "";
  S.picked = {}; S.boxes = {}; S.weights = {};
  await refreshWords();
  for (const [w, ref] of Object.entries(d.subjects || {})) {
    S.picked[w] = ref;
    if (!S.words.some((e) => e.word === w)) S.words.push({ word: w, subjects: [] });
  }
  for (const [w, b] of Object.entries(d.boxes || {})) {
    S.boxes[w] = b;
    if (!S.words.some((e) => e.word === w)) S.words.push({ word: w, subjects: [] });
  }
  Object.assign(S.weights, d.weights || {});
  drawPickers(); drawCanvas();
}

async function openFile(ev) {
  clearError();
  const file = ev.target.files[0];
  if (!file) return;
  const buf = new Uint8Array(await file.arrayBuffer());
  let bin = "";
  for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode.apply(null, buf.subarray(i, i + 0x8000));
  const out = await api("POST", "/api/open", { filename: file.name, data: btoa(bin) });
  await applyDesign(out.design);
  $("#save-status").textContent = `opened ${file.name}`;
  ev.target.value = "";
}

// ------------------------------------------------------------------ library

async function loadLibrary() {
  const q = $("#search").value;
  const data = await api("GET", "/api/subjects?q=" + encodeURIComponent(q));
  const body = $("#subjects tbody");
  body.innerHTML = "";
  for (const s of data.subjects) {
    const tr = document.createElement("tr");
    tr.dataset.name = s.name;
    const versions = s.version_list.map((v) =>
      `<span class="${v.compatible ? "" : "incompatible"}" title="${v.sha256}">v${v.version}${v.tags.length ? " [" + v.tags.join(", ") + "]" : ""}</span>`).join(" ");
    const tags = Object.entries(s.tags).map(([t, v]) => `${t}→${v}`).join(", ");
    tr.innerHTML = `<td>${s.name}</td><td>${s.word || ""}</td><td>${versions}</td><td>${tags}</td>` +
      `<td class="${s.compatible ? "compatible" : "incompatible"}">${s.compatible ? "fits this model" : "other base model"}</td>`;
    body.appendChild(tr);
  }
}

async function pull() {
  clearError();
  const bar = $("#pull-progress");
  const job = await poll(await api("POST", "/api/pull", { remote: $("#remote").value || null, ref: $("#pull-ref").value }), (j) => {
    bar.hidden = false; bar.max = j.total || 1; bar.value = j.step;
    $("#pull-status").textContent = j.status === "queued" ? `queued (${j.position} ahead)` : `${j.title}: ${j.message || j.status}`;
  });
  if (job.status === "error") { showError(job.error); return; }
  const counts = {};
  for (const r of job.result.results) counts[r.status] = (counts[r.status] || 0) + 1;
  $("#pull-status").textContent = "pulled: " + Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ");
  await loadLibrary();
  await refreshWords();
}

// ------------------------------------------------------------------ start

async function start() {
  const st = await api("GET", "/api/state");
  S.palette = st.palette;
  $("#model").textContent = `base model: ${st.model.source}${st.model.is_demo ? " (demo model)" : ""} · saves to ${st.folder}`;
  $("#preset").innerHTML = Object.keys(st.presets).map((p) => `<option>${p}</option>`).join("");
  $("#remote").innerHTML = st.remotes.length ? st.remotes.map((r) => `<option value="${r.name}">${r.name} (${r.namespace})</option>`).join("")
    : '<option value="">no remote configured</option>';
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", guard(async () => {
    document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === t));
    $("#compose").hidden = t.dataset.tab !== "compose";
    $("#library").hidden = t.dataset.tab !== "library";
    if (t.dataset.tab === "library") await loadLibrary();
  })));
  $("#prompt").addEventListener("input", debounce(guard(refreshWords), 200));
  $("#search").addEventListener("input", debounce(guard(loadLibrary), 200));
  $("#render").addEventListener("click", guard(render));
  $("#save").addEventListener("click", guard(save));
  $("#open-file").addEventListener("change", guard(openFile));
  $("#pull").addEventListener("click", guard(pull));
  setupCanvas();
  drawCanvas();
  document.body.dataset.ready = "1";
}

guard(start)();
