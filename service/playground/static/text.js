// The completion view (POST /generate, Kiln's own stream) and the chat view (POST
// /v1/chat/completions, OpenAI's chunk format). Both stream text as it arrives and report
// TTFT, decode tok/s and token counts per response.

import { postStream } from "./api.js";

const $ = (id) => document.getElementById(id);

/** The sampling panel as request fields; `openai` picks OpenAI's names. */
export function sampling(openai) {
  const stop = $("stop").value.split("\n").filter((s) => s.length).map((s) => s.replaceAll("\\n", "\n").replaceAll("\\t", "\t"));
  const out = {
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    [openai ? "max_tokens" : "max_new_tokens"]: Number($("max-tokens").value),
  };
  const topK = Number($("top-k").value);
  if (topK > 0) out.top_k = topK;
  if (stop.length) out.stop = stop;
  if ($("seed").value !== "") out.seed = Number($("seed").value);
  const model = $("text-model").value;
  if (model) out.model = model;
  return out;
}

/** Timing of one response, measured in the page: first text, last text, tokens. */
class Clock {
  constructor() { this.start = performance.now(); this.first = null; this.last = null; this.chunks = 0; }
  text() {
    const now = performance.now();
    if (this.first === null) this.first = now;
    this.last = now;
    this.chunks += 1;
  }
  /** `timings`: the server's (Kiln's /generate), which time decoding without network bursts. */
  summary(usage, finish, timings) {
    const parts = [];
    if (this.first !== null) parts.push(`TTFT ${(this.first - this.start).toFixed(0)} ms`);
    if (timings && timings.ttft_ms != null) parts.push(`(server ${timings.ttft_ms.toFixed(0)} ms)`);
    const n = usage ? usage.completion_tokens : this.chunks;
    const decodeMs = timings && timings.ttft_ms != null ? timings.total_ms - timings.ttft_ms : this.last - this.first;
    if (n > 1 && decodeMs > 0) parts.push(`${((n - 1) / (decodeMs / 1000)).toFixed(1)} tok/s`);
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    else parts.push(`${this.chunks} chunks`);
    if (finish) parts.push(`finish: ${finish}`);
    return parts.join(" · ");
  }
}

/** Run one stream with Stop wired to an AbortController; errors go to `fail`. */
async function running(goButton, stopButton, fail, body) {
  const abort = new AbortController();
  goButton.disabled = true;
  stopButton.disabled = false;
  stopButton.onclick = () => abort.abort();
  try {
    await body(abort.signal);
  } catch (err) {
    if (err.name !== "AbortError") fail(err);
  } finally {
    goButton.disabled = false;
    stopButton.disabled = true;
  }
}

export function completionView(ui) {
  const out = $("completion-output");
  const stats = $("completion-stats");
  const go = async () => {
    ui.clearError();
    const prompt = $("prompt").value;
    out.textContent = "";
    out.dataset.chunks = "0";
    out.dataset.done = "false";
    const shown = document.createElement("span");
    shown.className = "prompt";
    shown.textContent = prompt;
    const generated = document.createTextNode("");
    out.append(shown, generated);
    stats.textContent = "…";
    const clock = new Clock();
    await running($("generate"), $("generate-stop"), ui.showError, async (signal) => {
      let finish = null;
      for await (const { event, data } of postStream("/generate", { prompt, ...sampling(false), stream: true }, signal)) {
        const payload = JSON.parse(data);
        if (event === "finish") finish = payload;
        else if (payload.text) {
          clock.text();
          generated.data += payload.text;
          out.dataset.chunks = String(clock.chunks);
        }
      }
      out.dataset.done = "true";
      stats.textContent = clock.summary(finish && finish.usage, finish && finish.finish_reason, finish && finish.timings);
    });
    if (out.dataset.done !== "true") stats.textContent = clock.summary(null, "stopped");
  };
  $("generate").addEventListener("click", go);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) go(); });
}

export function chatView(ui, available) {
  const log = $("chat-log");
  const stats = $("chat-stats");
  const history = [];
  $("chat-missing").hidden = available;
  $("chat-send").disabled = !available;
  const bubble = (role, text) => {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    div.textContent = text;
    log.append(div);
    return div;
  };
  const send = async () => {
    const text = $("chat-input").value.trim();
    if (!text || !available) return;
    ui.clearError();
    $("chat-input").value = "";
    history.push({ role: "user", content: text });
    bubble("user", text);
    const reply = bubble("assistant", "");
    const system = $("system").value.trim();
    const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
    const clock = new Clock();
    let usage = null;
    let finish = null;
    let role = null;
    log.dataset.done = "false";
    stats.textContent = "…";
    await running($("chat-send"), $("chat-stop"), ui.showError, async (signal) => {
      const body = { messages, ...sampling(true), stream: true, stream_options: { include_usage: true } };
      for await (const { data } of postStream("/v1/chat/completions", body, signal)) {
        const chunk = JSON.parse(data);
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.role) role = choice.delta.role;
        if (choice.delta && choice.delta.content) {
          clock.text();
          reply.textContent += choice.delta.content;
          log.dataset.chunks = String(Number(log.dataset.chunks) + 1);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      log.dataset.done = "true";
    });
    reply.dataset.role = role || "";
    if (reply.textContent) history.push({ role: "assistant", content: reply.textContent });
    else {  // refused or stopped before any text: take the turn back, so it can be edited and resent
      history.pop();
      reply.remove();
      log.lastElementChild.remove();
      $("chat-input").value = text;
    }
    stats.textContent = clock.summary(usage, log.dataset.done === "true" ? finish : "stopped");
  };
  $("chat-send").addEventListener("click", send);
  $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) send(); });
  $("chat-reset").addEventListener("click", () => {
    history.length = 0;
    log.textContent = "";
    log.dataset.chunks = "0";
    stats.textContent = "";
  });
}
