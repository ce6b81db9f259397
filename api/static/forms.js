// The two forms: generate and upscale, each quoted (dry_run) as it changes, and the choices
// and limits the service announces.

import { api } from "./api.js";
import { $, $$, announce } from "./dom.js";
import { number, seconds, size, work } from "./format.js";
import { addJob } from "./jobs.js";

const QUOTE_DELAY_MS = 350;

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

function quoter(target, build, send, errorTarget, onQuote = () => {}) {
  // `onQuote(quote)` after each answer (null: no quote); an answer means the input is now
  // valid, so an error left from an earlier submit goes.
  let controller = null;
  return debounce(async () => {
    const request = build();
    if (!request) {
      $(target).replaceChildren();
      onQuote(null);
      return;
    }
    controller?.abort();
    controller = new AbortController();
    try {
      const quote = await send(request, true, controller.signal);
      showQuote(target, quote);
      $(errorTarget).textContent = "";
      onQuote(quote);
    } catch (error) {
      if (error.name === "AbortError") return;
      quoteError(target, error.message);
      onQuote(null);
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

// The file format (both forms): png is sent as the default it is, a lossy one with its quality.

function formatOf(prefix) {
  const format = $(`#${prefix}-format`).value;
  if (format === "png") return {};
  const quality = optionalInt($(`#${prefix}-quality`));
  return quality === undefined ? { format } : { format, quality };
}

function setUpFormat(prefix) {
  const format = $(`#${prefix}-format`);
  format.addEventListener("change", () => {
    $(`#${prefix}-quality`).disabled = format.value === "png";
  });
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
  Object.assign(request, formatOf("gen"));
  return request;
}

function sendGeneration(request, dryRun = false, signal = undefined) {
  return api("/v1/generations", { method: "POST", json: dryRun ? { ...request, dry_run: true } : request, signal });
}

function setUpGenerate() {
  const form = $("#generate");
  const quote = quoter("#gen-quote", generationRequest, sendGeneration, "#gen-error");
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
let quoted = null; // the service's latest quote for it: the planned output is the quote's

function upscaleMode() {
  return $("input[name=up-mode]:checked").value;
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
  let text = `Input ${size(chosen.width, chosen.height)}`;
  if (quoted) {
    const { width, height } = quoted.output;
    text += ` → output ${size(width, height)} (${quoted.request.scale}× model upscale)`;
  } else {
    text += " → output: see the quote below";
  }
  if (limits && chosen.width * chosen.height > limits.max_input_pixels) {
    text += ` · over the input limit of ${number.format(limits.max_input_pixels)} pixels`;
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
  const lowBand = $("#up-low-band").value;
  if (lowBand) fields.low_band = lowBand;
  Object.assign(fields, formatOf("up"));
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
  quoted = null;
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
  const quote = quoter("#up-quote", upscaleRequest, sendUpscale, "#up-error", (answer) => {
    quoted = answer;
    showSizes();
  });
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
      quoted = null; // until the service quotes the changed request
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
      const output = quoted?.output;
      const to = output ? ` → ${size(output.width, output.height)}` : "";
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

// Seeds, and the choices the service announces

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

export async function loadChoices() {
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
    for (const band of limits.low_bands) $("#up-low-band").append(new Option(band, band));
    for (const id of ["#gen-quality", "#up-quality"]) $(id).value = String(limits.default_quality);
    for (const id of ["#gen-steps", "#up-steps"]) $(id).max = String(limits.max_steps);
    const defaults = Object.entries(limits.defaults)
      .map(([stage, run]) => `${stage} ${run.steps} ${run.sampler}`)
      .join(", ");
    $("#gen-steps-hint").textContent = `1 to ${limits.max_steps}, for every stage. The service's defaults: ${defaults}.`;
    $("#up-steps-hint").textContent =
      `1 to ${limits.max_steps}. 1 is the fastest: a stage with a distilled student runs it in ` +
      `one network call. The service's defaults: ${defaults}.`;
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

export function setUpForms() {
  setUpSeed("gen");
  setUpSeed("up");
  setUpFormat("gen");
  setUpFormat("up");
  setUpGenerate();
  setUpUpscale();
}
