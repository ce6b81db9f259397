// The cascade page: a client of the public API, nothing more. Jobs started here are remembered
// in localStorage (upscale inputs in IndexedDB, for the before/after comparison); each active
// job is followed by Server-Sent Events, or by polling where a stream cannot be had.

const JOBS_KEY = "cascade.jobs";
const API_KEY = "cascade.apiKey";
const KEEP_JOBS = 50;
const TERMINAL = ["succeeded", "failed", "canceled"];
const EVENT_TYPES = [
  "queued", "stage_started", "progress", "stage_finished", "stage_retrying",
  "succeeded", "failed", "canceled",
];
const MAX_STREAMS = 3; // a browser opens about 6 connections per host: leave room for requests
const POLL_MS = 1000;
const QUOTE_DELAY_MS = 350;

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// ---------------------------------------------------------------------------------------------
// The API: every failure becomes an ApiError whose message is the API's own `error` sentence.

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return localStorage.getItem(API_KEY) || "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `The service could not be reached (${error.message}).`);
  }
  if (!response.ok) {
    let message = `HTTP ${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.blob();
}

function announce(text) {
  const region = $("#announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50); // a change screen readers notice
}

// ---------------------------------------------------------------------------------------------
// Formatting

const number = new Intl.NumberFormat();

function seconds(value) {
  if (value === null || value === undefined) return "unknown";
  if (value < 1) return "under a second";
  if (value < 90) return `${Math.round(value)} s`;
  return `${Math.round(value / 60)} min`;
}

function work(cost) {
  if (cost >= 1e9) return `${(cost / 1e9).toFixed(1)} G`;
  if (cost >= 1e6) return `${(cost / 1e6).toFixed(1)} M`;
  if (cost >= 1e3) return `${(cost / 1e3).toFixed(1)} k`;
  return String(cost);
}

function size(width, height) {
  return `${width}×${height}`;
}

function shellQuote(text) {
  return `'${String(text).replaceAll("'", "'\\''")}'`;
}

// ---------------------------------------------------------------------------------------------
// Upscale inputs, kept for the comparison: IndexedDB where it works, memory otherwise.

const inputs = (() => {
  const memory = new Map();
  let opening = null;
  const open = () => (opening ??= new Promise((resolve) => {
    try {
      const request = indexedDB.open("cascade", 1);
      request.onupgradeneeded = () => request.result.createObjectStore("inputs");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
    } catch {
      resolve(null);
    }
  }));
  const run = async (mode, action) => {
    const db = await open();
    if (!db) return null;
    return new Promise((resolve) => {
      try {
        const request = action(db.transaction("inputs", mode).objectStore("inputs"));
        request.onsuccess = () => resolve(request.result ?? null);
        request.onerror = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  };
  return {
    async put(id, blob) {
      memory.set(id, blob);
      await run("readwrite", (store) => store.put(blob, id));
    },
    async get(id) {
      return memory.get(id) ?? (await run("readonly", (store) => store.get(id)));
    },
    async remove(id) {
      memory.delete(id);
      await run("readwrite", (store) => store.delete(id));
    },
  };
})();

// ---------------------------------------------------------------------------------------------
// Bicubic enlargement (Keys' cubic, a = -0.5), separable, for the "before" half of a comparison.

function cubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

function taps(inSize, outSize) {
  const scale = inSize / outSize;
  const index = new Int32Array(outSize * 4);
  const weight = new Float32Array(outSize * 4);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale - 0.5;
    const left = Math.floor(center) - 1;
    let total = 0;
    for (let k = 0; k < 4; k++) {
      const w = cubic(center - (left + k));
      index[o * 4 + k] = Math.min(Math.max(left + k, 0), inSize - 1);
      weight[o * 4 + k] = w;
      total += w;
    }
    for (let k = 0; k < 4; k++) weight[o * 4 + k] /= total;
  }
  return { index, weight };
}

function bicubic(bitmap, width, height) {
  const source = document.createElement("canvas");
  source.width = bitmap.width;
  source.height = bitmap.height;
  const sourceContext = source.getContext("2d");
  sourceContext.drawImage(bitmap, 0, 0);
  const pixels = sourceContext.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const inWidth = bitmap.width;
  const inHeight = bitmap.height;
  const across = taps(inWidth, width);
  const down = taps(inHeight, height);
  const rows = new Float32Array(inHeight * width * 3); // horizontal pass
  for (let y = 0; y < inHeight; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < 4; k++) {
        const i = (y * inWidth + across.index[x * 4 + k]) * 4;
        const w = across.weight[x * 4 + k];
        r += pixels[i] * w;
        g += pixels[i + 1] * w;
        b += pixels[i + 2] * w;
      }
      const o = (y * width + x) * 3;
      rows[o] = r;
      rows[o + 1] = g;
      rows[o + 2] = b;
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let y = 0; y < height; y++) { // vertical pass
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < 4; k++) {
        const i = (down.index[y * 4 + k] * width + x) * 3;
        const w = down.weight[y * 4 + k];
        r += rows[i] * w;
        g += rows[i + 1] * w;
        b += rows[i + 2] * w;
      }
      const o = (y * width + x) * 4;
      image.data[o] = r; // Uint8ClampedArray rounds and clamps
      image.data[o + 1] = g;
      image.data[o + 2] = b;
      image.data[o + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

// ---------------------------------------------------------------------------------------------
// The job list

let entries = loadEntries();
const cards = new Map();
let streams = 0;

function loadEntries() {
  try {
    const stored = JSON.parse(localStorage.getItem(JOBS_KEY) || "[]");
    return Array.isArray(stored) ? stored : [];
  } catch {
    return [];
  }
}

function saveEntries() {
  const kept = entries.slice(0, KEEP_JOBS);
  for (const dropped of entries.slice(KEEP_JOBS)) inputs.remove(dropped.id);
  entries = kept;
  localStorage.setItem(JOBS_KEY, JSON.stringify(entries));
  $("#no-jobs").hidden = entries.length > 0;
}

function addJob(entry, input) {
  entries.unshift(entry);
  saveEntries();
  if (input) inputs.put(entry.id, input);
  const card = new JobCard(entry);
  cards.set(entry.id, card);
  $("#jobs").prepend(card.node);
  card.start();
  return card;
}

class JobCard {
  constructor(entry) {
    this.entry = entry;
    this.id = entry.id;
    this.view = null;
    this.source = null;
    this.timer = null;
    this.previews = new Map();
    this.resultShown = false;
    this.settling = 0;
    this.node = $("#job-template").content.firstElementChild.cloneNode(true);
    this.node.dataset.id = entry.id;
    const titleId = `job-${entry.id}-title`;
    $(".job-title", this.node).id = titleId;
    $("article", this.node).setAttribute("aria-labelledby", titleId);
    $(".job-title", this.node).textContent = entry.title;
    $(".overall progress", this.node).setAttribute("aria-label", `Progress of ${entry.title}`);
    $(".cancel", this.node).addEventListener("click", () => this.cancel());
    $(".curl", this.node).addEventListener("click", () => this.copyCurl());
    $(".forget", this.node).addEventListener("click", () => this.forget());
    $(".slider", this.node).addEventListener("input", (event) => this.slide(event.target.value));
    this.meta();
  }

  meta(extra = "") {
    const when = new Date(this.entry.created).toLocaleTimeString();
    const parts = [`submitted ${when}`];
    const seed = this.view?.seed ?? this.entry.seed;
    if (seed !== undefined && seed !== null) parts.push(`seed ${seed}`);
    if (extra) parts.push(extra);
    $(".meta", this.node).textContent = parts.join(" · ");
  }

  get done() {
    return this.view !== null && TERMINAL.includes(this.view.status);
  }

  async start() {
    try {
      this.render(await api(`/v1/jobs/${this.id}`));
    } catch (error) {
      if (error.status === 404) return this.gone(error.message);
      this.showError(error.message);
    }
    if (!this.done) this.follow();
  }

  follow() {
    if (window.EventSource && !apiKey() && streams < MAX_STREAMS) this.stream();
    else this.poll();
  }

  stream() {
    // EventSource cannot send an Authorization header: with an API key set, the page polls.
    const source = new EventSource(`/v1/jobs/${this.id}/events`);
    this.source = source;
    streams += 1;
    let failures = 0;
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        failures = 0;
        this.apply(type, JSON.parse(message.data));
      });
    }
    source.onerror = () => {
      failures += 1; // the browser reconnects (with Last-Event-ID) unless the stream is closed
      if (source.readyState === EventSource.CLOSED || failures >= 3) {
        this.closeStream();
        if (!this.done) this.poll();
      }
    };
  }

  closeStream() {
    if (this.source) {
      this.source.close();
      this.source = null;
      streams -= 1;
    }
  }

  poll() {
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      try {
        this.render(await api(`/v1/jobs/${this.id}`));
      } catch (error) {
        if (error.status === 404) return this.gone(error.message);
        this.showError(error.message);
      }
      if (!this.done) this.poll();
    }, POLL_MS);
  }

  apply(type, data) {
    if (TERMINAL.includes(type)) {
      this.closeStream();
      this.render(data); // the job as it ended, as polling would show it
      return;
    }
    const view = this.view;
    if (!view) return;
    const stage = view.stages.find((item) => item.name === data.stage);
    if (type === "stage_started" && stage) {
      Object.assign(stage, { status: "running", step: 0, attempts: data.attempt, error: null });
      Object.assign(view, { status: "running", stage: data.stage });
    } else if (type === "progress" && stage) {
      Object.assign(stage, { status: "running", step: data.step, steps: data.steps });
      Object.assign(view, { status: "running", progress: data.progress, eta_seconds: data.eta_seconds });
    } else if (type === "stage_finished" && stage) {
      Object.assign(stage, { status: "succeeded", step: stage.steps, preview: data.preview, seconds: data.seconds });
    } else if (type === "stage_retrying" && stage) {
      Object.assign(stage, { status: "queued", error: `retrying: ${data.error}` });
    }
    this.render(view);
  }

  render(view) {
    const before = this.view;
    this.view = view;
    const status = view.status;
    const badge = $(".badge", this.node);
    badge.textContent = status;
    badge.className = `badge ${status}`;
    this.meta(view.random_weights ? "random weights" : "");
    const progress = status === "succeeded" ? 1 : view.progress;
    $(".overall progress", this.node).value = progress;
    $(".percent", this.node).textContent = `${Math.floor(progress * 100)}%`;
    this.renderStages(view);
    this.speak(view, progress);
    if (before && before.status !== status && TERMINAL.includes(status)) {
      announce(`${this.entry.title}: ${status}.`);
    }
    $(".error", this.node).textContent = view.error || "";
    $(".cancel", this.node).hidden = TERMINAL.includes(status);
    if (status === "succeeded" && !this.resultShown) {
      this.resultShown = true;
      this.showResult(view);
    }
    this.settle(view);
  }

  settle(view) {
    // A canceled job's running stage stops within a sampler step of the end: look once more
    // so that the stage's own outcome shows too.
    const stopping = view.stages.some((stage) => stage.status === "running");
    if (!TERMINAL.includes(view.status) || !stopping || this.settling >= 5) return;
    this.settling += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      try {
        this.render(await api(`/v1/jobs/${this.id}`));
      } catch {
        // the job's outcome is shown already
      }
    }, POLL_MS);
  }

  speak(view, progress) {
    // The live line changes with the stage and each tenth only, so screen readers are not
    // flooded; the ETA, which moves with every event, sits beside it outside the live region.
    let text;
    if (view.status === "running") {
      text = `Running ${view.stage}: ${Math.floor(progress * 10) * 10}% done`;
    } else if (view.status === "queued") {
      text = "Queued: waiting for a worker";
    } else if (view.status === "succeeded") {
      text = `Done in ${seconds(this.elapsed(view))}`;
    } else {
      text = view.status === "failed" ? "Failed" : "Canceled";
    }
    const line = $(".status-line .live", this.node);
    if (line.textContent !== text) line.textContent = text;
    const eta = view.status === "running" && view.eta_seconds !== null
      ? `about ${seconds(view.eta_seconds)} left`
      : "";
    $(".eta", this.node).textContent = eta;
  }

  elapsed(view) {
    if (!view.created_at || !view.ended_at) return null;
    return (Date.parse(view.ended_at) - Date.parse(view.created_at)) / 1000;
  }

  renderStages(view) {
    const list = $(".stages", this.node);
    for (const stage of view.stages) {
      let item = $(`[data-stage="${stage.name}"]`, list);
      if (!item) {
        item = document.createElement("li");
        item.className = "stage";
        item.dataset.stage = stage.name;
        item.innerHTML = '<img alt="" hidden><span class="stage-name"></span><progress max="1" value="0"></progress>';
        $("progress", item).setAttribute("aria-label", `Stage ${stage.name}`);
        list.append(item);
      }
      const steps = Math.max(stage.steps, 1);
      const done = stage.status === "succeeded" ? 1 : Math.min(stage.step / steps, 1);
      $("progress", item).value = done;
      let words = `${stage.name} · ${size(stage.width, stage.height)} · ${stage.status}`;
      if (stage.status === "running") words += ` · step ${stage.step} of ${stage.steps}`;
      if (stage.status === "succeeded" && stage.seconds !== null) words += ` in ${seconds(stage.seconds)}`;
      if (stage.error) words += ` (${stage.error})`;
      $(".stage-name", item).textContent = words;
      if (stage.preview && !this.previews.has(stage.name)) this.showPreview(stage, item);
    }
  }

  async showPreview(stage, item) {
    this.previews.set(stage.name, null);
    try {
      const blob = await api(stage.preview);
      this.previews.set(stage.name, blob);
      const img = $("img", item);
      img.src = URL.createObjectURL(blob);
      img.alt = `Stage ${stage.name} output, ${size(stage.width, stage.height)}`;
      img.hidden = false;
    } catch (error) {
      this.previews.delete(stage.name);
    }
  }

  async showResult(view) {
    let blob;
    try {
      blob = await api(view.result);
    } catch (error) {
      this.showError(error.message);
      return;
    }
    const url = URL.createObjectURL(blob);
    const download = $(".download", this.node);
    download.href = url;
    download.download = `cascade-${this.id}.png`;
    download.hidden = false;
    $(".result", this.node).hidden = false;
    const { width, height } = view.output;
    const before = await this.comparisonSource(view);
    if (!before) {
      const final = $(".final", this.node);
      final.src = url;
      final.alt = `Result, ${size(width, height)}`;
      if (width < 256) final.classList.add("enlarged"); // shown at 256 px, pixels kept sharp
      final.hidden = false;
      return;
    }
    const bitmap = await createImageBitmap(before.blob);
    const canvas = bicubic(bitmap, width, height);
    canvas.className = "before";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${before.what}, enlarged by bicubic interpolation`);
    $(".frame canvas", this.node).replaceWith(canvas);
    const after = $(".after", this.node);
    after.src = url;
    after.alt = `Result by the model, ${size(width, height)}`;
    $("figcaption", this.node).textContent = `Left of the line: ${before.what} (${size(bitmap.width, bitmap.height)}) enlarged to ${size(width, height)} by bicubic interpolation in this browser. Right: the model's ${size(width, height)} output.`;
    $(".compare", this.node).hidden = false;
  }

  async comparisonSource(view) {
    // An upscale's own input; a generation's input to its last stage (the stage before it).
    if (view.kind === "upscale") {
      const blob = await inputs.get(this.id);
      return blob ? { blob, what: "your image" } : null;
    }
    if (view.stages.length < 2) return null;
    const previous = view.stages[view.stages.length - 2];
    try {
      const blob = this.previews.get(previous.name) || (await api(view.links.stages[previous.name]));
      return { blob, what: `the ${previous.name} stage's output` };
    } catch {
      return null;
    }
  }

  slide(value) {
    $(".after", this.node).style.clipPath = `inset(0 0 0 ${value}%)`;
    $(".divider", this.node).style.left = `${value}%`;
  }

  async cancel() {
    const button = $(".cancel", this.node);
    button.disabled = true;
    try {
      this.render(await api(`/v1/jobs/${this.id}`, { method: "DELETE" }));
      this.closeStream();
    } catch (error) {
      this.showError(error.message);
    } finally {
      button.disabled = false;
    }
  }

  curl() {
    const origin = window.location.origin;
    const auth = apiKey() ? ' -H "Authorization: Bearer $CASCADE_API_KEY"' : "";
    const request = { ...this.entry.request };
    const seed = this.view?.seed;
    if (seed !== undefined && seed !== null) request.seed = seed; // the same image again
    if (this.entry.kind === "generation") {
      return `curl -s -X POST ${shellQuote(`${origin}/v1/generations`)}${auth} \\\n` +
        `  -H 'content-type: application/json' -d ${shellQuote(JSON.stringify(request))}`;
    }
    const fields = Object.entries(request)
      .map(([key, value]) => ` -F ${shellQuote(`${key}=${value}`)}`)
      .join("");
    const file = shellQuote(`file=@${this.entry.filename || "image.png"}`);
    return `curl -s -X POST ${shellQuote(`${origin}/v1/upscales`)}${auth} \\\n  -F ${file}${fields}`;
  }

  async copyCurl() {
    const command = this.curl();
    const box = $(".curl-box", this.node);
    const text = $(".curl-text", this.node);
    const note = $(".curl-note", this.node);
    text.value = command;
    box.hidden = false;
    try {
      await navigator.clipboard.writeText(command);
      note.textContent = "Copied to the clipboard.";
    } catch {
      text.focus();
      text.select();
      note.textContent = "The browser refused the clipboard: the command is selected above, copy it from there.";
    }
  }

  forget() {
    this.closeStream();
    clearTimeout(this.timer);
    entries = entries.filter((entry) => entry.id !== this.id);
    saveEntries();
    inputs.remove(this.id);
    cards.delete(this.id);
    const next = this.node.nextElementSibling || this.node.previousElementSibling;
    this.node.remove();
    (next ? $(".forget", next) : $("#jobs-heading")).focus();
  }

  gone(message) {
    this.closeStream();
    $(".badge", this.node).textContent = "gone";
    $(".cancel", this.node).hidden = true;
    this.showError(message);
  }

  showError(message) {
    $(".error", this.node).textContent = message;
  }
}

// ---------------------------------------------------------------------------------------------
// Forms

let limits = null;

function debounce(action, delay) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(action, delay);
  };
}

function optionalInt(input) {
  const text = input.value.trim();
  return text === "" ? undefined : Number(text);
}

function seedOf(prefix) {
  return $(`#${prefix}-seed-random`).checked ? undefined : optionalInt($(`#${prefix}-seed`));
}

function showQuote(target, quote) {
  const box = $(target);
  box.replaceChildren();
  const stages = quote.stages
    .map((stage) => `${stage.name} ${size(stage.width, stage.height)} (${stage.steps} ${stage.sampler} steps)`)
    .join(" → ");
  const line = document.createElement("p");
  line.style.margin = "0";
  let time;
  if (quote.total_seconds !== null) {
    const queue = quote.wait_seconds === 0 ? "no queue" : `queue ${seconds(quote.wait_seconds)}`;
    time = `about ${seconds(quote.total_seconds)} (${queue}, running ${seconds(quote.run_seconds)})`;
  } else if (quote.run_seconds !== null) {
    time = `running about ${seconds(quote.run_seconds)}, queue wait unknown`;
  } else {
    time = "time unknown";
  }
  line.textContent = `Quote: ${stages}. Cost ${work(quote.cost)} step-pixels; ${time}.`;
  box.append(line);
  if (quote.notes.length) {
    const list = document.createElement("ul");
    for (const note of quote.notes) {
      const item = document.createElement("li");
      item.className = "note";
      item.textContent = note;
      list.append(item);
    }
    box.append(list);
  }
}

function quoteError(target, message) {
  const box = $(target);
  box.replaceChildren();
  const line = document.createElement("p");
  line.style.margin = "0";
  line.textContent = `No quote: ${message}`;
  box.append(line);
}

function quoter(target, build, send) {
  let controller = null;
  return debounce(async () => {
    const request = build();
    if (!request) {
      $(target).replaceChildren();
      return;
    }
    controller?.abort();
    controller = new AbortController();
    try {
      showQuote(target, await send(request, true, controller.signal));
    } catch (error) {
      if (error.name !== "AbortError") quoteError(target, error.message);
    }
  }, QUOTE_DELAY_MS);
}

async function submitWith(form, errorTarget, action) {
  const button = $("button[type=submit]", form);
  $(errorTarget).textContent = "";
  button.disabled = true;
  try {
    await action();
  } catch (error) {
    $(errorTarget).textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// Generate

function generationRequest() {
  const name = $("#gen-class").value.trim();
  if (!name) return null;
  const request = { size: Number($("input[name=size]:checked").value) };
  if (/^\d+$/.test(name)) request.class_id = Number(name);
  else request.class_name = name;
  const seed = seedOf("gen");
  if (seed !== undefined) request.seed = seed;
  const sampler = $("#gen-sampler").value;
  if (sampler) request.sampler = sampler;
  const steps = optionalInt($("#gen-steps"));
  if (steps !== undefined) request.steps = steps;
  const guidance = Number($("#gen-guidance").value || "1");
  if (guidance !== 1) request.guidance = guidance;
  return request;
}

function sendGeneration(request, dryRun = false, signal = undefined) {
  return api("/v1/generations", { method: "POST", json: dryRun ? { ...request, dry_run: true } : request, signal });
}

function setUpGenerate() {
  const form = $("#generate");
  const quote = quoter("#gen-quote", generationRequest, sendGeneration);
  form.addEventListener("input", quote);
  form.addEventListener("change", quote);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitWith(form, "#gen-error", async () => {
      const request = generationRequest();
      if (!request) {
        $("#gen-class").focus();
        throw new Error("Choose a class first (type part of its name and pick one from the list).");
      }
      const accepted = await sendGeneration(request);
      const name = request.class_name ?? `class ${request.class_id}`;
      addJob({
        id: accepted.id,
        kind: "generation",
        title: `Generate ${name}, ${request.size} px`,
        created: Date.now(),
        seed: accepted.seed,
        request,
      });
      announce(`Generation of ${name} queued.`);
    });
  });
}

// Upscale

let chosen = null; // { file, width, height } once an image is chosen (width null: unreadable)

function upscaleMode() {
  return $("input[name=up-mode]:checked").value;
}

function plannedOutput(width, height) {
  // As the service plans it: the scale, or the smallest of 4 and 16 reaching the target side.
  const mode = upscaleMode();
  let scale = Number(mode);
  let target = null;
  if (mode === "target") {
    target = optionalInt($("#up-target"));
    if (!target || target < 1) return { error: "give the target size in pixels" };
    const side = Math.max(width, height);
    scale = [4, 16].find((factor) => side * factor >= target);
    if (!scale) return { error: `${target} px is more than 16× the image's longer side (${side} px)` };
  }
  let outWidth = width * scale;
  let outHeight = height * scale;
  if (target && target < Math.max(outWidth, outHeight)) {
    const ratio = target / Math.max(outWidth, outHeight);
    outWidth = Math.max(1, Math.round(outWidth * ratio));
    outHeight = Math.max(1, Math.round(outHeight * ratio));
  }
  return { width: outWidth, height: outHeight, scale };
}

function showSizes() {
  const line = $("#up-sizes");
  if (!chosen) {
    line.textContent = "No image chosen yet.";
    return;
  }
  if (chosen.width === null) {
    line.textContent = `${chosen.file.name}: this browser cannot read it as an image; the service will say why.`;
    return;
  }
  const input = `Input ${size(chosen.width, chosen.height)}`;
  const output = plannedOutput(chosen.width, chosen.height);
  if (output.error) {
    line.textContent = `${input} · output: ${output.error}`;
    return;
  }
  let text = `${input} → output ${size(output.width, output.height)} (${output.scale}× model upscale)`;
  if (limits) {
    const pixels = chosen.width * chosen.height;
    const outPixels = chosen.width * output.scale * chosen.height * output.scale;
    if (pixels > limits.max_input_pixels) text += ` · over the input limit of ${number.format(limits.max_input_pixels)} pixels`;
    else if (outPixels > limits.max_output_pixels) text += ` · over the output limit of ${number.format(limits.max_output_pixels)} pixels`;
  }
  line.textContent = text;
}

function upscaleFields() {
  const fields = {};
  const mode = upscaleMode();
  if (mode === "target") {
    const target = optionalInt($("#up-target"));
    if (target !== undefined) fields.target_size = target;
  } else {
    fields.scale = Number(mode);
  }
  if (!$("#up-fidelity-default").checked) fields.fidelity = Number($("#up-fidelity").value);
  fields.color_fix = $("#up-color").value;
  const seed = seedOf("up");
  if (seed !== undefined) fields.seed = seed;
  const sampler = $("#up-sampler").value;
  if (sampler) fields.sampler = sampler;
  const steps = optionalInt($("#up-steps"));
  if (steps !== undefined) fields.steps = steps;
  return fields;
}

function upscaleRequest() {
  return chosen ? { file: chosen.file, fields: upscaleFields() } : null;
}

function sendUpscale(request, dryRun = false, signal = undefined) {
  const form = new FormData();
  form.append("file", request.file, request.file.name);
  for (const [key, value] of Object.entries(request.fields)) form.append(key, String(value));
  if (dryRun) form.append("dry_run", "true");
  return api("/v1/upscales", { method: "POST", form, signal });
}

async function choose(file, quote) {
  const preview = $("#up-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = true;
  chosen = { file, width: null, height: null };
  try {
    const bitmap = await createImageBitmap(file);
    chosen = { file, width: bitmap.width, height: bitmap.height };
    bitmap.close();
    preview.src = URL.createObjectURL(file);
    preview.alt = `The chosen image, ${file.name}`;
    preview.hidden = false;
  } catch {
    // not an image this browser reads: the service's answer will say what is wrong
  }
  showSizes();
  quote();
}

function setUpUpscale() {
  const form = $("#upscale");
  const quote = quoter("#up-quote", upscaleRequest, sendUpscale);
  const fileInput = $("#up-file");
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) choose(fileInput.files[0], quote);
  });
  const drop = $("#up-drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (file) choose(file, quote);
  });
  const fidelity = $("#up-fidelity");
  fidelity.addEventListener("input", () => {
    $("#up-fidelity-value").value = Number(fidelity.value).toFixed(2);
    $("#up-fidelity-default").checked = false;
  });
  for (const radio of $$("input[name=up-mode]")) {
    radio.addEventListener("change", () => {
      $("#up-target").disabled = upscaleMode() !== "target";
    });
  }
  for (const type of ["input", "change"]) {
    form.addEventListener(type, (event) => {
      if (event.target === fileInput) return; // `choose` handles a new file
      showSizes();
      quote();
    });
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitWith(form, "#up-error", async () => {
      const request = upscaleRequest();
      if (!request) {
        fileInput.focus();
        throw new Error("Choose an image first.");
      }
      const accepted = await sendUpscale(request);
      const from = chosen.width === null ? "" : ` ${size(chosen.width, chosen.height)}`;
      const output = chosen.width === null ? null : plannedOutput(chosen.width, chosen.height);
      const to = output && !output.error ? ` → ${size(output.width, output.height)}` : "";
      addJob(
        {
          id: accepted.id,
          kind: "upscale",
          title: `Upscale ${request.file.name}${from}${to}`,
          created: Date.now(),
          seed: accepted.seed,
          request: request.fields,
          filename: request.file.name,
        },
        request.file,
      );
      announce(`Upscale of ${request.file.name} queued.`);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Setting up

function setUpSeed(prefix) {
  const random = $(`#${prefix}-seed-random`);
  const seed = $(`#${prefix}-seed`);
  random.addEventListener("change", () => {
    seed.disabled = random.checked;
    if (!random.checked) {
      if (seed.value === "") seed.value = String(Math.floor(Math.random() * 2 ** 31));
      seed.focus();
    }
  });
}

function setUpTabs() {
  const tabs = $$("[role=tab]");
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
    }
    tab.focus();
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -index, End: tabs.length - 1 - index };
      if (!(event.key in moves)) return;
      event.preventDefault();
      select(tabs[(index + moves[event.key] + tabs.length) % tabs.length]);
    });
  });
}

function setUpKey() {
  const input = $("#api-key");
  input.value = apiKey();
  input.addEventListener("change", () => {
    const key = input.value.trim();
    if (key) localStorage.setItem(API_KEY, key);
    else localStorage.removeItem(API_KEY);
  });
}

async function loadChoices() {
  try {
    limits = await api("/v1/limits");
  } catch (error) {
    $("#up-limits").textContent = `The limits could not be loaded: ${error.message}`;
  }
  if (limits) {
    for (const id of ["#gen-sampler", "#up-sampler"]) {
      for (const name of limits.samplers) $(id).append(new Option(name, name));
    }
    for (const fix of limits.color_fixes.filter((name) => name !== "none")) {
      $("#up-color").append(new Option(fix, fix));
    }
    for (const id of ["#gen-steps", "#up-steps"]) $(id).max = String(limits.max_steps);
    const defaults = Object.entries(limits.defaults)
      .map(([stage, run]) => `${stage} ${run.steps} ${run.sampler}`)
      .join(", ");
    $("#gen-steps-hint").textContent = `1 to ${limits.max_steps}, for every stage. The service's defaults: ${defaults}.`;
    $("#up-fidelity").value = String(limits.default_fidelity);
    $("#up-fidelity-value").value = limits.default_fidelity.toFixed(2);
    const side = Math.floor(Math.sqrt(limits.max_input_pixels));
    const outSide = Math.floor(Math.sqrt(limits.max_output_pixels));
    $("#up-limits").textContent =
      `Limits: files up to ${(limits.max_upload_bytes / 2 ** 20).toFixed(1)} MiB; ` +
      `input up to ${number.format(limits.max_input_pixels)} pixels (${side}×${side}); ` +
      `output up to ${number.format(limits.max_output_pixels)} pixels (${outSide}×${outSide}); ` +
      "scale 4 or 16, or a longer side to reach (the smallest scale that reaches it, then resized).";
  }
  try {
    const classes = await api("/v1/classes");
    const list = $("#class-list");
    for (const item of classes) list.append(new Option(`class ${item.id}`, item.name));
    $("#gen-class-hint").textContent = classes.length === 1000
      ? "Any of the 1000 ImageNet classes: type part of a name, or a class number."
      : `The loaded base model knows ${classes.length} classes: ${classes.map((item) => item.name).join(", ")}.`;
  } catch (error) {
    $("#gen-class-hint").textContent = `The classes could not be loaded: ${error.message}`;
  }
}

function restoreJobs() {
  const list = $("#jobs");
  for (const entry of entries) {
    const card = new JobCard(entry);
    cards.set(entry.id, card);
    list.append(card.node);
  }
  $("#no-jobs").hidden = entries.length > 0;
  for (const card of cards.values()) card.start();
}

setUpTabs();
setUpKey();
setUpSeed("gen");
setUpSeed("up");
setUpGenerate();
setUpUpscale();
restoreJobs();
loadChoices();
