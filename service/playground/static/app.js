// The playground's entry point: tabs, the API key, the model pickers, and the error banner.

import { auth, getJSON } from "./api.js";
import { imageView } from "./image.js";
import { chatView, completionView } from "./text.js";

const $ = (id) => document.getElementById(id);

const ui = {
  showError(err) {
    const box = $("error");
    box.textContent = err && err.code ? String(err) : `error: ${err && err.message ? err.message : err}`;
    box.dataset.status = err && err.status ? String(err.status) : "";
    box.dataset.code = err && err.code ? err.code : "";
    box.hidden = false;
  },
  clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  },
};

function tabs() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => {
      for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b === button);
      for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${button.dataset.view}`;
      $("controls").hidden = button.dataset.view === "image";
      document.querySelector("main").classList.toggle("wide", button.dataset.view === "image");
    });
  }
}

function fill(select, names) {
  const keep = select.value;
  select.textContent = "";
  for (const name of names) select.append(new Option(name, name));
  if (names.includes(keep)) select.value = keep;
}

async function loadModels() {
  try {
    const { data } = await getJSON("/v1/models");
    fill($("text-model"), data.filter((m) => m.kind === "text-generation").map((m) => m.id));
    fill($("image-model"), data.filter((m) => m.kind === "image-classification").map((m) => m.id));
    const ready = data.filter((m) => m.ready).length;
    $("server-state").textContent = `${ready}/${data.length} models ready`;
    $("server-state").dataset.loaded = "true";
  } catch (err) {
    ui.showError(err);
  }
}

async function main() {
  tabs();
  for (const [id, out] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(id).addEventListener("input", () => { $(out).textContent = $(id).value; });
  }
  const config = await getJSON("/playground/config.json");
  completionView(ui);
  chatView(ui, config.chat);
  imageView(ui);
  const key = $("api-key");
  $("key-box").hidden = !config.api_keys;
  key.addEventListener("change", () => {
    auth.key = key.value.trim();
    ui.clearError();
    loadModels();
  });
  if (!config.api_keys) await loadModels();
  else $("server-state").textContent = "this server needs an API key";
  document.body.dataset.ready = "true";
}

main().catch((err) => ui.showError(err));
