// The image view: an upload or a drop goes to /classify with multi-view, flips, the prediction
// set and the views; the views' boxes are drawn over the image, shaded by their aggregate weight.

import { errorOf, headers } from "./api.js";

const $ = (id) => document.getElementById(id);
const QUERY = "views=multi&tta_flip=true&prediction_set=true&return_views=true";
const SIDE = 384;  // the stage's size in CSS pixels

const pct = (x) => `${(100 * x).toFixed(1)}%`;

export function imageView(ui) {
  const drop = $("drop");
  const input = $("image-file");
  input.addEventListener("change", () => input.files[0] && classify(input.files[0], ui));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) classify(file, ui);
  });
}

async function classify(file, ui) {
  ui.clearError();
  const image = await createImageBitmap(file);
  const geometry = drawImage(image);
  const overlay = $("overlay");
  overlay.dataset.boxes = "0";
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const model = $("image-model").value;
  const url = `/classify?${QUERY}${model ? `&model=${encodeURIComponent(model)}` : ""}`;
  $("image-stats").textContent = "…";
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: form });
    if (!response.ok) throw await errorOf(response);
    const body = await response.json();
    show(body, geometry);
  } catch (err) {
    $("image-stats").textContent = "";
    ui.showError(err);
  }
}

/** Fit the image in the stage; returns the image-to-canvas scale and offsets for the boxes. */
function drawImage(image) {
  const canvas = $("image-canvas");
  const ctx = canvas.getContext("2d");
  const scale = Math.min(SIDE / image.width, SIDE / image.height);
  const w = image.width * scale;
  const h = image.height * scale;
  const geometry = { scale, dx: (SIDE - w) / 2, dy: (SIDE - h) / 2 };
  ctx.clearRect(0, 0, SIDE, SIDE);
  ctx.imageSmoothingEnabled = scale < 1;  // small scenes stay crisp when enlarged
  ctx.drawImage(image, geometry.dx, geometry.dy, w, h);
  return geometry;
}

function show(body, geometry) {
  const result = body.results[0];
  const labels = body.labels;
  $("image-stats").textContent =
    `${result.num_views} views · ${body.timings.total_ms.toFixed(1)} ms · ${result.width}×${result.height} px`;
  const cal = body.calibration;
  $("calibration").textContent = cal && cal.calibrator && cal.calibrator !== "none"
    ? `(calibrated: ${cal.calibrator}, ${cal.pipeline})`
    : "(uncalibrated)";
  $("coverage").textContent = cal && cal.coverage_target ? `(${cal.method}, ${pct(cal.coverage_target)} coverage target)` : "";
  const top = $("top-labels");
  top.textContent = "";
  for (const t of result.top) {
    const li = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, 160 * t.probability)}px`;
    li.append(bar, `${t.label} ${pct(t.probability)}`);
    top.append(li);
  }
  const set = $("prediction-set");
  set.textContent = "";
  for (const label of result.prediction_set || []) {
    const chip = document.createElement("span");
    chip.textContent = label;
    set.append(chip);
  }
  drawViews(result.views || [], labels, geometry);
}

function drawViews(views, labels, geometry) {
  const overlay = $("overlay");
  const tbody = document.querySelector("#views tbody");
  tbody.textContent = "";
  // A view and its mirror share a box: draw each box once, with the pair's summed weight.
  const boxes = new Map();
  for (const view of views) {
    const [base, flip] = view.name.split(":");
    const entry = boxes.get(base) || { box: view.box, weight: 0, base };
    entry.weight += view.weight ?? 0;
    boxes.set(base, entry);
    const p = view.probabilities;
    const best = p.indexOf(Math.max(...p));
    const tr = document.createElement("tr");
    tr.dataset.view = base;
    for (const cell of [base, flip ? "yes" : "", labels[best], pct(p[best]), (view.confidence ?? 0).toFixed(3), pct(view.weight ?? 0)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    tr.addEventListener("mouseenter", () => paint(overlay, boxes, geometry, base));
    tr.addEventListener("mouseleave", () => paint(overlay, boxes, geometry, null));
    tbody.append(tr);
  }
  paint(overlay, boxes, geometry, null);
  overlay.dataset.boxes = String(boxes.size);
}

function paint(overlay, boxes, geometry, hot) {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const pairMax = Math.max(...[...boxes.values()].map((b) => b.weight), 1e-9);
  for (const { box, weight, base } of boxes.values()) {
    if (!box) continue;
    const [l, t, r, b] = box.map((v) => v * geometry.scale);
    const x = l + geometry.dx;
    const y = t + geometry.dy;
    const strength = weight / pairMax;
    ctx.lineWidth = base === hot ? 4 : 2;
    ctx.setLineDash(base === "global" ? [6, 4] : []);
    ctx.strokeStyle = base === hot ? "rgba(37, 99, 235, 1)" : `rgba(194, 65, 12, ${0.25 + 0.75 * strength})`;
    ctx.fillStyle = `rgba(194, 65, 12, ${0.18 * strength})`;
    if (base !== "global") ctx.fillRect(x, y, r - l, b - t);
    ctx.strokeRect(x + 1, y + 1, r - l - 2, b - t - 2);
    ctx.setLineDash([]);
    ctx.font = "12px system-ui, sans-serif";
    const tag = `${base === "global" ? "global " : ""}${pct(weight)}`;
    const width = ctx.measureText(tag).width + 6;
    ctx.fillStyle = "rgba(29, 29, 31, 0.75)";
    ctx.fillRect(x + 3, y + 3, width, 16);
    ctx.fillStyle = "#fff";
    ctx.fillText(tag, x + 6, y + 15);
  }
}
