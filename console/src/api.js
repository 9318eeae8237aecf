// The /v1 API from the browser: one fetch wrapper (Bearer key, error envelope), uploads with progress, and a
// server-sent events reader that resumes after the last event it saw (Last-Event-ID).

const KEY = "finetune.apiKey"; // sessionStorage: the key lives as long as the tab

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, envelope) {
    const error = envelope?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? "http_error";
    this.param = error.param ?? null;
    this.details = Array.isArray(error.details) ? error.details : [];
  }
}

function headers(extra = {}) {
  const all = { ...extra };
  if (session.key) all.Authorization = `Bearer ${session.key}`;
  return all;
}

async function failure(response) {
  let envelope = null;
  try {
    envelope = await response.json();
  } catch {
    envelope = null;
  }
  const error = new ApiError(response.status, envelope);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("finetune:unauthorized"));
  return error;
}

// `signal` (a page's, aborted when a person leaves it) drops the answer rather than the request: a request
// cut off half-way would read as a network failure, and a short one costs nothing to finish.
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const answer = await response.json();
  if (signal?.aborted) throw new DOMException("the page was left", "AbortError");
  return answer;
}

export async function download(path, filename) {
  // Through fetch, so that the Bearer key goes along; then saved as the file the API names.
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export function upload(path, form, onProgress) {
  // XMLHttpRequest: fetch reports no upload progress.
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [name, value] of Object.entries(headers({ Accept: "application/json" }))) {
      request.setRequestHeader(name, value);
    }
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = null;
      }
      if (request.status >= 200 && request.status < 300) resolve(body);
      else reject(new ApiError(request.status, body));
    };
    request.onerror = () => reject(new ApiError(0, { error: { message: "the upload failed (network)" } }));
    request.send(form);
  });
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

function parseBlock(block) {
  const event = { id: null, type: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
  }
  return event.data.length ? event : null;
}

// A sweep's trial its pruner stopped is "pruned": as final as the other three (the stream ends after it).
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);

export function isTerminal(event) {
  return event.type === "status" && TERMINAL.has(event.data?.to);
}

// Follows a job's events from `after` on. Every event is handed to onEvent once, in seq order: after a dropped
// connection it reconnects with Last-Event-ID, so nothing is missed or repeated. Ends after the final status
// event, or when `signal` aborts. onState: "live", "reconnecting", "ended".
export async function followEvents(jobId, { after = 0, onEvent, onState = () => {}, signal }) {
  let last = after;
  let delay = 500;
  while (!signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (last > 0) extra["Last-Event-ID"] = String(last);
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events/stream`, {
        headers: headers(extra),
        signal,
        cache: "no-store",
      });
      if (!response.ok) throw await failure(response);
      onState("live");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // Lines end in \r\n, \n or \r; keep a trailing \r until we know whether \n follows it.
        const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
        let text = buffer.slice(0, cut).replace(/\r\n?/g, "\n");
        buffer = buffer.slice(cut);
        let end;
        while ((end = text.indexOf("\n\n")) >= 0) {
          const parsed = parseBlock(text.slice(0, end));
          text = text.slice(end + 2);
          if (!parsed) continue;
          const event = JSON.parse(parsed.data.join("\n"));
          if (event.seq <= last) continue;
          last = event.seq;
          onEvent(event);
          if (isTerminal(event)) {
            onState("ended");
            return last;
          }
        }
        buffer = text + buffer;
      }
    } catch (error) {
      if (signal.aborted) break;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) throw error;
    }
    if (signal.aborted) break;
    onState("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 5000);
  }
  return last;
}

// Which routes this server has: buttons for actions a server does not offer (pause, resume) stay hidden.
let openapi = null;
export async function capabilities() {
  if (openapi === null) {
    try {
      const response = await fetch("/openapi.json");
      openapi = response.ok ? await response.json() : { paths: {} };
    } catch {
      openapi = { paths: {} };
    }
  }
  return {
    has: (method, path) => Boolean(openapi.paths?.[path]?.[method.toLowerCase()]),
  };
}
