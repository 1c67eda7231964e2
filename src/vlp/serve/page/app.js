// The vlp serve page: plain JS against the server's own API, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const TIMEOUT_MS = 60000; // never leave a request hanging: the server has its own limit too
let upload = null; // {file, image} of the chosen image
let box = null;

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

async function call(path, options = {}) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, { ...options, signal: abort.signal });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  } catch (err) {
    throw new Error(err.name === "AbortError" ? `${path}: no answer within ${TIMEOUT_MS / 1000} s` : err.message);
  } finally {
    clearTimeout(timer);
  }
}

function form(fields) {
  const data = new FormData();
  data.append("image", upload.file);
  for (const [key, value] of Object.entries(fields)) data.append(key, value);
  return { method: "POST", body: data };
}

async function health() {
  try {
    const info = await call("/health");
    const who = Object.entries(info.endpoints).map(([e, m]) => `${e}: ${m || "—"}`).join(" · ");
    const index = info.index ? `${info.index.images} images indexed` : "no index";
    $("models").textContent = `${info.models.map((m) => m.name).join(", ")} · ${index} · ${who}`;
    $("search-panel").dataset.enabled = String(Boolean(info.index));
  } catch (err) {
    showError(err.message);
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  $("search-status").textContent = "searching…";
  try {
    const params = new URLSearchParams({ q, k: $("k").value });
    const started = performance.now();
    const answer = await call(`/search?${params}`);
    const grid = $("grid");
    grid.replaceChildren(...answer.results.map((r) => {
      const figure = document.createElement("figure");
      figure.className = "result";
      const img = document.createElement("img");
      img.src = r.url;
      img.alt = r.caption || r.name;
      img.title = `${r.name}${r.caption ? ` — ${r.caption}` : ""}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `${r.score.toFixed(3)} ${r.name}`;
      figure.append(img, caption);
      return figure;
    }));
    const ms = Math.round(performance.now() - started);
    $("search-status").textContent = `${answer.results.length} results for “${q}” in ${ms} ms`;
    showError("");
  } catch (err) {
    $("search-status").textContent = "";
    showError(err.message);
  }
}

function draw() {
  const canvas = $("canvas");
  if (!upload) return;
  const { image } = upload;
  const scale = Math.min(1, 480 / Math.max(image.naturalWidth, image.naturalHeight)) || 1;
  // small images are shown enlarged so the box is visible; large ones shrunk to fit
  const shown = image.naturalWidth < 240 ? 240 / image.naturalWidth : scale;
  canvas.width = Math.round(image.naturalWidth * shown);
  canvas.height = Math.round(image.naturalHeight * shown);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  if (box) {
    const [x1, y1, x2, y2] = box.map((v) => v * shown);
    ctx.strokeStyle = "#00ff00";
    ctx.lineWidth = 3;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    canvas.dataset.box = JSON.stringify(box);
    canvas.dataset.scale = String(shown);
  }
}

async function caption() {
  $("caption").textContent = "…";
  try {
    $("caption").textContent = (await call("/caption", form({}))).caption || "(empty caption)";
  } catch (err) {
    $("caption").textContent = "";
    showError(err.message);
  }
}

async function ask(event) {
  if (event) event.preventDefault();
  const question = $("question").value.trim();
  if (!upload || !question) return;
  $("answer").textContent = "…";
  try {
    $("answer").textContent = (await call("/vqa", form({ question }))).answer || "(empty answer)";
  } catch (err) {
    $("answer").textContent = "";
    showError(err.message);
  }
}

async function ground(event) {
  if (event) event.preventDefault();
  const text = $("phrase").value.trim();
  if (!upload || !text) return;
  $("box").textContent = "…";
  try {
    const answer = await call("/ground", form({ text }));
    box = answer.box;
    $("box").textContent = `[${box.map((v) => Math.round(v)).join(", ")}]`;
    draw();
  } catch (err) {
    $("box").textContent = "";
    showError(err.message);
  }
}

async function classify(event) {
  event.preventDefault();
  const labels = $("labels").value.trim();
  if (!upload || !labels) return;
  try {
    const answer = await call("/zeroshot", form({ labels }));
    $("classes").replaceChildren(...answer.labels.slice(0, 5).map((l) => {
      const item = document.createElement("li");
      item.textContent = `${l.label} (${(100 * l.prob).toFixed(1)}%)`;
      return item;
    }));
  } catch (err) {
    showError(err.message);
  }
}

function chosen() {
  const file = $("file").files[0];
  if (!file) return;
  const image = new Image();
  image.onload = () => {
    upload = { file, image };
    box = null;
    delete $("canvas").dataset.box;
    draw();
    showError("");
    caption();
    ask();
    ground();
  };
  image.onerror = () => showError(`${file.name}: the browser cannot show this file as an image`);
  image.src = URL.createObjectURL(file);
}

$("search-form").addEventListener("submit", search);
$("vqa-form").addEventListener("submit", ask);
$("ground-form").addEventListener("submit", ground);
$("zeroshot-form").addEventListener("submit", classify);
$("file").addEventListener("change", chosen);
health();
