// Talking to the gateway: the API key, Kiln's error shape, and Server-Sent Events over fetch.
// EventSource cannot POST or send headers, so streams are read from fetch's ReadableStream.

export const auth = { key: "" };  // kept in this page only: never stored, sent as a Bearer token

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return `${this.status} ${this.code}: ${this.message}`;
  }
}

export function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

/** Kiln's `{"error": {"code", "message", ...}}` body as an ApiError (whatever the body holds). */
export async function errorOf(response) {
  let code = "http_error";
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status text */ }
  return new ApiError(response.status, code, message);
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** POST JSON and yield the response's SSE events as {event, data}; `data: [DONE]` ends it. */
export async function* postStream(path, body, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "content-type": "application/json", accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  yield* readEvents(response.body);
}

export async function* readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const parsed = parseBlock(block);
        if (!parsed) continue;
        if (parsed.data === "[DONE]") return;
        if (parsed.event === "error") {
          const e = JSON.parse(parsed.data).error || {};
          throw new ApiError("stream", e.code || "error", e.message || parsed.data);
        }
        yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseBlock(block) {
  let event = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}
