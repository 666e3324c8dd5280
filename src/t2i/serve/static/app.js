// The t2i page: a form that posts jobs to /api/jobs and follows them over server-sent events.
// Plain browser JavaScript, no build step and nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);

// ---- Talking to the server -------------------------------------------------------------------

// A token given once as ?token=T is remembered, so bookmarks need not carry it; it is taken out of
// the address bar so that it does not end up in screenshots or shared links.
const TOKEN_KEY = "t2i-token";
const token = (() => {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    localStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url);
  }
  return given || localStorage.getItem(TOKEN_KEY);
})();

// EventSource and <img> cannot send headers, so they carry the token in the query instead.
function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

// fetch() that sends JSON and the token, and throws the server's one-line {"detail"} as an Error.
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new Error("cannot reach the t2i server; is it still running?");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status line below says what there is to say
  }
  if (!response.ok) {
    const error = new Error((data && data.detail) || `${response.status} ${response.statusText}`);
    error.limit = data && data.limit;  // a limit's name is in the detail too; kept for the error's title
    error.status = response.status;  // some answers are expected, as a 409 for a job that ended meanwhile
    throw error;
  }
  return data;
}

function showError(error) {
  $("error-text").textContent = error.message || String(error);
  $("error").title = error.limit ? `the server's limit ${error.limit}` : "";
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

// A small element builder, so that every piece of user text goes in as text, never as HTML.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// The base64 payload of a data: URL (the API takes bare base64).
const base64 = (dataUrl) => dataUrl.slice(dataUrl.indexOf(",") + 1);

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// ---- State -------------------------------------------------------------------------------------

const ENDED = ["done", "failed", "cancelled"];  // a job's terminal states, and its stream's last events

const state = {
  models: [],
  limits: {},  // /api/limits: the page checks a size before posting it, so img2img never scales to a refused one
  samplers: [],  // without "Model default": the <select>'s value is an index here, "" for the default
  mine: [],  // ids of jobs this page follows, oldest first; one is watched at a time
  watching: null,  // {id, source}
  lastSeed: null,
  init: null,  // the img2img start image, at its own size (a canvas), scaled to width × height when sent
  maskPainted: false,
  historyOffset: 0,
};

// ---- The form ----------------------------------------------------------------------------------

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function samplerLabel(sampler, spacing) {
  const entry = state.samplers.find((s) => s.sampler === sampler && (s.spacing ?? null) === (spacing ?? null))
    || state.samplers.find((s) => s.sampler === sampler && s.spacing == null);
  return entry ? entry.label : [sampler, spacing].filter(Boolean).join(" ");
}

// The closest menu entry to a sampler and spacing read from a job or a PNG (the spacing a job
// reports is the one that ran, which a menu entry without a spacing of its own may stand for).
function selectSampler(sampler, spacing) {
  const list = state.samplers;
  let i = list.findIndex((s) => s.sampler === sampler && (s.spacing ?? null) === (spacing ?? null));
  if (i < 0) i = list.findIndex((s) => s.sampler === sampler && s.spacing == null);
  if (i < 0) i = list.findIndex((s) => s.sampler === sampler);
  $("sampler").value = i < 0 ? "" : String(i);
}

// The menu entry of the sampler a job would run: the one chosen, else the model's default.
function samplerThatRuns() {
  const choice = state.samplers[$("sampler").value];
  if (choice) return choice;
  const model = currentModel();
  const inference = (model && model.inference) || {};
  return state.samplers.find((s) => s.sampler === inference.sampler && (s.spacing ?? null) === (inference.spacing ?? null))
    || state.samplers.find((s) => s.sampler === inference.sampler) || null;
}

// AUTOMATIC1111's Eta for a sampler that takes one (DDIM, Euler a, ...), its Clip skip for a model
// that reads a CLIP text encoder (or may: `clip` is null where the server cannot tell before loading).
function showSamplerOptions() {
  const sampler = samplerThatRuns();
  const model = currentModel();
  $("eta-field").hidden = !(sampler && sampler.eta);
  $("clip-skip-field").hidden = Boolean(model) && model.clip === false;
  $("sampler-options").hidden = $("eta-field").hidden && $("clip-skip-field").hidden;
}

// A model brings its own size and inference settings; the form starts from them.
function applyModelDefaults() {
  const model = currentModel();
  if (!model) return;
  const inference = model.inference || {};
  const [width, height] = state.init ? fitSize(state.init.width, state.init.height) : [model.image_size, model.image_size];
  $("width").value = width;
  $("height").value = height;
  for (const id of ["width", "height"]) $(id).step = $(id).min = model.size_multiple || 8;
  if (inference.steps != null) $("steps").value = inference.steps;
  if (inference.cfg != null) $("cfg").value = inference.cfg;
  $("sampler").options[0].textContent = inference.sampler
    ? `Default (${samplerLabel(inference.sampler, inference.spacing)})` : "Model default";
  $("sampler").value = "";
  // a distilled student runs a call for its steps at the default sampler and cfg: one network call a step
  const students = model.students || [];
  $("students-hint").hidden = students.length === 0;
  $("students-hint").textContent = students.length ? `(${students.join(", ")}: distilled, fast)` : "";
  const either = students.length > 1 ? `${students.slice(0, -1).join(", ")} or ${students.at(-1)}` : `${students[0]}`;
  $("students-hint").title = students.length
    ? `${either} steps with the default sampler and CFG run the model's distilled student: ` +
      "one network call a step, no guidance pass" : "";
  showSamplerOptions();
}

// A field's name as its label shows it, without the hint beside it ("Seed", not "Seed (−1 random)").
function fieldName(id) {
  const label = document.querySelector(`label[for="${id}"]`);
  return label ? label.firstChild.textContent.trim() : id;
}

function readForm() {
  const number = (id) => {
    // a number field whose text the browser cannot read ("7,5" in a "." locale) gives "": say so, not the default
    if ($(id).validity && $(id).validity.badInput) {
      throw new Error(`${fieldName(id)} is not a number the page can read: type digits, with "." for decimals`);
    }
    const text = $(id).value.trim();
    return text === "" ? null : Number(text);
  };
  const choice = state.samplers[$("sampler").value];
  const seed = number("seed");
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value,
    model: $("model").value || null,
    sampler: choice ? choice.sampler : null,
    spacing: choice ? choice.spacing : null,
    steps: number("steps"),
    cfg: number("cfg"),
    seed: seed === null || seed < 0 ? null : seed,
    width: number("width"),
    height: number("height"),
    num_images: number("num") ?? 1,
    image: null,
    mask: null,
    strength: null,
  };
  if (state.init) {  // an edited image keeps its size: the image and its mask are sent at width × height
    const [width, height] = [body.width, body.height].every((side) => side > 0)
      ? [body.width, body.height] : fitSize(state.init.width, state.init.height);
    [body.width, body.height] = [width, height];  // the size it is sent at, or the server refuses the mismatch
    body.image = pngAt(state.init, width, height);
    body.strength = Number($("strength").value);
    if (state.maskPainted) body.mask = pngAt($("mask-canvas"), width, height, "#000");  // white on black
  }
  // sent only where they apply: the server refuses an eta to a sampler without one
  const eta = number("eta");
  if (!$("eta-field").hidden && eta !== null) body.eta = eta;
  const clipSkip = number("clip-skip");
  if (!$("clip-skip-field").hidden && clipSkip > 1) body.clip_skip = clipSkip;
  return body;
}

// The plain fields are kept across a reload (the model's own defaults are applied first, then these).
const FORM_KEY = "t2i-form";
const SAVED_FIELDS = ["prompt", "negative", "steps", "cfg", "sampler", "width", "height", "seed", "num", "strength", "eta",
  "clip-skip"];

function saveForm() {
  const fields = Object.fromEntries(SAVED_FIELDS.map((id) => [id, $(id).value]));
  localStorage.setItem(FORM_KEY, JSON.stringify({ ...fields, model: $("model").value }));
}

function restoreForm() {
  let saved;
  try {
    saved = JSON.parse(localStorage.getItem(FORM_KEY)) || {};
  } catch {
    return;  // written by another version of the page: the model's defaults stand
  }
  // the model first: the saved size, steps and cfg were that model's, applied over its defaults
  if (typeof saved.model === "string" && saved.model !== $("model").value &&
      state.models.some((m) => m.id === saved.model)) {
    $("model").value = saved.model;
    applyModelDefaults();
  }
  for (const id of SAVED_FIELDS) {
    if (typeof saved[id] !== "string") continue;
    // a sampler menu that has changed since keeps its default rather than showing a blank choice
    if (id === "sampler" && ![...$(id).options].some((option) => option.value === saved[id])) continue;
    $(id).value = saved[id];
  }
  showStrength();
  showNetworks();
  showSamplerOptions();
}

// Width and height in the model's multiples, and within the server's pixels per image, checked here:
// img2img scales its image to this size before posting, so a size the server refuses must not get that far.
function checkSize() {
  const model = currentModel();
  const multiple = (model && model.size_multiple) || 8;
  const sides = ["width", "height"].map((id) => {
    const text = $(id).value.trim();
    if (text === "") return null;  // the model's own size
    const side = Math.max(multiple, Math.round(Number(text) / multiple) * multiple);
    if (Number.isFinite(side)) $(id).value = side;
    return side;
  });
  const [width, height] = sides;
  const max = state.limits.max_pixels;
  if (width && height && max && width * height > max) {
    const error = new Error(`${width}×${height} is ${width * height} pixels, more than this server's max_pixels ` +
      `of ${max}: make the image smaller`);
    error.limit = "max_pixels";
    throw error;
  }
}

// Fill the form from a job's settings or a PNG's parameters (which give size as [H, W]); what
// they leave out, or give in another shape (a figure's lists of prompts and scales), stays as it is.
function applySettings(settings) {
  const set = (id, value, type = "number") => {
    if (typeof value === type) $(id).value = value;
  };
  if (settings.model && settings.model !== $("model").value && state.models.some((m) => m.id === settings.model)) {
    $("model").value = settings.model;
    applyModelDefaults();
  }
  set("prompt", settings.prompt, "string");
  if (typeof settings.prompt === "string" && settings.loras && typeof settings.loras === "object") {
    // the image's prompt was stored without its <lora:…> tags (the server read them out): put back those of
    // this server's LoRAs, so that the same image is made again
    const known = [...$("lora-list").children].map((chip) => chip.dataset.name);
    const tags = Object.entries(settings.loras).filter(([name, scale]) => known.includes(name) &&
      typeof scale === "number").map(([name, scale]) => `<lora:${name}:${scale}>`);
    if (tags.length) $("prompt").value = [settings.prompt.trimEnd(), ...tags].filter(Boolean).join(" ");
  }
  set("negative", settings.negative_prompt, "string");
  set("steps", settings.steps);
  set("cfg", settings.cfg);
  set("seed", settings.seed);
  const [height, width] = Array.isArray(settings.size) ? settings.size : [settings.height, settings.width];
  set("width", width);
  set("height", height);
  set("num", settings.num_images);
  if (typeof settings.sampler === "string") selectSampler(settings.sampler, settings.spacing);
  if (typeof settings.prompt === "string") {  // one image's settings: they name eta and clip skip only when set
    $("eta").value = typeof settings.eta === "number" ? settings.eta : "";
    $("clip-skip").value = Number.isInteger(settings.clip_skip) ? settings.clip_skip : 1;
  }
  showSamplerOptions();
  if (typeof settings.strength === "number") {
    $("strength").value = settings.strength;
    showStrength();
  }
  showNetworks();
  saveForm();
}

// A job's settings with what the request left to the model filled in: from the image's own
// parameters once there is one (they say what ran), else from the model's defaults.
function effective(job, index = 0) {
  const settings = { ...job.settings };
  const ran = job.images[index] && job.images[index].parameters;
  if (ran) {
    for (const key of ["sampler", "spacing", "steps", "cfg", "seed", "strength", "eta", "clip_skip"]) {
      settings[key] = ran[key] ?? settings[key];
    }
    if (ran.size) [settings.height, settings.width] = ran.size;
  } else {
    const model = state.models.find((m) => m.id === settings.model);
    const defaults = (model && model.inference) || {};
    for (const key of ["sampler", "spacing", "steps", "cfg"]) settings[key] = settings[key] ?? defaults[key] ?? null;
  }
  return settings;
}

function describe(settings) {
  const size = settings.width && settings.height ? `${settings.width}×${settings.height}` : "model size";
  const parts = [size, samplerLabel(settings.sampler, settings.spacing),
    `${settings.steps} steps`, `cfg ${settings.cfg}`, `seed ${settings.seed}`];
  if (typeof settings.eta === "number") parts.push(`eta ${settings.eta}`);
  if (settings.clip_skip > 1) parts.push(`clip skip ${settings.clip_skip}`);
  if (settings.kind && settings.kind !== "txt2img") parts.push(`${settings.kind} ${settings.strength ?? ""}`.trim());
  return parts.join(" · ");
}

const showStrength = () => { $("strength-value").textContent = $("strength").value; };

// ---- img2img and the inpainting mask -----------------------------------------------------------

// A size of the start image's shape with about as many pixels as the model makes, in its multiples:
// a photo's thousands of pixels would be far too many for a small model.
function fitSize(width, height) {
  const model = currentModel();
  const multiple = (model && model.size_multiple) || 8;
  const scale = ((model && model.image_size) || 512) / Math.sqrt(width * height);
  return [width, height].map((side) => Math.max(multiple, Math.round((side * scale) / multiple) * multiple));
}

// A picture (image or canvas) as base64 PNG of a given size, on a background where it is transparent.
function pngAt(source, width, height, background = null) {
  const canvas = el("canvas", { width, height });
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  if (background) {
    ctx.fillStyle = background;
    ctx.fillRect(0, 0, width, height);
  }
  ctx.drawImage(source, 0, 0, width, height);
  return base64(canvas.toDataURL("image/png"));
}

async function loadInitImage(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    URL.revokeObjectURL(url);
    showError(new Error(`${file.name} is not an image this browser can read`));
    return;
  }
  removeInitImage();
  // Kept at its own size, so that a change of model or size scales from the original, not a copy.
  state.init = el("canvas", { width: image.naturalWidth, height: image.naturalHeight });
  state.init.getContext("2d").drawImage(image, 0, 0);
  $("init-preview").src = url;
  // The mask is painted at the image's shape, finely enough for a brush, and scaled with it when sent.
  const mask = $("mask-canvas");
  const scale = Math.min(1, 1024 / Math.max(image.naturalWidth, image.naturalHeight));
  mask.width = Math.round(image.naturalWidth * scale);
  mask.height = Math.round(image.naturalHeight * scale);
  clearMask();
  [$("width").value, $("height").value] = fitSize(image.naturalWidth, image.naturalHeight);
  $("edit-area").hidden = false;
}

function removeInitImage() {
  if ($("init-preview").src) URL.revokeObjectURL($("init-preview").src);
  state.init = null;
  clearMask();
  $("init-preview").removeAttribute("src");
  $("edit-area").hidden = true;
}

function clearMask() {
  const mask = $("mask-canvas");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  state.maskPainted = false;
}

function setupBrush() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let last = null;
  // The canvas is shown larger than its pixels; the brush is sized in screen pixels, as it is seen.
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  };
  const paint = (from, to) => {
    const width = Number($("brush").value) * to.scale;
    ctx.fillStyle = ctx.strokeStyle = "#fff";
    ctx.lineWidth = width;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.arc(to.x, to.y, width / 2, 0, 2 * Math.PI);  // a click alone leaves a dot too
    ctx.fill();
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    state.maskPainted = true;
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    paint(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const point = at(event);
    paint(last, point);
    last = point;
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
}

// ---- Jobs: submit, follow, cancel --------------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  if ($("generate").disabled) return;  // Ctrl+Enter reaches here too, past the disabled button
  hideError();
  $("generate").disabled = true;  // a second click while the POST is in flight would queue the job twice
  try {
    checkSize();
    saveForm();
    const job = await api("/api/jobs", { method: "POST", body: readForm() });
    state.mine.push(job.id);
    followNext();
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
  }
  refreshQueue();
}

function setProgress(step, steps, text) {
  $("progress").max = Math.max(steps, 1);
  $("progress").value = step;
  $("progress-text").textContent = text;
}

// One event stream at a time: a browser opens only ~6 connections to a server over HTTP/1.1, so
// a stream per queued job would starve the page's other requests. The queue list shows the rest.
function followNext() {
  if (state.watching || state.mine.length === 0) return;
  const id = state.mine[0];
  const source = new EventSource(withToken(`/api/jobs/${id}/events`));
  state.watching = { id, source };
  $("cancel").disabled = false;
  setProgress(0, 1, "waiting");
  source.addEventListener("queued", (event) => {
    setProgress(0, 1, `queued, position ${JSON.parse(event.data).position}`);
  });
  source.addEventListener("started", () => setProgress(0, 1, "started"));
  source.addEventListener("progress", (event) => {
    const { step, steps, preview } = JSON.parse(event.data);
    setProgress(step, steps, `step ${step} / ${steps}`);
    if (preview) $("preview").src = preview;
  });
  for (const end of ENDED) {
    source.addEventListener(end, (event) => finished(JSON.parse(event.data)));
  }
  source.onerror = () => {
    // EventSource retries a dropped connection by itself; it gives up (CLOSED) only on an HTTP
    // error, and then the job itself says whether it ended, is unknown, or is refused to us.
    if (source.readyState !== EventSource.CLOSED || state.watching?.source !== source) return;
    api(`/api/jobs/${id}`).then((job) => {
      if (ENDED.includes(job.state)) {
        finished(job);
      } else {  // still waiting or running: follow it again shortly
        state.watching = null;
        setTimeout(followNext, 2000);
      }
    }, (error) => {
      if (error.status === 404 || error.status === 403) {  // unknown, or not ours: the others are still to follow
        showError(error);
        forget(id);
        followNext();
      } else {  // the server is restarting or out of reach: try the same job again shortly
        state.watching = null;
        setTimeout(followNext, 5000);
      }
    });
  };
}

function forget(id) {
  if (state.watching?.id === id) {
    state.watching.source.close();
    state.watching = null;
  }
  state.mine = state.mine.filter((other) => other !== id);
  $("cancel").disabled = state.mine.length === 0;
}

// A terminal event's job, or a job found ended some other way.
function finished(job) {
  forget(job.id);
  addToHistory(job);
  if (job.images.length) showResult(job);  // a job interrupted through /sdapi ends cancelled with its images
  if (job.state === "done") {
    setProgress(1, 1, "done");
  } else {
    setProgress(0, 1, job.state);
    if (job.state === "failed") showError(new Error(job.error || "the job failed"));
  }
  $("preview").removeAttribute("src");
  refreshQueue();
  followNext();
}

async function cancelJob(id) {
  $("cancel").disabled = true;  // one request at a time: a second would only meet a job already stopping
  try {
    const job = await api(`/api/jobs/${id}`, { method: "DELETE" });
    if (job.state === "cancelled") {
      // The watched job's stream ends by itself; a job waiting its turn here has no stream yet.
      if (state.watching?.id !== id) forget(id);
      addToHistory(job);
    } else if (state.watching?.id === id) {
      setProgress($("progress").value, $("progress").max, "cancelling…");
    }
  } catch (error) {
    if (error.status === 409) await jobEndedMeanwhile(id);  // it ended before the request came: no error
    else showError(error);
  } finally {
    $("cancel").disabled = state.mine.length === 0;
  }
  refreshQueue();
}

// A job found ended when the page asked to cancel it: shown as ended, as its stream would have.
async function jobEndedMeanwhile(id) {
  try {
    const job = await api(`/api/jobs/${id}`);
    if (!ENDED.includes(job.state)) return;
    if (state.mine.includes(id)) finished(job);
    else addToHistory(job);
  } catch {
    // gone from the store too: the queue poll shows what there is
  }
}

function showResult(job, only = null) {
  const indices = only === null ? job.images.map((_, i) => i) : [only];
  $("result").replaceChildren(...indices.map((i) => el("img", {
    src: withToken(job.images[i].url), alt: job.settings.prompt, title: `seed ${job.images[i].seed}`,
  })));
  const settings = effective(job, indices[0]);
  $("result-info").textContent = `${settings.prompt} — ${describe(settings)}`;
  state.lastSeed = settings.seed;
}

// ---- The queue ---------------------------------------------------------------------------------

let queueRequest = 0;

async function refreshQueue() {
  const request = ++queueRequest;
  let data;
  try {
    data = await api("/api/queue");
  } catch {
    return;  // the next poll tries again; an error here would repeat every two seconds
  }
  if (request !== queueRequest) return;  // a later answer is on its way, or already shown
  const focused = document.activeElement?.closest?.("#queue li")?.dataset.jobId;
  $("queue").replaceChildren(...data.jobs.map((job) => {
    const where = job.state === "running" ? (job.cancel_requested ? "stopping" : "running") : `#${job.position}`;
    const item = el("li", { dataset: { jobId: job.id }, className: job.state },
      el("span", { className: "where", textContent: where }),
      el("span", { className: "what", textContent: job.settings.prompt || "(no prompt)", title: describe(effective(job)) }),
      el("button", {
        type: "button", className: "cancel-job", textContent: "Cancel", disabled: job.cancel_requested,
        onclick: () => {
          // Marked at once, so a click is seen to land before the server's answer.
          item.querySelector(".where").textContent = "cancelling";
          item.querySelector("button").disabled = true;
          cancelJob(job.id);
        },
      }));
    return item;
  }));
  if (focused) {  // rebuilt every 2 s: a keyboard user's focus stays on the job's button
    $("queue").querySelector(`[data-job-id="${CSS.escape(focused)}"] button`)?.focus();
  }
}

// ---- History -----------------------------------------------------------------------------------

// One card per ended job, newest first, replaced in place when the same job comes again.
function addToHistory(job) {
  if (!ENDED.includes(job.state)) return;
  const settings = effective(job);
  const card = el("div", { className: `card ${job.state}`, dataset: { jobId: job.id, created: job.created } },
    // a button around each thumbnail, so that the keyboard reaches it as a mouse does
    el("div", { className: "thumbs" }, ...job.images.map((image, i) => el("button", {
      type: "button", className: "thumb", title: `seed ${image.seed}`, onclick: () => showResult(job, i),
    }, el("img", { src: withToken(image.url), alt: settings.prompt, loading: "lazy" })))),
    el("div", { className: "prompt", textContent: settings.prompt || "(no prompt)" }),
    settings.negative_prompt ? el("div", { className: "meta", textContent: `not: ${settings.negative_prompt}` }) : null,
    el("div", { className: "meta", textContent: describe(settings) }),
    el("div", { className: "meta" }, el("span", { className: "state", textContent: job.state }),
      ` · ${settings.model} · ${settings.kind}`),
    job.error ? el("div", { className: "meta", textContent: job.error }) : null,
    el("button", { type: "button", className: "use-settings", textContent: "Use these settings",
      onclick: () => applySettings(settings) }));
  const list = $("history");
  const old = list.querySelector(`[data-job-id="${CSS.escape(job.id)}"]`);
  if (old) {
    old.replaceWith(card);
    return;
  }
  const after = [...list.children].find((other) => Number(other.dataset.created) < job.created);
  list.insertBefore(card, after || null);
}

async function loadHistory() {
  if (state.loadingHistory) return;  // a second click before the first page came would skip a page
  state.loadingHistory = true;
  $("history-more").disabled = true;
  try {
    const data = await api(`/api/jobs?limit=20&offset=${state.historyOffset}`);
    data.jobs.forEach(addToHistory);
    state.historyOffset += data.jobs.length;
    $("history-more").hidden = state.historyOffset >= data.total;
  } catch (error) {
    showError(error);
  } finally {
    state.loadingHistory = false;
    $("history-more").disabled = false;
  }
}

// ---- PNG info ----------------------------------------------------------------------------------

async function readPngInfo(file) {
  if (!file) return;
  hideError();
  try {
    const info = await api("/api/png-info", { method: "POST", body: { image: base64(await readAsDataUrl(file)) } });
    const parameters = info.parameters || {};
    const text = info.infotext || (Object.keys(parameters).length ? JSON.stringify(parameters, null, 2) : "");
    $("pnginfo-text").textContent = text || `${file.name} carries no generation parameters`;
    $("pnginfo-text").hidden = false;
    applySettings(parameters);
    if (parameters.model && !state.models.some((m) => m.id === parameters.model)) {
      $("pnginfo-text").textContent += `\n\n(model ${parameters.model} is not on this server: the form keeps its own)`;
    }
  } catch (error) {
    showError(error);
  }
}

// ---- LoRA and embeddings ------------------------------------------------------------------------

// AUTOMATIC1111's extra networks: a LoRA goes into the prompt as <lora:name:weight>, an embedding as
// its word; the server reads both out of the prompt, so the page only writes them.
const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const LORA_TAG = /\s*<lora:([^:<>]*)(?::[^<>]*)?>/g;  // the server's pattern (metadata.LORA_TAG)
const wordPattern = (word) => new RegExp(`(^|[\\s,()])${escapeRegExp(word)}(?=$|[\\s,()])`, "i");

// The prompt with `name`'s tag taken out if it has one, else with the tag added at the end.
function toggleLora(prompt, name) {
  let found = false;
  const without = prompt.replace(LORA_TAG, (tag, tagName) => {
    if (tagName.trim() !== name) return tag;
    found = true;
    return "";
  });
  if (found) return without.trim();
  const weight = Number($("lora-weight").value);
  const tag = `<lora:${name}:${Number.isFinite(weight) ? weight : 1}>`;
  return prompt.trim() ? `${prompt.trimEnd()} ${tag}` : tag;
}

// The prompt with the embedding's word taken out if it is there, else with it added at the end.
function toggleWord(prompt, word) {
  const pattern = wordPattern(word);
  if (pattern.test(prompt)) {  // and the comma that separated it, if it leaves two in a row or one at an end
    return prompt.replace(pattern, "$1").replace(/\s*,(\s*,)+/g, ",").replace(/^[\s,]+|[\s,]+$/g, "")
      .replace(/[ \t]{2,}/g, " ");
  }
  return prompt.trim() ? `${prompt.trimEnd()}, ${word}` : word;
}

function showNetworks() {
  const prompt = $("prompt").value;
  const names = (tagged) => Array.from(prompt.matchAll(LORA_TAG), (m) => m[1].trim()).includes(tagged);
  const mark = (chip, on) => {
    chip.classList.toggle("on", on);
    chip.setAttribute("aria-pressed", String(on));
  };
  for (const chip of $("lora-list").children) mark(chip, names(chip.dataset.name));
  for (const chip of $("embedding-list").children) mark(chip, wordPattern(chip.dataset.name).test(prompt));
}

function chip(name, kind, toggle) {
  return el("button", {
    type: "button", className: `chip ${kind}`, textContent: name, title: kind === "lora"
      ? `LoRA ${name}: adds <lora:${name}:weight> to the prompt` : `embedding ${name}: adds its word to the prompt`,
    dataset: { name },
    onclick: () => {
      $("prompt").value = toggle($("prompt").value, name);
      showNetworks();
    },
  });
}

async function loadNetworks(refresh = false) {
  try {
    if (refresh) await api("/sdapi/v1/refresh-loras", { method: "POST" });  // reads both folders again
    const [loras, embeddings] = await Promise.all([api("/api/loras"), api("/api/embeddings")]);
    $("lora-list").replaceChildren(...loras.loras.map((name) => chip(name, "lora", toggleLora)));
    $("embedding-list").replaceChildren(...embeddings.embeddings.map((name) => chip(name, "embedding", toggleWord)));
    $("networks").hidden = !loras.loras.length && !embeddings.embeddings.length;
    showNetworks();
  } catch (error) {
    showError(error);
  }
}

// ---- Start -------------------------------------------------------------------------------------

function wire() {
  $("form").addEventListener("submit", generate);
  for (const type of ["input", "change"]) $("form").addEventListener(type, saveForm);
  // Ctrl+Enter (Cmd+Enter on a Mac) in a prompt generates, as in AUTOMATIC1111's web UI
  for (const id of ["prompt", "negative"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("form").requestSubmit();
      }
    });
  }
  $("model").addEventListener("change", applyModelDefaults);
  $("sampler").addEventListener("change", showSamplerOptions);
  $("error-close").addEventListener("click", hideError);
  $("cancel").addEventListener("click", () => state.mine.length && cancelJob(state.watching?.id ?? state.mine[0]));
  $("seed-random").addEventListener("click", () => { $("seed").value = -1; saveForm(); });
  $("seed-reuse").addEventListener("click", () => {
    if (state.lastSeed !== null) $("seed").value = state.lastSeed;
    saveForm();
  });
  $("init-image").addEventListener("change", (event) => loadInitImage(event.target.files[0]));
  $("init-remove").addEventListener("click", () => {
    removeInitImage();
    $("init-image").value = "";
    const model = currentModel();
    if (model) $("width").value = $("height").value = model.image_size;
  });
  $("mask-clear").addEventListener("click", clearMask);
  $("strength").addEventListener("input", showStrength);
  const showBrush = () => { $("brush-value").textContent = `${$("brush").value}px`; };
  $("brush").addEventListener("input", showBrush);
  showBrush();
  showStrength();
  setupBrush();
  $("history-more").addEventListener("click", loadHistory);
  $("prompt").addEventListener("input", showNetworks);
  $("networks-refresh").addEventListener("click", () => loadNetworks(true));

  $("pnginfo-file").addEventListener("change", (event) => {
    readPngInfo(event.target.files[0]);
    event.target.value = "";  // else choosing the same file again fires no change
  });
  const drop = $("pnginfo-drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    readPngInfo(event.dataTransfer.files[0]);
  });
  // A file dropped beside the drop zone would otherwise replace the page (and lose the form).
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
}

async function start() {
  wire();
  try {
    const [models, samplers, limits] = await Promise.all(
      [api("/api/models"), api("/api/samplers"), api("/api/limits")]);
    state.models = models.models;
    state.samplers = samplers.samplers;
    state.limits = limits;
    $("model").replaceChildren(...state.models.map((m) => el("option", { value: m.id, textContent: m.id })));
    $("model").value = models.default;
    $("sampler").append(...state.samplers.map((s, i) => el("option", { value: String(i), textContent: s.label })));
    $("steps").max = limits.max_steps;
    $("num").max = limits.max_images;
    applyModelDefaults();
    restoreForm();
  } catch (error) {
    showError(error);
  }
  loadNetworks();
  loadHistory();
  // A local lab has one person at it: after a reload the page follows the jobs still queued.
  try {
    const queue = await api("/api/queue");
    state.mine.push(...queue.jobs.map((job) => job.id));
    followNext();
  } catch {
    // the queue poll below shows the server's state, or keeps trying
  }
  refreshQueue();
  setInterval(() => { if (!document.hidden) refreshQueue(); }, 2000);
}

start();
