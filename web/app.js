// alice-spool's web UI: a small single-page app over the public HTTP API (no build step,
// no dependencies). Pages are hash routes: #/ dashboard, #/queue, #/jobs/<id>, #/gallery,
// #/models, #/download, #/submit, #/admin, #/docs. Every page registers its timers and requests on a
// Page, which the router stops when the page is left. On a server with keys one logs in with a key:
// the server answers with a session cookie (HttpOnly, never the key), and the key is not kept here.
"use strict";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

// -- small helpers ---------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

/** An element: h("a", {href: "#/", class: "x", onclick: fn}, "text", child, ...). */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** A schema field's type, without the "null" of a field that may be sent as null. */
function kindOf(field) {
  const type = field.type;
  return Array.isArray(type) ? type.find((t) => t !== "null") : type;
}

/** Set a node's text only when it changed (no needless repaint, no flicker). */
function setText(node, text) {
  text = String(text ?? "");
  if (node.textContent !== text) node.textContent = text;
}

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function gib(bytes) {
  return bytes == null ? "" : `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}

// The installed models of a /v1/models answer (its aliases, for OpenAI's clients, left out).
function installed(list) {
  return list.data.filter((model) => !model.alias);
}

function megabytes(bytes) {
  if (bytes == null) return "";
  return bytes >= 1024 ** 3 ? gib(bytes) : `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

function excerpt(text, length = 80) {
  text = text || "";
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function badge(status) {
  return h("span", { class: `badge ${status}`, dataset: { status } }, status);
}

function progressBar(step, total, status) {
  const bar = h("div", { class: "progress", role: "progressbar" }, h("span"));
  updateProgress(bar, step, total, status);
  return bar;
}

function updateProgress(bar, step, total, status) {
  let share = 0;
  if (status === "succeeded") share = 1;
  else if (total) share = Math.min(1, (step || 0) / total);
  const width = `${Math.round(share * 100)}%`;
  const fill = bar.firstChild;
  if (fill.style.width !== width) fill.style.width = width;
  bar.setAttribute("aria-valuenow", String(Math.round(share * 100)));
  bar.title = total ? `step ${step || 0} of ${total}` : status;
  bar.dataset.status = status;
}

function notify(message, kind = "info") {
  const notice = $("#notice");
  notice.className = kind;
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => (notice.hidden = true), kind === "error" ? 8000 : 3000);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { class: "offscreen" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  notify("Prompt copied");
}

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, param, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
  }
}

/** Who is logged in (GET /v1/auth/me); on a server with no keys, its one user, an admin. */
let me = { authenticated: false, auth_required: false, is_admin: true, access_level: "admin" };

async function api(path, { method = "GET", body, signal, quiet = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `The server cannot be reached (${error.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || response.statusText || `HTTP ${response.status}`,
      error.param,
      Number(response.headers.get("Retry-After")) || 0,
    );
    if (response.status === 401 && !quiet) {
      const ended = me.authenticated;
      me = { ...me, authenticated: false };
      showWho();
      askForKey(ended ? `Your session has ended (${failure.message}). Log in again.` : "");
    }
    throw failure;
  }
  return data;
}

let openapiDocument = null;

async function openapi() {
  if (!openapiDocument) openapiDocument = await api("/openapi.json");
  return openapiDocument;
}

function keysRequired(document) {
  return Object.values(document.paths).some((methods) =>
    Object.values(methods).some((operation) => operation.security),
  );
}

/** Server-sent events over fetch (their events parsed here; the session cookie goes along). */
async function streamEvents(path, signal, onEvent) {
  const headers = { Accept: "text/event-stream" };
  const response = await fetch(path, { headers, signal });
  if (!response.ok || !response.body) throw new ApiError(response.status, "stream", "no stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// -- logging in and out ---------------------------------------------------------------------------

async function whoAmI() {
  try {
    me = await api("/v1/auth/me", { quiet: true });
  } catch (error) {
    if (error.status !== 401) throw error;
    me = { authenticated: false, auth_required: true, is_admin: false, access_level: null };
  }
  showWho();
  return me;
}

/** The header: who is logged in, log in / log out, and the Admin page for admins only. */
function showWho() {
  const closed = me.auth_required && !me.authenticated;
  $("#key-button").hidden = !closed;
  $("#logout-button").hidden = !me.authenticated;
  $("#who").textContent = me.authenticated ? `${me.name} (${me.access_level})` : "";
  $("#who").hidden = !me.authenticated;
  for (const link of document.querySelectorAll("[data-admin-only]")) link.hidden = !me.is_admin;
}

function askForKey(reason) {
  const dialog = $("#key-dialog");
  $("#key-reason").textContent = reason || "This server asks you to log in with your API key.";
  $("#key-error").hidden = true;
  $("#key-input").value = "";
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
  showRegistration();
}

/** Registration, when the server allows it (`server.registration` invite or open). */
async function showRegistration() {
  const part = $("#register-part");
  try {
    const mode = await api("/v1/auth/registration-mode", { quiet: true });
    part.hidden = mode.mode === "disabled";
    $("#register-invite").parentElement.hidden = mode.mode !== "invite";
  } catch {
    part.hidden = true;
  }
}

async function logIn(key) {
  await api("/v1/auth/login", { method: "POST", body: { key }, quiet: true });
  await whoAmI();
}

function setUpKeyDialog() {
  const dialog = $("#key-dialog");
  $("#key-button").addEventListener("click", () => askForKey());
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    const problem = $("#key-error");
    if (!key) return;
    try {
      await logIn(key);
    } catch (error) {
      problem.textContent =
        error.status === 401
          ? `That key was refused: ${error.message}`
          : `Could not log in: ${error.message}`;
      problem.hidden = false;
      return;
    }
    $("#key-input").value = "";
    dialog.close();
    notify(`Logged in as ${me.name}`);
    route();
  });
  $("#register-button").addEventListener("click", async () => {
    const problem = $("#key-error");
    const body = { name: $("#register-name").value.trim() };
    const code = $("#register-invite").value.trim();
    if (code) body.invite_code = code;
    try {
      const made = await api("/v1/auth/register", { method: "POST", body, quiet: true });
      await logIn(made.key);
      $("#register-key").textContent = made.key;
      $("#register-made").hidden = false;
      notify(`Registered and logged in as ${me.name}`);
      route();
    } catch (error) {
      problem.textContent = `Could not register: ${error.message}`;
      problem.hidden = false;
    }
  });
  $("#key-cancel").addEventListener("click", () => dialog.close());
  $("#logout-button").addEventListener("click", async () => {
    await api("/v1/auth/logout", { method: "POST", quiet: true }).catch(() => null);
    await whoAmI();
    notify("Logged out");
    route();
  });
}

/** A button that runs `run` (an API call), disabled meanwhile; a failure is shown. */
function actionButton(page, label, attrs, run) {
  return h("button", { type: "button", ...attrs, onclick: async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      page.problem(error);
    } finally {
      button.disabled = false;
    }
  } }, label);
}

// -- pages and the router -------------------------------------------------------------------------

class Page {
  constructor(view, params) {
    this.view = view;
    this.params = params;
    this.alive = true;
    this.controller = new AbortController();
    this.timers = new Set();
  }

  get signal() {
    return this.controller.signal;
  }

  api(path, options = {}) {
    return api(path, { ...options, signal: this.signal });
  }

  /** Run `task` now and then every `ms` after it finishes; 429 answers slow it down. */
  every(ms, task) {
    const tick = async () => {
      let delay = ms;
      try {
        await task();
      } catch (error) {
        if (!this.alive || error.name === "AbortError") return;
        if (error.status === 429) {
          // The key's rate limit (server.rate_limit_per_minute): refresh less often.
          delay = Math.max(ms, (error.retryAfter || 5) * 1000);
          if (!this.slowed) notify("Rate limited: refreshing less often", "info");
          this.slowed = true;
        } else {
          this.problem(error);
        }
      }
      if (this.alive) {
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          tick();
        }, delay);
        this.timers.add(timer);
      }
    };
    tick();
  }

  problem(error) {
    if (!this.alive || error.name === "AbortError") return;
    if (error.status === 401) return; // the key dialog says it
    notify(error.message, "error");
  }

  stop() {
    this.alive = false;
    this.controller.abort();
    for (const timer of this.timers) clearTimeout(timer);
  }
}

const ROUTES = [
  [/^\/?$/, dashboardPage, "dashboard"],
  [/^\/queue$/, queuePage, "queue"],
  [/^\/jobs\/([0-9a-zA-Z_-]+)$/, jobPage, "queue"],
  [/^\/gallery$/, galleryPage, "gallery"],
  [/^\/models$/, modelsPage, "models"],
  [/^\/download$/, downloadPage, "download"],
  [/^\/submit$/, submitPage, "submit"],
  [/^\/admin$/, adminPage, "admin"],
  [/^\/docs$/, docsPage, "docs"],
];

let current = null;

async function route() {
  if (current) current.stop();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const view = $("#view");
  view.replaceChildren();
  const page = new Page(view, new URLSearchParams(query));
  current = page;
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", Boolean(found) && link.dataset.page === found[2]);
  }
  if (!found) {
    view.append(h("h1", {}, "Not here"), h("p", {}, "No page at ", h("code", {}, hash), "."));
    return;
  }
  try {
    if (me.auth_required && !me.authenticated && found[2] !== "docs") {
      view.append(
        h("h1", {}, "Log in"),
        h("p", {}, "This server asks you to log in with your API key. ",
          h("button", { type: "button", onclick: () => askForKey() }, "Log in")),
      );
      askForKey();
      return;
    }
    if (found[2] === "admin" && !me.is_admin) {
      view.append(h("h1", {}, "Admins only"), h("p", {}, "This page is for an admin's key."));
      return;
    }
    await found[1](page, ...path.match(found[0]).slice(1));
  } catch (error) {
    if (error.name === "AbortError") return;
    page.problem(error);
    if (page.alive && !view.childElementCount) {
      view.append(h("h1", {}, "Something went wrong"), h("p", { class: "error" }, error.message));
    }
  }
}

// -- dashboard -------------------------------------------------------------------------------------

async function dashboardPage(page) {
  const runners = h("div", { class: "cards", id: "runners" });
  const queue = h("div", { class: "counts", id: "queue-counts" });
  const chart = h("div", { class: "chart", id: "throughput" });
  const recent = h("div", { class: "thumbs", id: "recent" });
  page.view.append(
    h("h1", {}, "Dashboard"),
    h("section", {}, h("h2", {}, "Runner"), runners),
    h("section", {}, h("h2", {}, "Queue"), queue),
    h("section", {}, h("h2", {}, "Images per minute, last hour"), chart),
    h("section", {}, h("h2", {}, "Latest images"), recent),
  );
  const seen = {};
  const changed = (name, value) => {
    const text = JSON.stringify(value);
    if (seen[name] === text) return false;
    seen[name] = text;
    return true;
  };
  page.every(2000, async () => {
    const health = await page.api("/health");
    const list = health.runners.filter((r) => r.state !== "gone" || health.runners.length === 1);
    const view = list.map((r) => ({ ...r, heartbeat_age_s: Math.round(r.heartbeat_age_s) }));
    if (changed("runners", view)) runners.replaceChildren(...runnerCards(view));
  });
  page.every(5000, async () => {
    const [stats, latest] = await Promise.all([
      page.api("/v1/stats"),
      page.api("/v1/jobs?status=succeeded&limit=8"),
    ]);
    if (changed("depth", stats.depth)) {
      queue.replaceChildren(
        ...STATUSES.map((status) =>
          h("a", { class: `count ${status}`, href: `#/queue?status=${status}` },
            h("strong", { dataset: { status } }, stats.depth[status] ?? 0), h("span", {}, status)),
        ),
      );
    }
    if (changed("chart", stats.images_per_minute_series)) {
      chart.replaceChildren(barChart(stats.images_per_minute_series), h("p", { class: "small" },
        `${stats.images_in_window} images in the last hour; `,
        stats.mean_run_s != null ? `mean run ${stats.mean_run_s.toFixed(1)} s, ` : "",
        stats.mean_wait_s != null ? `mean wait ${stats.mean_wait_s.toFixed(1)} s` : "no finished jobs"));
    }
    const images = latest.data.flatMap((job) => job.image_urls.slice(0, 1).map((url) => [job, url]));
    if (changed("recent", images.map(([job]) => job.id))) {
      recent.replaceChildren(
        ...(images.length
          ? images.map(([job, url]) =>
              h("a", { href: `#/jobs/${job.id}`, title: job.spec.prompt },
                h("img", { src: url, alt: excerpt(job.spec.prompt, 60), loading: "lazy" })))
          : [h("p", { class: "muted" }, "No images yet: submit one.")]),
      );
    }
  });
}

function runnerCards(runners) {
  if (!runners.length) {
    return [h("div", { class: "card" }, h("p", {}, "No runner has reported. ",
      h("code", {}, "alice-spool serve"), " starts one; or run ", h("code", {}, "alice-spool runner"), "."))];
  }
  return runners.map((r) => {
    const up = r.state !== "gone" && r.state !== "stopped";
    const rows = [
      ["Device", [r.device, r.gpu_name].filter(Boolean).join(" · ") || "unknown"],
      ["Model", r.model || "none loaded"],
      ["Heard from", `${r.heartbeat_age_s} s ago`],
    ];
    if (r.memory_total) rows.push(["GPU memory", `${gib(r.memory_used)} of ${gib(r.memory_total)}`]);
    const card = h("div", { class: "card runner", dataset: { state: r.state } },
      h("h3", {}, r.name, " ", badge(up ? r.state : r.state === "gone" ? "down" : r.state)),
      h("dl", { class: "params" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    if (r.job_id) {
      card.append(h("p", {}, "Working on ", h("a", { href: `#/jobs/${r.job_id}` }, r.job_id.slice(0, 10)),
        r.total ? ` · step ${r.step || 0} of ${r.total}` : ""),
        progressBar(r.step, r.total, "running"));
    }
    return card;
  });
}

function barChart(values) {
  const width = values.length * 10;
  const height = 100;
  const top = Math.max(1, ...values);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `images per minute over the last hour, at most ${top}`);
  values.forEach((value, i) => {
    const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const barHeight = (value / top) * height;
    for (const [k, v] of Object.entries({ x: i * 10 + 1, y: height - barHeight, width: 8, height: barHeight })) {
      bar.setAttribute(k, String(v));
    }
    bar.setAttribute("class", "bar");
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${values.length - i} min ago: ${value} images`;
    bar.append(title);
    svg.append(bar);
  });
  return h("figure", { class: "bars" },
    h("span", { class: "label top" }, `${top}/min`),
    svg,
    h("figcaption", {}, h("span", {}, "60 min ago"), h("span", {}, "now")));
}

// -- the queue -------------------------------------------------------------------------------------

async function queuePage(page) {
  const status = page.params.get("status") || "";
  const batch = page.params.get("batch") || "";
  const form = h("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    const data = new FormData(event.target);
    if (data.get("status")) query.set("status", data.get("status"));
    if (data.get("batch").trim()) query.set("batch", data.get("batch").trim());
    location.hash = `#/queue${query.size ? `?${query}` : ""}`;
  } },
    h("label", {}, "Status ", h("select", { name: "status", onchange: (e) => e.target.form.requestSubmit() },
      h("option", { value: "" }, "all"),
      STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)))),
    h("label", {}, "Batch ", h("input", { name: "batch", value: batch, placeholder: "batch id", size: 14 })),
    h("button", { type: "submit" }, "Filter"));
  const body = h("tbody");
  const table = h("table", { class: "jobs" },
    h("thead", {}, h("tr", {}, ["Status", "Priority", "Model", "Prompt", "Age", "Progress", ""].map((t) => h("th", {}, t)))),
    body);
  const empty = h("p", { class: "muted", hidden: true }, "No jobs here.");
  const more = h("p", { class: "small muted", hidden: true }, "Showing the newest 100.");
  page.view.append(h("h1", {}, "Queue"), form, table, empty, more);

  const query = new URLSearchParams({ limit: "100" });
  if (status) query.set("status", status);
  if (batch) query.set("batch_id", batch);
  const rows = new Map();
  const refresh = async () => {
    const list = await page.api(`/v1/jobs?${query}`);
    const ids = new Set(list.data.map((job) => job.id));
    for (const [id, row] of rows) {
      if (!ids.has(id)) {
        row.element.remove();
        rows.delete(id);
      }
    }
    let previous = null;
    for (const job of list.data) {
      let row = rows.get(job.id);
      if (!row) {
        row = queueRow(job, page, refresh);
        rows.set(job.id, row);
      }
      row.update(job);
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row.element) body.insertBefore(row.element, expected);
      previous = row.element;
    }
    empty.hidden = list.data.length > 0;
    more.hidden = !list.next_cursor;
  };
  page.every(1000, refresh);
}

function queueRow(job, page, refresh) {
  const cells = {
    status: h("td", { "data-label": "Status" }),
    priority: h("td", { "data-label": "Priority", class: "priority" }),
    model: h("td", { "data-label": "Model" }),
    prompt: h("td", { "data-label": "Prompt", class: "prompt-cell" }),
    age: h("td", { "data-label": "Age" }),
    progress: h("td", { "data-label": "Progress" }),
    actions: h("td", { class: "actions" }),
  };
  const element = h("tr", { dataset: { id: job.id } }, Object.values(cells));
  const statusBadge = badge(job.status);
  cells.status.append(statusBadge);
  const priorityValue = h("span", { class: "value" });
  const act = (label, title, run) =>
    actionButton(page, label, { class: "small", title }, async () => {
      await run();
      await refresh();
    });
  const up = act("▲", "raise priority", () => changePriority(shown.priority + 10));
  const down = act("▼", "lower priority", () => changePriority(shown.priority - 10));
  up.classList.add("raise");
  down.classList.add("lower");
  cells.priority.append(down, priorityValue, up);
  const link = h("a", { href: `#/jobs/${job.id}` });
  cells.prompt.append(link);
  const bar = progressBar(0, 0, job.status);
  cells.progress.append(bar);
  const cancel = act("Cancel", "cancel this job", () => page.api(`/v1/jobs/${shown.id}/cancel`, { method: "POST" }));
  cancel.classList.add("cancel");
  const retry = act("Retry", "queue it again", () => page.api(`/v1/jobs/${shown.id}/retry`, { method: "POST" }));
  retry.classList.add("retry");
  cells.actions.append(cancel, retry);
  let shown = job;
  const changePriority = (value) =>
    page.api(`/v1/jobs/${shown.id}/priority`, {
      method: "POST",
      body: { priority: Math.max(-100, Math.min(100, value)) },
    });
  return {
    element,
    update(next) {
      shown = next;
      if (statusBadge.dataset.status !== next.status) {
        statusBadge.className = `badge ${next.status}`;
        statusBadge.dataset.status = next.status;
        setText(statusBadge, next.status);
      }
      element.dataset.status = next.status;
      setText(priorityValue, next.priority);
      const queued = next.status === "queued";
      up.hidden = down.hidden = !queued;
      up.disabled = next.priority >= 100;
      down.disabled = next.priority <= -100;
      setText(cells.model, next.model || "default");
      setText(link, excerpt(next.spec.prompt) || "(no prompt)");
      link.title = next.spec.prompt;
      setText(cells.age, age(next.created_at));
      updateProgress(bar, next.progress.step, next.progress.total, next.status);
      cancel.hidden = !(queued || next.status === "running") || next.cancel_requested;
      retry.hidden = !(next.status === "failed" || next.status === "cancelled");
    },
  };
}

// -- one job ---------------------------------------------------------------------------------------

async function jobPage(page, jobId) {
  const job = await page.api(`/v1/jobs/${jobId}`);
  page.view.append(h("h1", {}, "Job ", h("code", {}, job.id)));
  const panel = h("div");
  page.view.append(panel);
  showJobLive(page, panel, job, { withActions: true });
}

/** Draw a job into `panel` and keep it current (server-sent events, polling as fallback). */
function showJobLive(page, panel, job, { withActions = false } = {}) {
  let drawn = drawJob(page, panel, job, withActions);
  if (FINISHED.has(job.status)) return;
  const follow = async () => {
    try {
      await streamEvents(`/v1/jobs/${job.id}/events`, page.signal, (event, data) => {
        if (event === "progress") drawn.progress(data);
        if (event === "done") drawn = drawJob(page, panel, data, withActions);
      });
    } catch (error) {
      if (error.name === "AbortError" || !page.alive) return;
      // No stream (a proxy that buffers, a dropped connection): poll instead.
      while (page.alive) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        try {
          const fresh = await page.api(`/v1/jobs/${job.id}`);
          if (FINISHED.has(fresh.status)) {
            drawn = drawJob(page, panel, fresh, withActions);
            return;
          }
          drawn.progress({ status: fresh.status, step: fresh.progress.step, total: fresh.progress.total });
        } catch (failure) {
          page.problem(failure);
        }
      }
    }
  };
  follow();
}

function drawJob(page, panel, job, withActions) {
  const spec = job.spec;
  const status = badge(job.status);
  const bar = progressBar(job.progress.step, job.progress.total, job.status);
  const stepText = h("span", { class: "small muted" });
  const header = h("div", { class: "job-head" }, status, h("span", { class: "job-id" }, job.id), stepText);
  const actions = h("div", { class: "buttons" });
  const act = (label, cls, run) => actionButton(page, label, { class: cls }, run);
  if (withActions) {
    if (!FINISHED.has(job.status) && !job.cancel_requested) {
      actions.append(act("Cancel", "cancel", async () => {
        await page.api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
        notify("Cancel requested");
        route();
      }));
    }
    if (job.status === "failed" || job.status === "cancelled") {
      actions.append(act("Retry", "retry", async () => {
        await page.api(`/v1/jobs/${job.id}/retry`, { method: "POST" });
        notify("Queued again");
        route();
      }));
    }
    actions.append(act("Submit again", "again", async () => {
      const body = { ...spec };
      delete body.client_fields;  // the server's record of what the first client asked
      if (spec.init_image) {  // the same input and mask, sent again
        body.init_image = await jobInput(page, job.id, "init");
        if (spec.mask_image) body.mask_image = await jobInput(page, job.id, "mask");
      }
      const made = await page.api("/v1/jobs", { method: "POST", body });
      location.hash = `#/jobs/${made.id}`;
    }));
    actions.append(h("a", { class: "button quiet", href: `#/submit?from=${job.id}` }, "Edit and submit"));
  }
  const inputs = h("div", { class: "thumbs inputs" });
  if (spec.init_image) {  // the input (and mask) beside the result
    for (const [name, label] of [["init", "input"], ["mask", "mask"]]) {
      if (name === "mask" && !spec.mask_image) continue;
      jobInput(page, job.id, name).then((url) => inputs.append(
        h("figure", {}, h("img", { src: url, alt: `${label} of job ${job.id}`, class: `input-${name}` }),
          h("figcaption", { class: "small muted" }, label)))).catch(() => {});
    }
  }
  const params = [
    ["Prompt", spec.prompt],
    ["Negative prompt", spec.negative_prompt || "—"],
    ["Model", job.model || spec.model || "default"],
    ["Size", spec.width && spec.height ? `${spec.width}×${spec.height}` : "model's native"],
    ["Steps", spec.steps],
    ["Guidance", spec.guidance_scale],
    ["Scheduler", spec.scheduler],
    ["Seed", spec.seed ?? (job.result?.images?.[0]?.seed ?? "random")],
    ["Images", spec.n],
    ...(spec.init_image ? [["Mode", spec.mask_image ? "inpainting" : "img2img"], ["Strength", spec.strength]] : []),
    ...((spec.loras || []).length ? [["LoRAs", spec.loras.map((l) => `${l.name} at ${l.scale}`).join(", ")]] : []),
    ["Priority", job.priority],
    ["Source", [job.source, job.client].filter(Boolean).join(" · ")],
    ["Batch", job.batch_id ? h("a", { href: `#/queue?batch=${job.batch_id}` }, job.batch_id) : "—"],
    ["Queued", when(job.created_at)],
    ["Started", when(job.started_at) || "—"],
    ["Finished", when(job.finished_at) || "—"],
    ["Attempts", `${job.attempts} of ${job.max_attempts}`],
  ];
  const images = h("div", { class: "thumbs large" },
    job.image_urls.map((url, i) => h("a", { href: url, onclick: (event) => {
      event.preventDefault();
      openLightbox(jobImage(job, url));
    } }, h("img", { src: url, alt: `image ${i + 1} of job ${job.id}` }))));
  const parts = [
    header,
    bar,
    actions,
    job.error ? h("div", { class: "error box" }, h("strong", {}, job.error.code), ": ", job.error.message) : "",
    job.images_expired_at ? h("p", { class: "muted" }, `Images deleted by retention on ${when(job.images_expired_at)}.`) : "",
    spec.init_image ? inputs : "",
    job.image_urls.length ? images : "",
    h("h2", {}, "Parameters"),
    h("dl", { class: "params" }, params.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    withActions && job.result
      ? [h("h2", {}, "result.json"), h("pre", { class: "json" }, JSON.stringify(job.result, null, 2))]
      : "",
  ];
  panel.replaceChildren(...parts.flat().filter(Boolean));
  const progress = (data) => {
    if (status.dataset.status !== data.status) {
      status.className = `badge ${data.status}`;
      status.dataset.status = data.status;
      setText(status, data.status);
    }
    updateProgress(bar, data.step, data.total, data.status);
    setText(stepText, data.total ? `step ${data.step || 0} of ${data.total}` : "");
  };
  progress({ status: job.status, step: job.progress.step, total: job.progress.total });
  return { progress };
}

// -- the gallery -----------------------------------------------------------------------------------

const GALLERY_PAGE = 24;
const SHARE_HOURS = [[1, "1 hour"], [24, "1 day"], [72, "3 days"], [168, "1 week"]];

/** The gallery (GET /v1/gallery): one's own images and those others share (an admin's: all),
 * with search, tag and model filters, and for what one may change: share, tags, delete. */
async function galleryPage(page) {
  const params = page.params;
  const offset = Number(params.get("offset") || 0);
  const query = new URLSearchParams({ limit: String(GALLERY_PAGE), offset: String(offset) });
  for (const name of ["search", "tags", "model"]) if (params.get(name)) query.set(name, params.get(name));
  if (params.get("show") === "mine") query.set("include_public", "false");
  if (params.get("show") === "shared") query.set("include_private", "false");
  const [list, models, tags] = await Promise.all([
    page.api(`/v1/gallery?${query}`), page.api("/v1/models"), page.api("/v1/gallery/tags")]);
  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) v ? next.set(k, v) : next.delete(k);
    location.hash = `#/gallery${next.size ? `?${next}` : ""}`;
  };
  const search = h("input", { type: "search", id: "gallery-search", placeholder: "Words in the prompt", value: params.get("search") || "" });
  const tagInput = h("input", { id: "gallery-tags", list: "gallery-tag-list", placeholder: "tag, tag", value: params.get("tags") || "" });
  const model = h("select", { id: "gallery-model" }, h("option", { value: "" }, "Any model"),
    ...installed(models).map((m) => h("option", { value: m.id, selected: m.id === params.get("model") }, m.id)));
  const show = h("select", { id: "gallery-show" },
    ...[["", "Mine and shared"], ["mine", "Only mine"], ["shared", "Only shared"]].map(([v, t]) =>
      h("option", { value: v, selected: (params.get("show") || "") === v }, t)));
  const filters = h("form", { class: "filters", id: "gallery-filters", onsubmit: (event) => {
    event.preventDefault();
    go({ search: search.value.trim(), tags: tagInput.value.trim(), model: model.value, show: show.value, offset: "" });
  } }, search, tagInput, model, show, h("button", { type: "submit" }, "Filter"),
  h("datalist", { id: "gallery-tag-list" }, ...tags.tags.map((t) => h("option", { value: t.name }))));
  const tiles = list.data.map((item) => galleryTile(page, item, () => route()));
  const newer = h("button", { type: "button", class: "quiet", disabled: offset <= 0,
    onclick: () => go({ offset: String(Math.max(0, offset - GALLERY_PAGE)) || "" }) }, "← Newer");
  const older = h("button", { type: "button", class: "quiet", disabled: offset + GALLERY_PAGE >= list.total,
    onclick: () => go({ offset: String(offset + GALLERY_PAGE) }) }, "Older →");
  page.view.append(
    h("h1", {}, "Gallery"),
    filters,
    h("p", { class: "small muted", id: "gallery-total" }, `${list.total} image(s)`),
    tiles.length ? h("div", { class: "gallery" }, tiles) : h("p", { class: "muted" }, "No images here."),
    h("div", { class: "pager" }, newer, older),
  );
}

function galleryTile(page, item, refresh) {
  const mayChange = item.isOwner || me.is_admin;
  const tags = h("span", { class: "tags" }, ...item.tags.map((t) => h("span", { class: "tag" }, t)));
  const shared = item.isPublic
    ? h("span", { class: "badge shared", title: `Listed for everyone until ${when(item.expiresAt)}` }, `shared until ${when(item.expiresAt)}`)
    : "";
  const actions = h("div", { class: "tile-actions" });
  if (mayChange) {
    const hours = h("select", { class: "share-hours", "aria-label": "Share for" },
      ...SHARE_HOURS.map(([value, text]) => h("option", { value }, text)));
    const share = actionButton(page, "Share", { class: "small share" }, async () => {
      await page.api(`/v1/gallery/${item.id}/privacy`, { method: "PATCH",
        body: { isPublic: true, expiresInHours: Number(hours.value) } });
      notify("Shared: listed for everyone until it expires");
      refresh();
    });
    const unshare = actionButton(page, "Unshare", { class: "small quiet unshare" }, async () => {
      await page.api(`/v1/gallery/${item.id}/privacy`, { method: "PATCH", body: { isPublic: false } });
      notify("Private again");
      refresh();
    });
    const editTags = h("form", { class: "tag-form", onsubmit: async (event) => {
      event.preventDefault();
      const given = event.currentTarget.elements.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
      try {
        const answer = await page.api(`/v1/gallery/${item.id}/tags`, { method: "PATCH", body: { tags: given } });
        tags.replaceChildren(...answer.tags.map((t) => h("span", { class: "tag" }, t)));
        notify("Tags saved");
      } catch (error) {
        page.problem(error);
      }
    } }, h("input", { name: "tags", class: "tag-input", value: item.tags.join(", "), placeholder: "tags, comma separated", "aria-label": "Tags" }),
    h("button", { type: "submit", class: "small quiet" }, "Save tags"));
    const remove = actionButton(page, "Delete", { class: "small quiet delete-image" }, async () => {
      if (!confirm("Delete this image? Its file and its link are gone for good.")) return;
      await page.api(`/v1/gallery/${item.id}`, { method: "DELETE" });
      notify("Image deleted");
      refresh();
    });
    actions.append(item.isPublic ? unshare : h("span", {}, hours, share), editTags, remove);
  }
  return h("figure", { class: "tile", dataset: { id: item.id } },
    h("a", { href: item.url, onclick: (event) => {
      event.preventDefault();
      openLightbox(item);
    } }, h("img", { src: item.url, alt: excerpt(item.prompt, 60), loading: "lazy" })),
    h("figcaption", {}, excerpt(item.prompt, 50), " ", shared, tags, actions));
}

/** One of a job's images, as the gallery shows an item. */
function jobImage(job, url) {
  const file = url.split("/").pop();
  const image = (job.result?.images || []).find((i) => i.file === file) || {};
  const spec = job.spec;
  return {
    url, prompt: spec.prompt, negativePrompt: spec.negative_prompt, model: job.model,
    width: image.width || spec.width, height: image.height || spec.height, steps: spec.steps,
    guidanceScale: spec.guidance_scale, scheduler: spec.scheduler, seed: image.seed ?? spec.seed,
    createdAt: job.finished_at, tags: [], jobId: job.id,
  };
}

/** A gallery item, large, with what made it. */
function openLightbox(item) {
  $("#lightbox-image").src = item.url;
  $("#lightbox-image").alt = item.prompt;
  $("#lightbox-prompt").textContent = item.prompt;
  $("#lightbox-open").href = item.url;
  $("#lightbox-job").href = `#/jobs/${item.jobId}`;
  const rows = [
    ["Negative", item.negativePrompt || "—"],
    ["Model", item.model],
    ["Size", `${item.width}×${item.height}`],
    ["Steps", item.steps],
    ["Guidance", item.guidanceScale],
    ["Scheduler", item.scheduler],
    ["Seed", item.seed ?? "—"],
    ["Made", when(item.createdAt)],
    ["Tags", item.tags.join(", ") || "—"],
  ];
  $("#lightbox-params").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  $("#lightbox-copy").onclick = () => copyText(item.prompt);
  $("#lightbox").showModal();
}

function setUpLightbox() {
  const box = $("#lightbox");
  $("#lightbox-close").addEventListener("click", () => box.close());
  $("#lightbox-job").addEventListener("click", () => box.close());
  box.addEventListener("click", (event) => {
    if (event.target === box) box.close();
  });
}

// -- models ----------------------------------------------------------------------------------------

async function modelsPage(page) {
  const body = h("tbody");
  const loraBody = h("tbody", { id: "loras" });
  const rescan = actionButton(page, "Rescan models directory", { class: "quiet" }, async () => {
    const answer = await page.api("/v1/models/refresh", { method: "POST" });
    notify(`${answer.models_found} usable models found`);
    await draw();
  });
  page.view.append(
    h("h1", {}, "Models"),
    h("table", { class: "models" },
      h("thead", {}, h("tr", {}, ["Model", "Family", "Native size", "On disk", "Status", "Default", ""].map((t) => h("th", {}, t)))),
      body),
    h("h2", {}, "LoRAs"),
    h("table", { class: "models loras" },
      h("thead", {}, h("tr", {}, ["LoRA", "For", "On disk", ""].map((t) => h("th", {}, t)))),
      loraBody),
    h("p", {}, rescan),
    h("p", { class: "small muted" }, "Install models from the ", h("a", { href: "#/download" }, "Download"),
      " page, with ", h("code", {}, "alice-spool models pull <ref>"),
      ", or by copying them into the models directory, then rescan."),
  );
  const draw = async () => {
    const list = await page.api("/v1/models?include_broken=true");
    body.replaceChildren(...installed(list).map((model) => {
      const makeDefault = actionButton(page, "Make default", { class: "small make-default" }, async () => {
        await page.api("/v1/models/default", { method: "POST", body: { model: model.id } });
        notify(`${model.id} is now the default`);
        await draw();
      });
      const remove = actionButton(page, "Delete", { class: "small quiet delete-model" }, async () => {
        if (!confirm(`Delete ${model.id} from the models directory? Its queued jobs fail.`)) return;
        const answer = await page.api(`/v1/models/${model.id}`, { method: "DELETE" });
        notify(`${model.id} deleted` + (answer.failed_jobs.length ? `; ${answer.failed_jobs.length} queued job(s) failed` : ""));
        await draw();
      });
      return h("tr", { dataset: { id: model.id } },
        h("td", { "data-label": "Model" }, h("strong", {}, model.id),
          model.note ? h("div", { class: "small muted" }, model.note) : ""),
        h("td", { "data-label": "Family" }, model.family || "—"),
        h("td", { "data-label": "Native size" }, model.native_size ? `${model.native_size}×${model.native_size}` : "—"),
        h("td", { "data-label": "On disk" }, megabytes(model.size_bytes)),
        h("td", { "data-label": "Status" }, badge(model.status === "ok" ? "ok" : "broken"),
          model.reason ? h("div", { class: "small error" }, model.reason) : ""),
        h("td", { "data-label": "Default", class: "default-cell" },
          model.default ? h("span", { class: "badge default" }, "default")
            : model.status === "ok" && me.is_admin ? makeDefault : "—"),
        h("td", { "data-label": "" }, me.is_admin ? remove : ""));
    }));
    if (!list.data.length) {
      body.append(h("tr", {}, h("td", { colspan: 7 }, "No models installed: ",
        h("code", {}, "alice-spool models create-tiny"), " makes a smoke-test one, or ",
        h("a", { href: "#/download" }, "download one"), ".")));
    }
    const loraList = await page.api("/v1/loras");
    loraBody.replaceChildren(...loraList.data.map((lora) => h("tr", { dataset: { id: lora.id } },
      h("td", { "data-label": "LoRA" }, h("strong", {}, lora.id)),
      h("td", { "data-label": "For" }, lora.family || "—"),
      h("td", { "data-label": "On disk" }, megabytes(lora.size_bytes)),
      h("td", { "data-label": "" }, !me.is_admin ? "" : actionButton(page, "Delete", { class: "small quiet delete-lora" }, async () => {
        if (!confirm(`Delete ${lora.id}?`)) return;
        await page.api(`/v1/loras/${lora.id}`, { method: "DELETE" });
        notify(`${lora.id} deleted`);
        await draw();
      })))));
    if (!loraList.data.length) loraBody.append(h("tr", {}, h("td", { colspan: 4 }, "No LoRAs installed.")));
  };
  await draw();
}

// -- download --------------------------------------------------------------------------------------

const CIVITAI_TYPES = { "": "Checkpoints and LoRAs", Checkpoint: "Checkpoints", "LORA,LoCon,DoRA": "LoRAs" };
const DOWNLOAD_ACTIVE = new Set(["queued", "downloading", "verifying"]);

/** A CivitAI preview, fetched through this server (the browser never contacts CivitAI,
 * and the page's policy stays 'self'), shown as a blob URL. */
async function thumbnail(page, url, image) {
  const headers = {};
  try {
    const response = await fetch(`/v1/models/thumbnail?url=${encodeURIComponent(url)}`, { headers, signal: page.signal });
    if (!response.ok) return;
    image.src = URL.createObjectURL(await response.blob());
  } catch (error) {
    if (error.name !== "AbortError") image.alt = "no preview";
  }
}

async function queueDownload(page, body, label) {
  const made = await page.api("/v1/downloads", { method: "POST", body });
  notify(`Downloading ${made.name || label}`);
  return made;
}

function civitaiCard(page, item, refresh) {
  const image = h("img", { alt: item.name, loading: "lazy", class: "preview" });
  if (item.thumbnail) thumbnail(page, item.thumbnail, image);
  const version = item.versions[0];
  const file = version ? version.files.find((f) => f.primary) || version.files[0] : null;
  const go = item.installs_as && version
    ? actionButton(page, `Download ${item.installs_as === "lora" ? "LoRA" : "model"}`, { class: "small get" }, async () => {
      await queueDownload(page, { source: "civitai", model_id: item.id, version_id: version.id }, item.name);
      await refresh();
    })
    : h("span", { class: "small muted" }, `${item.type}: not installable yet`);
  return h("article", { class: "card result", dataset: { id: String(item.id) } },
    image,
    h("h3", {}, item.name),
    h("p", { class: "small muted" }, [item.type, version && version.base_model, item.creator && `by ${item.creator}`]
      .filter(Boolean).join(" · ")),
    h("p", { class: "small" }, `${item.downloads ?? 0} downloads`, file && file.size_kb ? ` · ${megabytes(file.size_kb * 1024)}` : ""),
    go);
}

async function downloadPage(page) {
  const queueBody = h("tbody", { id: "download-queue" });
  const results = h("div", { class: "cards results", id: "civitai-results" });
  const more = h("p");
  const hubResults = h("tbody", { id: "hub-results" });
  const query = h("input", { type: "search", id: "civitai-query", placeholder: "Search CivitAI (empty: browse)" });
  const types = h("select", { id: "civitai-type" }, Object.entries(CIVITAI_TYPES).map(([v, t]) => h("option", { value: v }, t)));
  const sort = h("select", { id: "civitai-sort" }, ["Highest Rated", "Most Downloaded", "Newest"].map((v) => h("option", { value: v }, v)));
  const nsfw = h("input", { type: "checkbox", id: "civitai-nsfw" });
  const hubQuery = h("input", { type: "search", id: "hub-query", placeholder: "Search the Hugging Face Hub" });
  const url = h("input", { type: "url", id: "download-url", placeholder: "https://…/model.safetensors", required: true });
  const urlName = h("input", { type: "text", id: "download-name", placeholder: "name (optional)" });
  const urlKind = h("select", { id: "download-kind" }, [["", "told by its contents"], ["checkpoint", "checkpoint"], ["lora", "LoRA"]]
    .map(([v, t]) => h("option", { value: v }, t)));

  const drawQueue = async () => {
    const list = await page.api("/v1/downloads?limit=50");
    queueBody.replaceChildren(...list.data.map((d) => {
      const bar = progressBar(d.bytes_done, d.bytes_total, d.status === "succeeded" ? "succeeded" : d.status);
      bar.title = d.bytes_total ? `${megabytes(d.bytes_done)} of ${megabytes(d.bytes_total)}` : megabytes(d.bytes_done);
      const cancel = DOWNLOAD_ACTIVE.has(d.status)
        ? actionButton(page, "Cancel", { class: "small quiet cancel-download" }, async () => {
          await page.api(`/v1/downloads/${d.id}/cancel`, { method: "POST", body: {} });
          notify(`Cancelling ${d.name || d.id}`);
          await drawQueue();
        })
        : "";
      return h("tr", { dataset: { id: d.id, status: d.status } },
        h("td", { "data-label": "Download" }, h("strong", {}, d.name || d.id), h("div", { class: "small muted" }, d.source)),
        h("td", { "data-label": "Status" }, badge(d.status),
          d.error ? h("div", { class: "small error" }, `${d.error.code}: ${d.error.message}`) : ""),
        h("td", { "data-label": "Progress" }, bar,
          h("div", { class: "small muted" }, d.speed_bps ? `${megabytes(d.speed_bps)}/s` : d.model || "")),
        h("td", { "data-label": "" }, cancel));
    }));
    if (!list.data.length) queueBody.append(h("tr", {}, h("td", { colspan: 4 }, "No downloads yet.")));
  };

  let cursor = null;
  const searchCivitai = async (append = false) => {
    const params = new URLSearchParams({ source: "civitai", limit: "12", nsfw: String(nsfw.checked) });
    if (query.value.trim()) params.set("query", query.value.trim());
    params.set("types", types.value || "Checkpoint,LORA,LoCon,DoRA");
    params.set("sort", sort.value);
    if (append && cursor) params.set("cursor", cursor);
    const page_ = await page.api(`/v1/models/search?${params}`);
    cursor = page_.next_cursor;
    const cards = page_.data.map((item) => civitaiCard(page, item, drawQueue));
    if (append) results.append(...cards);
    else results.replaceChildren(...cards);
    if (!results.childElementCount) results.append(h("p", { class: "muted" }, "Nothing found."));
    more.replaceChildren(cursor ? actionButton(page, "More", { class: "quiet", id: "civitai-more" }, () => searchCivitai(true)) : "");
  };
  const searchHub = async () => {
    const params = new URLSearchParams({ source: "huggingface", limit: "20", query: hubQuery.value.trim() });
    const found = await page.api(`/v1/models/search?${params}`);
    hubResults.replaceChildren(...found.data.map((item) => h("tr", { dataset: { id: item.id } },
      h("td", { "data-label": "Repository" }, h("strong", {}, item.id), item.gated ? h("span", { class: "small muted" }, " (gated)") : ""),
      h("td", { "data-label": "Type" }, item.type),
      h("td", { "data-label": "Downloads" }, String(item.downloads ?? 0)),
      h("td", { "data-label": "" }, actionButton(page, "Download", { class: "small get" }, async () => {
        await queueDownload(page, { source: "huggingface", repo: item.id }, item.id);
        await drawQueue();
      })))));
    if (!found.data.length) hubResults.append(h("tr", {}, h("td", { colspan: 4 }, "Nothing found.")));
  };
  const onSubmit = (run) => async (event) => {
    event.preventDefault();
    try {
      await run();
    } catch (error) {
      page.problem(error);
    }
  };

  page.view.append(
    h("h1", {}, "Download models"),
    h("section", {}, h("h2", {}, "Queue"),
      h("table", { class: "downloads" },
        h("thead", {}, h("tr", {}, ["Download", "Status", "Progress", ""].map((t) => h("th", {}, t)))), queueBody)),
    h("section", {}, h("h2", {}, "CivitAI"),
      h("form", { class: "search", id: "civitai-form", onsubmit: onSubmit(() => searchCivitai()) },
        query, types, sort, h("label", { class: "check" }, nsfw, " NSFW"), h("button", { type: "submit" }, "Search")),
      results, more),
    h("section", {}, h("h2", {}, "Hugging Face"),
      h("form", { class: "search", id: "hub-form", onsubmit: onSubmit(searchHub) }, hubQuery, h("button", { type: "submit" }, "Search")),
      h("table", { class: "hub" }, h("thead", {}, h("tr", {}, ["Repository", "Type", "Downloads", ""].map((t) => h("th", {}, t)))), hubResults)),
    h("section", {}, h("h2", {}, "From a URL"),
      h("form", { class: "search", id: "url-form", onsubmit: onSubmit(async () => {
        const body = { source: "url", url: url.value.trim() };
        if (urlName.value.trim()) body.name = urlName.value.trim();
        if (urlKind.value) body.kind = urlKind.value;
        await queueDownload(page, body, body.url);
        url.value = "";
        await drawQueue();
      }) }, url, urlName, urlKind, h("button", { type: "submit" }, "Download"))),
  );
  page.every(1000, drawQueue);
  await searchCivitai().catch((error) => page.problem(error));
}

// -- submit ----------------------------------------------------------------------------------------

async function submitPage(page) {
  const [document_, models, loraList] = await Promise.all([
    openapi(), page.api("/v1/models"), page.api("/v1/loras")]);
  const schema = document_.paths["/v1/jobs"].post.requestBody.content["application/json"].schema.properties;
  const from = page.params.get("from");
  const earlier = from ? (await page.api(`/v1/jobs/${from}`)).spec : {};
  const inputs = imageInputs(earlier.strength);
  const loras = loraPicker(loraList.data.filter((l) => l.status === "ok"), earlier.loras || []);
  if (from && earlier.init_image) {  // "edit and submit": the same input and mask
    const [init, mask] = await Promise.all([jobInput(page, from, "init"),
      earlier.mask_image ? jobInput(page, from, "mask") : null]);
    await inputs.load(init, mask);
  }
  const number = (name, attrs = {}) => {
    const field = schema[name] || {};
    return h("input", {
      type: "number", name, id: `f-${name}`, min: field.minimum, max: field.maximum,
      step: kindOf(field) === "number" ? "0.5" : field.multipleOf || 1,
      placeholder: field.default ?? "", value: earlier[name] ?? "", ...attrs,
    });
  };
  const label = (text, input, hint) => h("label", { for: input.id }, h("span", {}, text), input,
    hint ? h("small", { class: "muted" }, hint) : "");
  const defaultModel = models.data.find((m) => m.default);
  const form = h("form", { class: "submit", id: "submit-form", novalidate: true },
    label("Prompt", h("textarea", { name: "prompt", id: "f-prompt", rows: 3, required: true,
      maxlength: schema.prompt.maxLength, placeholder: "a lighthouse at dusk" }, earlier.prompt || "")),
    h("div", { id: "negative-field" },
      label("Negative prompt", h("textarea", { name: "negative_prompt", id: "f-negative_prompt", rows: 2 },
        earlier.negative_prompt || ""))),
    h("div", { class: "row" },
      label("Model", h("select", { name: "model", id: "f-model" },
        h("option", { value: "" }, `default${defaultModel ? ` (${defaultModel.id})` : ""}`),
        installed(models).map((m) => h("option", { value: m.id, selected: m.id === earlier.model }, m.id)))),
      label("Scheduler", h("select", { name: "scheduler", id: "f-scheduler" },
        h("option", { value: "" }, "the model's"),
        schema.scheduler.enum.filter((s) => s !== null).map((s) => h("option", { value: s, selected: s === earlier.scheduler }, s))))),
    h("div", { class: "row" },
      label("Width", number("width", { placeholder: "native" })),
      label("Height", number("height", { placeholder: "native" })),
      label("Steps", number("steps")),
      label("Guidance", number("guidance_scale")),
      h("div", { id: "true-cfg-field" },
        label("True CFG", number("true_cfg_scale", { placeholder: "1 (off)" })))),
    h("div", { class: "row" },
      label("Seed", number("seed", { placeholder: "random" })),
      label("Images", number("n")),
      label("Priority", number("priority"))),
    loras.element,
    inputs.element,
    h("p", { id: "submit-error", class: "error", hidden: true }),
    h("div", { class: "buttons" }, h("button", { type: "submit", id: "submit-button" }, "Generate")),
  );
  // What the chosen model's family takes: its defaults as the placeholders, only its
  // schedulers; FLUX.1's true CFG (which runs its negative prompt), and no negative
  // prompt for a Fill model, whose pipeline has none.
  const applyFamily = () => {
    const chosen = form.elements.model.value || (defaultModel && defaultModel.id);
    const model = installed(models).find((m) => m.id === chosen) || {};
    const given = model.defaults || {};
    form.elements.steps.placeholder = given.steps ?? schema.steps.default ?? "";
    form.elements.guidance_scale.placeholder = given.guidance_scale ?? schema.guidance_scale.default ?? "";
    const takes = model.schedulers;  // null: every scheduler
    const scheduler = form.elements.scheduler;
    for (const option of scheduler.options) option.hidden = Boolean(option.value && takes && !takes.includes(option.value));
    if (scheduler.selectedOptions[0] && scheduler.selectedOptions[0].hidden) scheduler.value = "";
    scheduler.options[0].textContent = `the model's (${given.scheduler || schema.scheduler.default})`;
    const flux = model.family === "flux";
    const negative = $("#negative-field", form);
    negative.hidden = flux && model.variant === "fill";
    if (negative.hidden) form.elements.negative_prompt.value = "";
    negative.querySelector("span").textContent = flux ? "Negative prompt (with True CFG above 1)" : "Negative prompt";
    const trueCfg = $("#true-cfg-field", form);
    trueCfg.hidden = !flux || model.variant === "fill";
    if (trueCfg.hidden) form.elements.true_cfg_scale.value = "";
  };
  form.elements.model.addEventListener("change", applyFamily);
  applyFamily();
  const live = h("div", { id: "submitted" });
  page.view.append(h("h1", {}, "Submit"), form, live);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const problem = $("#submit-error");
    problem.hidden = true;
    for (const field of form.querySelectorAll(".invalid")) field.classList.remove("invalid");
    const body = {};
    for (const [name, value] of new FormData(form)) {
      const text = String(value).trim();
      if (text === "" && name !== "prompt") continue;
      body[name] = schema[name] && ["integer", "number"].includes(kindOf(schema[name])) ? Number(text) : text;
    }
    Object.assign(body, inputs.fields(), loras.fields());
    const button = $("#submit-button");
    button.disabled = true;
    try {
      const job = await page.api("/v1/jobs", { method: "POST", body });
      notify("Queued");
      const panel = h("div", { class: "card submitted", dataset: { id: job.id } });
      live.prepend(panel);
      panel.before(h("h2", {}, h("a", { href: `#/jobs/${job.id}` }, `Job ${job.id.slice(0, 10)}…`)));
      showJobLive(page, panel, job);
    } catch (error) {
      if (error.name === "AbortError") return;
      problem.textContent = error.message;
      problem.hidden = false;
      const field = error.param && form.elements[error.param === "size" ? "width" : error.param];
      if (field) {
        field.classList.add("invalid");
        field.focus();
      }
    } finally {
      button.disabled = false;
    }
  });
}

/** A job's stored input (`init` or `mask`) as a data URL. */
async function jobInput(page, jobId, name) {
  const headers = {};
  const response = await fetch(`/v1/jobs/${jobId}/inputs/${name}`, { headers, signal: page.signal });
  if (!response.ok) throw new Error(`the job's ${name} image cannot be read (${response.status})`);
  const blob = await response.blob();
  return await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** The Submit form's image input: a file (chosen or dropped), its strength, and a mask
 * painted over it (brush, eraser, clear; white = repaint). */
function imageInputs(strength) {
  let source = null;  // the input as a data URL
  let painted = false;
  const file = h("input", { type: "file", id: "f-init", accept: "image/png,image/jpeg,image/webp" });
  const shown = h("output", { id: "strength-value" }, String(strength ?? 0.75));
  const slider = h("input", { type: "range", id: "f-strength", min: 0.05, max: 1, step: 0.05,
    value: strength ?? 0.75, oninput: () => setText(shown, slider.value) });
  const picture = h("img", { id: "init-preview", alt: "the input image" });
  const canvas = h("canvas", { id: "f-mask", class: "mask" });
  const pen = canvas.getContext("2d");
  let tool = "brush";
  const size = h("input", { type: "range", id: "brush-size", min: 2, max: 64, value: 16 });
  const toolButton = (name, text) => h("button", { type: "button", class: `quiet tool-${name}`,
    onclick: () => { tool = name; } }, text);
  const painter = h("div", { class: "painter", id: "painter", hidden: true },
    h("div", { class: "canvas-stack" }, picture, canvas),
    h("div", { class: "buttons" }, toolButton("brush", "Brush"), toolButton("eraser", "Eraser"),
      h("button", { type: "button", class: "quiet", id: "mask-clear", onclick: () => {
        pen.clearRect(0, 0, canvas.width, canvas.height);
        painted = false;
      } }, "Clear mask"),
      h("label", { class: "inline" }, h("span", {}, "Brush"), size),
      h("button", { type: "button", class: "quiet", id: "init-remove", onclick: () => show(null, null) },
        "Remove image")),
    h("small", { class: "muted" }, "Paint where the image should change (inpainting); leave the mask empty to change it all (img2img)."));
  let drawing = false;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
      (event.clientY - box.top) * canvas.height / box.height];
  };
  const stroke = (event) => {
    if (!drawing) return;
    const [x, y] = at(event);
    pen.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
    pen.fillStyle = "rgba(255, 255, 255, 1)";
    pen.beginPath();
    pen.arc(x, y, Number(size.value) * canvas.width / Math.max(1, canvas.getBoundingClientRect().width), 0, 2 * Math.PI);
    pen.fill();
    if (tool === "brush") painted = true;
  };
  canvas.addEventListener("pointerdown", (event) => { drawing = true; canvas.setPointerCapture(event.pointerId); stroke(event); });
  canvas.addEventListener("pointermove", stroke);
  canvas.addEventListener("pointerup", () => { drawing = false; });
  const show = async (url, mask) => {
    source = url;
    painted = false;
    painter.hidden = !url;
    if (!url) {
      file.value = "";
      return;
    }
    picture.src = url;
    await picture.decode();
    canvas.width = picture.naturalWidth;
    canvas.height = picture.naturalHeight;
    pen.clearRect(0, 0, canvas.width, canvas.height);
    if (mask) {  // white in a stored mask: paint it back
      const marks = h("img", { src: mask });
      await marks.decode();
      const scratch = h("canvas", { width: canvas.width, height: canvas.height });
      const context = scratch.getContext("2d");
      context.drawImage(marks, 0, 0, canvas.width, canvas.height);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      for (let i = 0; i < pixels.data.length; i += 4) {  // white, as opaque as the mask is bright
        pixels.data[i + 3] = pixels.data[i];
        pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 255;
      }
      pen.putImageData(pixels, 0, 0);
      painted = true;
    }
  };
  const read = (chosen) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(chosen);
  });
  file.addEventListener("change", async () => file.files[0] && show(await read(file.files[0]), null));
  const element = h("fieldset", { class: "image-input" }, h("legend", {}, "Image input (optional)"),
    h("div", { class: "row" },
      h("label", { for: "f-init", class: "drop" }, h("span", {}, "Start from an image (drop or choose)"), file),
      h("label", { for: "f-strength" }, h("span", {}, "Strength "), slider, shown)),
    painter);
  element.addEventListener("dragover", (event) => event.preventDefault());
  element.addEventListener("drop", async (event) => {
    event.preventDefault();
    const chosen = event.dataTransfer?.files?.[0];
    if (chosen) await show(await read(chosen), null);
  });
  return {
    element,
    load: show,
    fields() {
      if (!source) return {};
      const fields = { init_image: source, strength: Number(slider.value) };
      if (painted) {  // the painted strokes as white on black, at the image's size
        const mask = h("canvas", { width: canvas.width, height: canvas.height });
        const context = mask.getContext("2d");
        context.fillStyle = "#000";
        context.fillRect(0, 0, mask.width, mask.height);
        context.drawImage(canvas, 0, 0);
        fields.mask_image = mask.toDataURL("image/png");
      }
      return fields;
    },
  };
}

/** The Submit form's LoRA picker: installed LoRAs, each with a weight. */
function loraPicker(installed, chosen) {
  const list = h("ul", { class: "lora-list", id: "lora-list" });
  const add = (name, scale) => {
    const weight = h("input", { type: "number", class: "lora-scale", min: -4, max: 4, step: 0.05, value: scale });
    list.append(h("li", { dataset: { name } }, h("code", {}, name), " ", weight,
      h("button", { type: "button", class: "quiet", onclick: (event) => event.target.closest("li").remove() }, "Remove")));
  };
  for (const lora of chosen) add(lora.name, lora.scale);
  const select = h("select", { id: "f-lora" }, h("option", { value: "" }, installed.length ? "add a LoRA…" : "no LoRAs installed"),
    installed.map((lora) => h("option", { value: lora.id }, `${lora.id} (${lora.family})`)));
  select.addEventListener("change", () => {
    if (select.value && !list.querySelector(`li[data-name="${CSS.escape(select.value)}"]`)) add(select.value, 1);
    select.value = "";
  });
  return {
    element: h("fieldset", { class: "loras", hidden: !installed.length && !chosen.length }, h("legend", {}, "LoRAs"), select, list),
    fields() {
      const loras = [...list.querySelectorAll("li")].map((item) => ({
        name: item.dataset.name, scale: Number(item.querySelector(".lora-scale").value) }));
      return loras.length ? { loras } : {};
    },
  };
}

// -- API docs --------------------------------------------------------------------------------------

async function docsPage(page) {
  const document_ = await openapi();
  const base = location.origin;
  const locked = keysRequired(document_);
  const sections = Object.entries(document_.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, operation]) => {
      const body = operation.requestBody?.content?.["application/json"];
      const example = body?.example;
      const url = base + path.replace(/\{(\w+)\}/g, (_, name) => name.toUpperCase());
      const curl = [
        `curl -sS${method === "get" ? "" : ` -X ${method.toUpperCase()}`} '${url}'`,
        operation.security ? `  -H "Authorization: Bearer $ALICE_API_KEY"` : null,
        example ? `  -H 'Content-Type: application/json'` : null,
        example ? `  -d '${JSON.stringify(example)}'` : null,
      ].filter(Boolean).join(" \\\n");
      const fields = body?.schema?.properties || {};
      return h("section", { class: "operation", id: `${method}-${path}` },
        h("h2", {}, h("span", { class: `method ${method}` }, method.toUpperCase()), " ", h("code", {}, path),
          operation.security ? h("span", { class: "badge key" }, "key") : ""),
        h("p", {}, operation.summary),
        operation.description.split("\n\n").slice(1).map((text) => h("p", { class: "small muted" }, text)),
        Object.keys(fields).length ? h("table", { class: "fields" },
          h("thead", {}, h("tr", {}, ["Field", "Type", "Limits", "Default", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, Object.entries(fields).map(([name, field]) => h("tr", {},
            h("td", {}, h("code", {}, name), (body.schema.required || []).includes(name) ? " *" : ""),
            h("td", {}, kindOf(field)),
            h("td", {}, limits(field)),
            h("td", {}, field.default ?? ""),
            h("td", { class: "small" }, field.description || ""))))) : "",
        h("pre", { class: "example" }, curl));
    }),
  );
  page.view.append(
    h("h1", {}, "API"),
    h("p", {}, "Every route this server answers, from ", h("a", { href: "/openapi.json" }, "/openapi.json"),
      `. ${locked ? "Routes marked key need Authorization: Bearer <key> (or X-Api-Key)." : "This server asks for no API key."}`,
      " Errors are JSON: ", h("code", {}, '{"error": {"message", "type", "code"}}'), "."),
    h("nav", { class: "toc" }, Object.entries(document_.paths).flatMap(([path, methods]) =>
      Object.keys(methods).map((method) => h("a", { href: `#/docs`, onclick: (event) => {
        event.preventDefault();
        document.getElementById(`${method}-${path}`).scrollIntoView();
      } }, `${method.toUpperCase()} ${path}`)))),
    ...sections,
  );
}

function limits(field) {
  const parts = [];
  if (field.enum) parts.push(field.enum.join(", "));
  if (field.minimum !== undefined || field.maximum !== undefined) {
    parts.push(`${field.minimum ?? ""}..${field.maximum ?? ""}`);
  }
  if (field.multipleOf) parts.push(`×${field.multipleOf}`);
  if (field.maxLength) parts.push(`≤ ${field.maxLength} chars`);
  return parts.join(" ");
}

// -- admin ----------------------------------------------------------------------------------------

/** The Admin page: keys (a new one shown once), invites, web sessions, storage use and the
 * effective configuration (every secret masked by the server). */
async function adminPage(page) {
  const keys = h("section", { id: "admin-keys" });
  const invites = h("section", { id: "admin-invites" });
  const sessions = h("section", { id: "admin-sessions" });
  const storage = h("section", { id: "admin-storage" });
  const config = h("section", { id: "admin-config" });
  page.view.append(h("h1", {}, "Admin"), keys, invites, sessions, storage, config);
  const shownOnce = (label, secret) => h("p", { class: "once" }, `${label} (shown this once): `,
    h("code", { class: "secret" }, secret), " ",
    h("button", { type: "button", class: "small quiet", onclick: () => copyText(secret) }, "Copy"));
  const noKeys = (section, title, error) => {
    section.replaceChildren(h("h2", {}, title), h("p", { class: "muted" }, error.message));
  };

  const drawKeys = async (made) => {
    let list;
    try {
      list = await page.api("/v1/auth/keys");
    } catch (error) {
      if (error.status !== 403) throw error;
      return noKeys(keys, "API keys", error);
    }
    const name = h("input", { id: "new-key-name", placeholder: "name", required: true, maxlength: 64 });
    const isAdmin = h("input", { type: "checkbox", id: "new-key-admin" });
    const form = h("form", { class: "inline", id: "new-key", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const answer = await page.api("/v1/auth/keys/generate", { method: "POST",
          body: { name: name.value.trim(), isAdmin: isAdmin.checked } });
        await drawKeys(answer);
      } catch (error) {
        page.problem(error);
      }
    } }, name, h("label", {}, isAdmin, " admin"), h("button", { type: "submit" }, "Make key"));
    const rows = list.data.map((key) => h("tr", { dataset: { name: key.name } },
      h("td", { "data-label": "Name" }, key.name),
      h("td", { "data-label": "Role" }, key.role),
      h("td", { "data-label": "From" }, key.source),
      h("td", { "data-label": "Made" }, key.createdAt ? when(key.createdAt) : "—"),
      h("td", { "data-label": "Last used" }, key.lastUsed ? age(key.lastUsed) : "—"),
      h("td", { "data-label": "State" }, badge(key.enabled ? "ok" : "revoked")),
      h("td", { "data-label": "" }, key.id && key.enabled
        ? actionButton(page, "Revoke", { class: "small quiet revoke" }, async () => {
          if (!confirm(`Revoke ${key.name}? Its requests and sessions are refused from now on.`)) return;
          await page.api(`/v1/auth/keys/${key.id}/revoke`, { method: "POST", body: {} });
          notify(`${key.name} revoked`);
          await drawKeys();
        })
        : "")));
    keys.replaceChildren(h("h2", {}, "API keys"),
      made ? shownOnce(`The key of ${made.info.name}`, made.key) : "",
      h("table", { class: "models" },
        h("thead", {}, h("tr", {}, ["Name", "Role", "From", "Made", "Last used", "State", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)),
      form);
  };

  const drawInvites = async (made) => {
    let list;
    try {
      list = await page.api("/v1/auth/invites");
    } catch (error) {
      if (error.status !== 403) throw error;
      return noKeys(invites, "Invites", error);
    }
    const uses = h("input", { type: "number", id: "invite-uses", min: 1, max: 1000, value: 1, "aria-label": "Uses" });
    const form = h("form", { class: "inline", id: "new-invite", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const answer = await page.api("/v1/auth/invites", { method: "POST",
          body: { uses: Number(uses.value), expiresHours: 168 } });
        await drawInvites(answer);
      } catch (error) {
        page.problem(error);
      }
    } }, h("label", {}, "Uses ", uses), h("button", { type: "submit" }, "Make invite (a week)"));
    invites.replaceChildren(h("h2", {}, "Invites"),
      made ? shownOnce("The invite code", made.code) : "",
      list.data.length
        ? h("ul", { class: "plain" }, list.data.map((invite) => h("li", {},
          h("code", {}, `${invite.hint}…`), ` ${invite.uses_remaining} use(s) left`,
          invite.expires_at ? `, until ${when(invite.expires_at)} ` : " ",
          actionButton(page, "Delete", { class: "small quiet" }, async () => {
            await page.api(`/v1/auth/invites/${invite.id}`, { method: "DELETE" });
            await drawInvites();
          }))))
        : h("p", { class: "muted" }, "No open invites."),
      form);
  };

  const drawSessions = async () => {
    let list;
    try {
      list = await page.api("/v1/auth/sessions");
    } catch (error) {
      if (error.status !== 403) throw error;
      return noKeys(sessions, "Web sessions", error);
    }
    sessions.replaceChildren(h("h2", {}, "Web sessions"),
      h("table", { class: "models" },
        h("thead", {}, h("tr", {}, ["Who", "Role", "Since", "Last seen", "Ends", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.data.map((session) => h("tr", { dataset: { name: session.name } },
          h("td", { "data-label": "Who" }, session.name),
          h("td", { "data-label": "Role" }, session.role),
          h("td", { "data-label": "Since" }, when(session.created_at)),
          h("td", { "data-label": "Last seen" }, age(session.last_seen_at)),
          h("td", { "data-label": "Ends" }, when(session.expires_at)),
          h("td", { "data-label": "" }, actionButton(page, "End", { class: "small quiet end-session" }, async () => {
            await page.api(`/v1/auth/sessions/${session.id}`, { method: "DELETE" });
            notify(`${session.name}'s session ended`);
            await drawSessions();
          })))))));
  };

  const drawStorage = async () => {
    const used = await page.api("/v1/admin/storage");
    const rows = ["outbox", "models", "inputs", "inbox", "database"].map((name) => {
      const part = used[name];
      return h("tr", { dataset: { part: name } },
        h("td", { "data-label": "Part" }, name),
        h("td", { "data-label": "Path" }, h("code", {}, part.path || "(the database server)")),
        h("td", { "data-label": "Size" }, part.bytes === null ? "—" : megabytes(part.bytes)),
        h("td", { "data-label": "Files" }, part.files ?? "—"),
        h("td", { "data-label": "Disk free" }, part.disk ? gib(part.disk.free) : "—"));
    });
    storage.replaceChildren(h("h2", {}, "Storage"),
      h("table", { class: "models" },
        h("thead", {}, h("tr", {}, ["Part", "Path", "Size", "Files", "Disk free"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)),
      h("p", { class: "small muted" }, `In all ${megabytes(used.total_bytes)}.`));
  };

  const drawConfig = async () => {
    const effective = await page.api("/v1/admin/config");
    config.replaceChildren(h("h2", {}, "Configuration"),
      h("p", { class: "small muted" }, effective.config_file ? `From ${effective.config_file} and the environment; ` : "Embedded defaults and the environment; ",
        "keys and tokens are shown as ***."),
      h("pre", { class: "json", id: "admin-config-json" }, JSON.stringify(effective, null, 2)));
  };
  await Promise.all([drawKeys(), drawInvites(), drawSessions(), drawStorage(), drawConfig()]);
}

// -- start -----------------------------------------------------------------------------------------

setUpKeyDialog();
setUpLightbox();
window.addEventListener("hashchange", route);
whoAmI().catch(() => null).then(route);
