// The job list: the caller's jobs as GET /v1/jobs lists them, newest first (those started in this
// browser keep their titles and inputs in localStorage). Each active job is followed by
// Server-Sent Events, or by polling where a stream cannot be had.

import { api, apiKey } from "./api.js";
import { bicubic } from "./bicubic.js";
import { $, announce } from "./dom.js";
import { seconds, shellQuote, size } from "./format.js";
import { inputs } from "./inputs.js";
import { EVENT_TYPES, TERMINAL } from "/vocabulary.js";

const JOBS_KEY = "cascade.jobs";
const REMOVED_KEY = "cascade.removedJobs"; // ids removed from the list: the service still lists them
const KEEP_JOBS = 50;
const MAX_STREAMS = 3; // a browser opens about 6 connections per host: leave room for requests
const POLL_MS = 1000;

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

function removedIds() {
  try {
    const stored = JSON.parse(localStorage.getItem(REMOVED_KEY) || "[]");
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


export function addJob(entry, input) {
  entries.unshift(entry);
  saveEntries();
  if (input) inputs.put(entry.id, input);
  const card = new JobCard(entry);
  cards.set(entry.id, card);
  $("#jobs").prepend(card.node);
  card.start();
  // The new card may be below the fold (always on a phone): show it, and move focus there so a
  // screen reader says so too.
  const article = $("article", card.node);
  article.tabIndex = -1;
  article.scrollIntoView({ block: "nearest" });
  article.focus({ preventScroll: true });
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
      if (data.preview) this.showForming(stage, data);
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
    if (TERMINAL.includes(status) && status !== "succeeded") this.endForming();
    if (status === "succeeded" && !this.resultShown) {
      this.resultShown = true;
      this.showResult(view);
    }
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

  showForming(stage, data) {
    // The sampler's current estimate, a small WebP data URL on a few progress events per stage
    // (a tiled stage's is its current tile), replaced by each newer one until the result shows.
    const figure = $(".live-preview", this.node);
    const img = $("img", figure);
    img.src = data.preview;
    img.alt = `Live preview of stage ${stage.name} at step ${data.step} of ${data.steps}`;
    $("figcaption", figure).textContent = `Forming: ${stage.name}, step ${data.step} of ${data.steps}`;
    figure.hidden = false;
  }

  endForming() {
    const figure = $(".live-preview", this.node);
    figure.hidden = true;
    const img = $("img", figure);
    img.removeAttribute("src");
    img.alt = "";
    $("figcaption", figure).textContent = "";
  }

  async showResult(view) {
    let blob;
    try {
      blob = await api(view.result);
    } catch (error) {
      this.endForming();
      this.showError(error.message);
      return;
    }
    const url = URL.createObjectURL(blob);
    const download = $(".download", this.node);
    download.href = url;
    const extension = { png: "png", webp: "webp", jpeg: "jpg" }[view.request.format] || "png";
    download.download = `cascade-${this.id}.${extension}`;
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
      this.endForming();
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
    this.endForming();
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
    const removed = [this.id, ...removedIds()].slice(0, 4 * KEEP_JOBS);
    localStorage.setItem(REMOVED_KEY, JSON.stringify(removed));
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

function entryFromView(view) {
  // A job this browser did not start (another browser, curl): described from its view.
  const request = view.request;
  const title =
    view.kind === "generation"
      ? `Generate ${request.class_name ?? request.class_id}, ${request.size} px`
      : `Upscale ${request.filename ?? "an image"} → ${size(view.output.width, view.output.height)}`;
  const created = Date.parse(view.created_at ?? "");
  return {
    id: view.id,
    kind: view.kind,
    title,
    created: Number.isNaN(created) ? Date.now() : created,
    seed: view.seed,
    request,
    filename: request.filename,
  };
}

export async function restoreJobs() {
  try {
    // The service's list (the key's own jobs, newest first) is the truth: jobs made elsewhere
    // appear, expired ones go; this browser's entries keep their titles and inputs.
    const listed = await api(`/v1/jobs?limit=${KEEP_JOBS}`);
    const known = new Map(entries.map((entry) => [entry.id, entry]));
    const started = entries.filter((entry) => cards.has(entry.id)); // submitted meanwhile
    const removed = new Set(removedIds());
    const served = listed.jobs
      .filter((view) => !cards.has(view.id) && !removed.has(view.id))
      .map((view) => known.get(view.id) ?? entryFromView(view));
    entries = [...started, ...served];
    saveEntries();
  } catch {
    // the service cannot list now: show the jobs this browser remembers
  }
  const list = $("#jobs");
  const restored = [];
  for (const entry of entries) {
    if (cards.has(entry.id)) continue;
    const card = new JobCard(entry);
    cards.set(entry.id, card);
    list.append(card.node);
    restored.push(card);
  }
  $("#no-jobs").hidden = entries.length > 0;
  for (const card of restored) card.start();
}
