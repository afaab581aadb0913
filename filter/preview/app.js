// rerender preview page: builds the settings form from /settings, starts runs, shows /status.
// Validation happens on the server with `rerender run`'s own parser; the page only shows its sentence.
"use strict";

const $ = (id) => document.getElementById(id);
let fields = [];
let lastRunId = -1;
let lastKeyframes = -1;
let currentStage = "first-keyframe";

function fieldId(flag) {
  return "field-" + flag.replace(/^-+/, "");
}

function buildForm(settings) {
  $("input-name").textContent = settings.input;
  $("fast-note").textContent = `(size ≤ ${settings.fast.size}, steps ≤ ${settings.fast.steps}; the file uses the full settings)`;
  fields = settings.fields;
  const box = $("fields");
  for (const f of fields) {
    const label = document.createElement("label");
    label.textContent = f.label;
    label.title = f.help || "";
    if (f.fixed) label.title += " (set on the rerender preview command line: keep it or clear it)";
    let input;
    if (f.choices) {
      input = document.createElement("select");
      const none = document.createElement("option");
      none.value = "";
      none.textContent = f.default ? `default (${f.default})` : "default";
      input.appendChild(none);
      for (const c of f.choices) {
        const o = document.createElement("option");
        o.value = c;
        o.textContent = c;
        input.appendChild(o);
      }
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.spellcheck = false;
      input.placeholder = f.default ? `default ${f.default}` : "";
    }
    input.id = fieldId(f.flag);
    input.dataset.flag = f.flag;
    input.value = settings.values[f.flag] ?? "";
    label.appendChild(input);
    box.appendChild(label);
  }
  $("extra").value = settings.extra;
}

function formSettings() {
  const values = {};
  for (const f of fields) values[f.flag] = $(fieldId(f.flag)).value;
  return { values, extra: $("extra").value };
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function showNotice(message) {
  $("notice").hidden = !message;
  $("notice").textContent = message || "";
}

async function post(path, body) {
  showError("");
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const payload = await response.json();
  if (!response.ok) showError(payload.error || `HTTP ${response.status}`);
  return payload;
}

function runStage(stage) {
  currentStage = stage;
  return post("/run", { ...formSettings(), stage, fast: $("fast").checked });
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.round(s - 60 * m)).padStart(2, "0")} s`;
}

function showStatus(st) {
  $("state").textContent = st.state;
  $("stage").textContent = st.stage ? `${st.kind === "render" ? "render to file" : st.stage}${st.fast ? " (fast)" : ""}` : "–";
  const kf = st.keyframes || [];
  // Scene cuts can add keyframes to the uniform schedule: then only the count is shown.
  const expected = st.keyframes_expected && kf.length <= st.keyframes_expected ? st.keyframes_expected : null;
  $("keyframes").textContent = expected ? `${kf.length} / ${expected}` : String(kf.length);
  $("frames").textContent =
    st.stage === "full" && st.total ? `${st.done} / ${st.total}` : st.stage ? "keyframes only" : "–";
  $("fps").textContent = st.fps === null || st.fps === undefined ? "–" : Number(st.fps).toFixed(2);
  $("eta").textContent = st.state === "running" ? seconds(st.eta) : st.state === "done" ? "0 s" : "–";
  $("elapsed").textContent = st.elapsed === undefined ? "–" : seconds(st.elapsed);
  $("command").textContent = st.command || "–";
  let fraction = 0;
  if (st.state === "done") fraction = 1;
  else if (st.stage === "full" && st.total) fraction = st.done / st.total;
  else if (st.keyframes_expected) fraction = kf.length / st.keyframes_expected;
  $("bar-fill").style.width = `${Math.round(100 * fraction)}%`;
  for (const b of document.querySelectorAll(".ladder button[data-stage]")) {
    b.classList.toggle("current", st.kind === "preview" && b.dataset.stage === st.stage);
  }
  if (st.kind === "preview" && st.stage) currentStage = st.stage;
  if (st.state === "error") showError(st.message);
  showNotice(st.kind === "render" && st.state === "done" ? `Rendered: ${st.output}` : "");
  if (st.run_id !== lastRunId || kf.length !== lastKeyframes) {
    lastRunId = st.run_id;
    lastKeyframes = kf.length;
    if (kf.length > 0) {
      $("keyframe").src = `/keyframe.jpg?v=${st.run_id}-${kf.length}`;
      $("sheet").src = `/keyframes.jpg?v=${st.run_id}-${kf.length}`;
    }
  }
  document.body.dataset.state = st.state;
  document.body.dataset.runId = String(st.run_id);
}

async function poll() {
  try {
    const response = await fetch("/status", { cache: "no-store" });
    showStatus(await response.json());
  } catch (e) {
    $("state").textContent = "server stopped";
    return;
  }
  setTimeout(poll, 250);
}

async function start() {
  const settings = await (await fetch("/settings", { cache: "no-store" })).json();
  buildForm(settings);
  for (const b of document.querySelectorAll(".ladder button[data-stage]")) {
    b.addEventListener("click", () => runStage(b.dataset.stage));
  }
  $("rerun").addEventListener("click", () => runStage(currentStage));
  $("render").addEventListener("click", () => post("/render", formSettings()));
  $("cancel").addEventListener("click", () => post("/cancel", {}));
  // The MJPEG streams start after the page has loaded, so an open stream never holds up its load event.
  $("input-view").src = "/input.mjpg";
  $("output-view").src = "/output.mjpg";
  poll();
}

window.addEventListener("load", start);
