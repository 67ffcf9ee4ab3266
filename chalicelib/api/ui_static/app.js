// c3-render operators' page: polls the API with the key typed in once (kept in this tab's
// sessionStorage) and shows jobs (every tenant's with an operator key), one job's detail with
// its actions (cancel, retry, redeliver: the API's own routes, after a confirmation), /health
// with the workers, and the last hour's plots from /stats (SVG drawn here, nothing loaded from
// elsewhere). Everything from the API is put on the page as text nodes or attribute values,
// never parsed as HTML. The key only ever travels in a header, never in a URL.
"use strict";

(() => {
  const KEY_STORE = "c3-render-key";
  const POLL_MS = 2000;
  const QUEUE_LOOKUPS = 10; // queued jobs per poll whose position is read from GET /status
  const STATS_MS = 10000; // GET /stats at most this often (its minutes change once a minute)
  const ERROR_CHARS = 60; // the list's error column: this much, the whole text in the detail
  const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const FINAL = new Set(["success", "failed", "cancelled", "timed_out"]);
  // The API's base: "" at the root, "/prod" under an API Gateway stage.
  const BASE = location.pathname.replace(/\/ui\/?$/, "");
  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    generation: 0, // bumped on every sign-in/out: answers of an older one are dropped
    timer: null,
    busy: false,
    limit: 25,
    rows: new Map(), // job id -> {row, sig, job}
    positions: new Map(), // job id -> {value, approximate}
    open: null, // {id, final, result}
    wanted: null, // a job id from the URL, opened once signed in
    operator: false, // GET /jobs answered scope "all": an operator key
    statsAt: 0, // when /stats was last read
  };

  // ---- DOM helpers ---------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child)); // a string becomes a text node
    }
    return node;
  }

  function show(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }

  /** An http(s) URL as a string, or null: nothing else goes into src or href. */
  function safeUrl(raw) {
    try {
      const url = new URL(String(raw), location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function words(name) {
    return String(name).replace(/_/g, " ");
  }

  function duration(seconds, precise = false) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    if (precise && seconds < 10) return `${Math.max(0, seconds).toFixed(1)} s`;
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const two = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
    if (s < 3600) return two(Math.floor(s / 60), "min", s % 60, "s");
    if (s < 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
    return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
  }

  function clock(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? "—" : new Date(t).toLocaleString();
  }

  function timeOnly(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? "—" : new Date(t).toLocaleTimeString();
  }

  function badge(status) {
    return el("span", { class: `badge s-${status}` }, words(status));
  }

  // ---- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, post) {
    let resp;
    const headers = { "X-C3-Render-Key": state.key || "", Accept: "application/json" };
    const init = { headers, cache: "no-store" };
    if (post) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      Object.assign(headers, post.headers || {});
      init.body = JSON.stringify(post.body || {});
    }
    try {
      resp = await fetch(BASE + path, init);
    } catch (err) {
      throw new ApiError(0, `the API did not answer (${err.message})`, null);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const said = body && typeof body.error === "string" ? body.error : resp.statusText;
      throw new ApiError(resp.status, `HTTP ${resp.status}: ${said}`, body);
    }
    return body;
  }

  function jobsPath() {
    const query = new URLSearchParams({ limit: String(state.limit) });
    const status = $("filter-status").value;
    const type = $("filter-type").value;
    if (status) query.set("status", status);
    if (type) query.set("type", type);
    return `/jobs?${query}`;
  }

  // ---- signing in and out --------------------------------------------------------------

  function signIn(key) {
    state.key = key;
    state.generation += 1;
    sessionStorage.setItem(KEY_STORE, key);
    show($("login-error"), "");
    $("key-submit").disabled = true;
    $("key-submit").textContent = "Checking…";
    schedule(0);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.generation += 1;
    clearTimeout(state.timer);
    closeJob();
    clearData();
    showDashboard(false);
    $("key").value = "";
    show($("login-error"), message);
    $("key").focus();
  }

  function clearData() {
    $("job-rows").replaceChildren();
    $("health-body").replaceChildren();
    $("worker-rows").replaceChildren();
    for (const id of ["plot-finished", "plot-latency", "plot-gpu"]) {
      $(id).querySelector("svg").replaceChildren();
      $(id).querySelector(".plot-note").textContent = "";
    }
    state.statsAt = 0;
    for (const prefix of ["dead", "rejected"]) $(`${prefix}-rows`).replaceChildren();
    setOperator(false);
    state.rows.clear();
    state.positions.clear();
    $("jobs-empty").hidden = true;
    $("more").hidden = true;
  }

  /** The dashboard (signed in) or the key form (signed out); the form's button ready again. */
  function showDashboard(on) {
    $("login").hidden = on;
    for (const id of ["dashboard", "live", "change-key", "search"]) $(id).hidden = !on;
    $("key-submit").disabled = false;
    $("key-submit").textContent = "Show jobs";
  }

  function signedIn() {
    showDashboard(true);
    if (state.wanted) {
      const id = state.wanted;
      state.wanted = null;
      openJob(id);
    }
  }

  function refused(err) {
    return `The API refused this key (${err.message}). Check it and enter it again.`;
  }

  // ---- polling -------------------------------------------------------------------------

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(tick, delay);
  }

  async function tick() {
    const generation = state.generation;
    if (!state.key) return;
    if (document.hidden || state.busy) {
      schedule(POLL_MS);
      return;
    }
    state.busy = true;
    try {
      const [list, health] = await Promise.all([
        api(jobsPath()),
        api("/health").catch((err) => ({ unavailable: err.message })),
      ]);
      if (generation !== state.generation) return;
      if ($("dashboard").hidden) signedIn();
      setOperator(list.scope === "all");
      renderJobs(list);
      renderHealth(health);
      refreshStats(generation);
      await Promise.all([refreshPositions(list.jobs, generation), refreshJob(generation)]);
      if (generation !== state.generation) return;
      show($("poll-error"), "");
      $("live").classList.remove("stale");
      $("live-text").textContent = `live · ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (generation !== state.generation) return;
      if (err.status === 401) {
        signOut(refused(err));
        return;
      }
      if ($("dashboard").hidden) {
        // Not signed in yet: nothing to show but the reason.
        $("key-submit").disabled = false;
        $("key-submit").textContent = "Show jobs";
        show($("login-error"), `Could not list jobs: ${err.message}`);
        state.key = null;
        sessionStorage.removeItem(KEY_STORE);
        return;
      }
      show($("poll-error"), `Could not refresh: ${err.message}. Retrying…`);
      $("live").classList.add("stale");
      $("live-text").textContent = "retrying";
    } finally {
      state.busy = false;
      if (generation === state.generation && state.key) schedule(POLL_MS);
    }
  }

  // ---- the jobs list -------------------------------------------------------------------

  function phaseText(job) {
    if (!job.phase) return "—";
    const progress = typeof job.progress === "number" ? ` ${Math.round(job.progress * 100)}%` : "";
    return words(job.phase) + progress;
  }

  function webhookText(hook) {
    if (!hook) return "—";
    const n = hook.attempts || 0;
    if (hook.status === "delivered") return n > 1 ? `delivered (${n} attempts)` : "delivered";
    if (hook.status === "failed") return `failed (${n} attempts)`;
    return n ? `pending (${n} tried)` : "pending";
  }

  function ageOf(job) {
    return duration((Date.now() - Date.parse(job.created_at)) / 1000);
  }

  function position(value, approximate) {
    if (approximate) return `≥ ${value} ahead`;
    return value === 0 ? "next" : `${value} ahead`;
  }

  function queueText(job) {
    if (job.status !== "queued") return "—";
    const pos = state.positions.get(job.id);
    return pos ? position(pos.value, pos.approximate) : "queued";
  }

  function durationOf(job) {
    const start = Date.parse(job.started_at);
    if (isNaN(start)) return "—";
    const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
    return duration((end - start) / 1000, true) + (job.finished_at ? "" : " so far");
  }

  /** The cost block (when the API has one): its amount in US dollars, or "—". */
  function costText(cost) {
    if (cost === null || cost === undefined) return "—";
    const amount = typeof cost === "number" ? cost
      : ["usd", "total_usd", "amount_usd", "total", "amount"].map((k) => cost[k]).find((v) => typeof v === "number");
    if (typeof amount !== "number") return "—";
    return `$${amount < 0.01 && amount > 0 ? amount.toFixed(4) : amount.toFixed(2)}`;
  }

  function shortError(error) {
    if (!error) return "—";
    const text = String(error).replace(/\s+/g, " ");
    return text.length > ERROR_CHARS ? `${text.slice(0, ERROR_CHARS - 1)}…` : text;
  }

  function setOperator(on) {
    if (on && !state.operator) state.statsAt = 0; // the incidents at once
    state.operator = on;
    document.body.classList.toggle("operator", on);
    $("scope-note").hidden = !on;
  }

  function jobRow(job) {
    const href = `#job/${encodeURIComponent(job.id)}`;
    const hook = job.webhook || null;
    return el(
      "tr",
      {
        class: "job",
        dataset: { id: job.id, status: job.status, type: job.type },
        onclick: (event) => {
          if (!event.target.closest("a")) location.hash = href;
        },
      },
      el("td", { "data-label": "Job", class: "id" }, el("a", { href, title: job.id }, job.id.slice(0, 8))),
      el("td", { "data-label": "Tenant", class: "tenant operator-only", title: job.tenant }, job.tenant ? job.tenant.replace(/^key-sha256:/, "") : "—"),
      el("td", { "data-label": "Type", class: "type" }, job.type || "—"),
      el("td", { "data-label": "Status", class: "status" }, badge(job.status)),
      el("td", { "data-label": "Phase", class: "phase" }, phaseText(job)),
      el("td", { "data-label": "Queue", class: "queue" }, queueText(job)),
      el("td", { "data-label": "Age", class: "age", title: clock(job.created_at) }, ageOf(job)),
      el("td", { "data-label": "Duration", class: "duration" }, durationOf(job)),
      el("td", { "data-label": "Attempts", class: "attempts" }, String(job.attempts ?? 0)),
      el(
        "td",
        { "data-label": "Webhook", class: `webhook ${hook ? `w-${hook.status}` : ""}`, title: hook && hook.last_error },
        webhookText(hook),
      ),
      el("td", { "data-label": "Cost", class: "cost cost-col" }, costText(job.cost)),
      el("td", { "data-label": "Error", class: `error-cell${job.error ? " has-error" : ""}`, title: job.error }, shortError(job.error)),
    );
  }

  function renderJobs(list) {
    const body = $("job-rows");
    const seen = new Set();
    for (const job of list.jobs) {
      seen.add(job.id);
      const sig = JSON.stringify(job);
      let entry = state.rows.get(job.id);
      if (!entry || entry.sig !== sig) {
        const row = jobRow(job);
        if (entry) entry.row.replaceWith(row);
        entry = { row, sig, job };
        state.rows.set(job.id, entry);
      } else {
        entry.row.querySelector(".age").textContent = ageOf(job);
        entry.row.querySelector(".duration").textContent = durationOf(job);
        entry.row.querySelector(".queue").textContent = queueText(job);
      }
      body.append(entry.row); // moves an existing row into list order
    }
    for (const [id, entry] of state.rows) {
      if (!seen.has(id)) {
        entry.row.remove();
        state.rows.delete(id);
      }
    }
    $("jobs-empty").hidden = list.jobs.length > 0;
    // The cost column only once the API reports costs (its cost block).
    document.body.classList.toggle("costs", list.jobs.some((job) => job.cost !== undefined && job.cost !== null));
    $("more").hidden = !list.next_cursor || state.limit >= 100;
  }

  /** GET /jobs does not count queue positions: read them for the oldest queued jobs shown. */
  async function refreshPositions(jobs, generation) {
    const queued = jobs.filter((job) => job.status === "queued").slice(-QUEUE_LOOKUPS);
    const views = await Promise.all(
      queued.map((job) => api(`/status/${encodeURIComponent(job.id)}`).catch(() => null)),
    );
    if (generation !== state.generation) return;
    state.positions.clear();
    for (const view of views) {
      if (view && view.status === "queued" && typeof view.queue_position === "number") {
        state.positions.set(view.id, { value: view.queue_position, approximate: !!view.queue_position_approximate });
      }
    }
    for (const entry of state.rows.values()) {
      entry.row.querySelector(".queue").textContent = queueText(entry.job);
    }
  }

  // ---- health --------------------------------------------------------------------------

  const HEALTH = {
    queue: {
      title: "Queue",
      fields: {
        messages: "waiting",
        in_flight: "in flight",
        delayed: "delayed",
        dead_letters: "dead letters",
        oldest_queued_seconds: "oldest queued",
        lanes: "by lane: waiting / in flight",
      },
    },
    jobs: { title: "Jobs", fields: { queued: "queued", running: "running" } },
    workers: { title: "Workers", fields: { alive: "alive" } },
    gpus: {
      title: "GPU instances",
      fields: {
        instances: "instances",
        busy: "busy",
        idle: "idle",
        billed_seconds: "billed, rented now",
        idle_seconds: "idle for",
        by_state: "by state",
      },
    },
  };
  const HIDDEN_FIELDS = new Set(["approximate", "fleet", "list"]);

  // One line per GPU instance: slot, state, whether a job runs on it, billed and idle time.
  function fleetList(fleet) {
    if (!Array.isArray(fleet) || !fleet.length) return null;
    const rows = fleet.map((gpu) => {
      const parts = [gpu.state, gpu.busy ? "busy" : gpu.state === "running" ? "idle" : null,
        gpu.ahead ? "launched ahead" : null, `billed ${duration(gpu.billed_seconds)}`,
        gpu.idle_seconds !== null && gpu.idle_seconds !== undefined ? `idle ${duration(gpu.idle_seconds)}` : null];
      return el("li", { dataset: { slot: String(gpu.slot) } },
        el("span", { class: "slot" }, String(gpu.slot)), ` ${parts.filter(Boolean).join(" · ")}`);
    });
    return el("ul", { class: "fleet" }, rows);
  }

  function formatValue(name, value, group) {
    if (value === null || value === undefined) return "—";
    if (name.endsWith("_seconds")) {
      return Array.isArray(value) ? (value.length ? value.map(duration).join(", ") : "—") : duration(value);
    }
    if (Array.isArray(value)) return value.length ? value.map((v) => formatValue("", v)).join(", ") : "—";
    if (name === "lanes" && typeof value === "object") {
      // The priority lanes' queues, highest first: "high 1/0 · normal 4/1 · low 2/0".
      return Object.entries(value).map(([lane, d]) => `${lane} ${d.messages}/${d.in_flight}`).join(" · ");
    }
    if (typeof value === "object") {
      const parts = Object.entries(value).map(([k, v]) => `${words(k)} ${formatValue(k, v)}`);
      return parts.length ? parts.join(", ") : "none";
    }
    if (typeof value === "number" && group && group.approximate && (name === "queued" || name === "running")) {
      return `≥ ${value}`;
    }
    return String(value);
  }

  function stat(groupName, name, label, value, group) {
    const text = formatValue(name, value, group);
    const wide = typeof value === "object" && value !== null;
    const warn = (name === "dead_letters" && value > 0) || (groupName === "workers" && name === "alive" && value === 0);
    return el(
      "div",
      { class: `stat${wide ? " wide" : ""}${warn ? " warn" : ""}`, dataset: { stat: `${groupName}.${name}` } },
      el("span", { class: "value" }, text),
      el("span", { class: "label" }, label),
    );
  }

  function renderHealth(health) {
    const body = $("health-body");
    if (health.unavailable) {
      body.replaceChildren(el("p", { class: "error" }, `Health unavailable: ${health.unavailable}`));
      return;
    }
    const cards = [];
    const groups = Object.keys(health).filter((name) => health[name] && typeof health[name] === "object");
    const ordered = [...Object.keys(HEALTH).filter((g) => groups.includes(g)), ...groups.filter((g) => !HEALTH[g])];
    for (const groupName of ordered) {
      const group = health[groupName];
      const known = (HEALTH[groupName] || {}).fields || {};
      const names = [...Object.keys(known).filter((n) => n in group), ...Object.keys(group).filter((n) => !(n in known))];
      const stats = names
        .filter((n) => !HIDDEN_FIELDS.has(n))
        .map((n) => stat(groupName, n, known[n] || words(n), group[n], group));
      cards.push(
        el(
          "div",
          { class: "card", dataset: { group: groupName } },
          el("h3", {}, (HEALTH[groupName] || {}).title || words(groupName)),
          el("div", { class: "stats" }, stats),
          groupName === "gpus" ? fleetList(group.fleet) : null,
        ),
      );
    }
    body.replaceChildren(...cards);
    renderWorkers((health.workers || {}).list);
  }

  /** One row per worker beacon: its id, the job it runs (a link), its last beat. */
  function renderWorkers(list) {
    const workers = Array.isArray(list) ? list : [];
    $("worker-rows").replaceChildren(
      ...workers.map((w) => el(
        "tr",
        { class: "worker", dataset: { worker: String(w.id) } },
        el("td", { "data-label": "Worker", class: "worker-id" }, String(w.id)),
        el("td", { "data-label": "Current job", class: "worker-job" },
          w.job ? el("a", { href: `#job/${encodeURIComponent(w.job)}`, title: w.job }, String(w.job).slice(0, 8)) : "idle"),
        el("td", { "data-label": "Last beat", class: `worker-beat${w.last_beat_seconds > 45 ? " stale" : ""}` },
          `${duration(w.last_beat_seconds, true)} ago`),
      )),
    );
    $("workers-empty").hidden = workers.length > 0;
  }

  // ---- the last hour's plots (GET /stats), drawn as SVG here -----------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  const OUTCOMES = ["success", "failed", "cancelled", "timed_out"];
  const BOX = { w: 320, h: 140, left: 34, right: 6, top: 8, bottom: 18 };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const step = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 2.5, 5, 10].map((m) => m * step).find((v) => v >= value);
  }

  /** Axes for 60 minutes and 0..max: returns the scales. */
  function axes(root, max, unit) {
    const plotW = BOX.w - BOX.left - BOX.right;
    const plotH = BOX.h - BOX.top - BOX.bottom;
    const x = (i) => BOX.left + (plotW * i) / 60;
    const y = (v) => BOX.top + plotH - (plotH * Math.min(v, max)) / max;
    const label = (value) => (unit === "s" ? duration(value) : String(value));
    root.append(
      svg("line", { class: "grid", x1: BOX.left, x2: BOX.w - BOX.right, y1: y(max), y2: y(max) }),
      svg("line", { class: "grid", x1: BOX.left, x2: BOX.w - BOX.right, y1: y(max / 2), y2: y(max / 2) }),
      svg("line", { class: "axis", x1: BOX.left, x2: BOX.w - BOX.right, y1: y(0), y2: y(0) }),
      svg("text", { class: "tick", x: BOX.left - 3, y: y(max) + 3, "text-anchor": "end" }, label(max)),
      svg("text", { class: "tick", x: BOX.left - 3, y: y(0) + 3, "text-anchor": "end" }, "0"),
      svg("text", { class: "tick", x: BOX.left, y: BOX.h - 4 }, "60 min ago"),
      svg("text", { class: "tick", x: x(30), y: BOX.h - 4, "text-anchor": "middle" }, "30"),
      svg("text", { class: "tick", x: BOX.w - BOX.right, y: BOX.h - 4, "text-anchor": "end" }, "now"),
    );
    return { x, y, barW: plotW / 60 };
  }

  function plotFinished(minutes, hour) {
    const root = $("plot-finished").querySelector("svg");
    root.replaceChildren();
    const totals = minutes.map((m) => OUTCOMES.reduce((sum, o) => sum + (m.finished[o] || 0), 0));
    const { x, y, barW } = axes(root, niceMax(Math.max(...totals)), "");
    minutes.forEach((m, i) => {
      let base = 0;
      for (const outcome of OUTCOMES) {
        const value = m.finished[outcome] || 0;
        if (!value) continue;
        root.append(svg("rect", {
          class: `bar o-${outcome}`, x: x(i) + 0.5, width: Math.max(barW - 1, 1), y: y(base + value),
          height: Math.max(y(base) - y(base + value), 0.5), dataset: { minute: m.t, outcome, value },
        }, svg("title", {}, `${timeOnly(m.t)}: ${value} ${words(outcome)}`)));
        base += value;
      }
    });
    const sum = OUTCOMES.reduce((n, o) => n + (hour.finished[o] || 0), 0);
    $("plot-finished").querySelector(".plot-note").textContent = sum
      ? `${sum} in the hour: ${OUTCOMES.filter((o) => hour.finished[o]).map((o) => `${hour.finished[o]} ${words(o)}`).join(", ")}`
      : "No job finished in the last hour.";
  }

  function plotLatency(minutes, hour) {
    const root = $("plot-latency").querySelector("svg");
    root.replaceChildren();
    const series = [
      ["qw50", (m) => m.queue_wait.p50], ["qw95", (m) => m.queue_wait.p95],
      ["rt50", (m) => m.run_time.p50], ["rt95", (m) => m.run_time.p95],
    ];
    const values = minutes.flatMap((m) => series.map(([, get]) => get(m))).filter((v) => typeof v === "number");
    const { x, y, barW } = axes(root, niceMax(Math.max(0, ...values)), "s");
    for (const [name, get] of series) {
      let run = [];
      const flush = () => {
        if (run.length > 1) root.append(svg("polyline", { class: `line s-${name}`, points: run.join(" ") }));
        run = [];
      };
      minutes.forEach((m, i) => {
        const value = get(m);
        if (typeof value !== "number") {
          flush();
          return;
        }
        const px = x(i) + barW / 2;
        run.push(`${px.toFixed(1)},${y(value).toFixed(1)}`);
        root.append(svg("circle", { class: `pt s-${name}`, cx: px, cy: y(value), r: 1.6, dataset: { minute: m.t, series: name, value } },
          svg("title", {}, `${timeOnly(m.t)}: ${name.startsWith("qw") ? "queue wait" : "run time"} p${name.slice(2)} ${duration(value, true)}`)));
      });
      flush();
    }
    const q = (block) => (block.p50 === null ? "—" : `p50 ${duration(block.p50, true)}, p95 ${duration(block.p95, true)}`);
    $("plot-latency").querySelector(".plot-note").textContent =
      `Hour: queue wait ${q(hour.queue_wait)}; run time ${q(hour.run_time)}`;
  }

  function plotGpu(minutes, hour) {
    const root = $("plot-gpu").querySelector("svg");
    root.replaceChildren();
    const max = niceMax(Math.max(0, ...minutes.map((m) => m.gpu.billed_seconds), ...minutes.map((m) => m.gpu.busy_seconds)));
    const { x, y, barW } = axes(root, max, "s");
    minutes.forEach((m, i) => {
      for (const [kind, value] of [["billed", m.gpu.billed_seconds], ["busy", m.gpu.busy_seconds]]) {
        if (!value) continue;
        const inset = kind === "busy" ? barW * 0.25 : 0;
        root.append(svg("rect", {
          class: `bar g-${kind}`, x: x(i) + 0.5 + inset, width: Math.max(barW - 1 - 2 * inset, 0.5), y: y(value),
          height: Math.max(y(0) - y(value), 0.5), dataset: { minute: m.t, kind, value },
        }, svg("title", {}, `${timeOnly(m.t)}: ${duration(value)} ${kind}`)));
      }
    });
    const { billed_seconds: billed, busy_seconds: busy } = hour.gpu;
    $("plot-gpu").querySelector(".plot-note").textContent = billed
      ? `Hour: ${duration(billed)} billed, ${duration(busy)} busy (${Math.round((100 * busy) / billed)}%)`
      : "No GPU instance rented in the last hour.";
  }

  async function refreshStats(generation) {
    if (Date.now() - state.statsAt < STATS_MS) return;
    state.statsAt = Date.now();
    let stats;
    try {
      stats = await api("/stats");
    } catch (err) {
      if (generation !== state.generation) return;
      state.statsAt = 0;
      $("plot-finished").querySelector(".plot-note").textContent = `Plots unavailable: ${err.message}`;
      return;
    }
    if (generation !== state.generation || !stats || !Array.isArray(stats.minutes)) return;
    plotFinished(stats.minutes, stats.hour);
    plotLatency(stats.minutes, stats.hour);
    plotGpu(stats.minutes, stats.hour);
    if (state.operator) await refreshIncidents(generation);
  }

  // ---- operators: the last hour's dead letters and intake rejections (GET /incidents) ----

  async function refreshIncidents(generation) {
    let found;
    try {
      found = await api("/incidents");
    } catch (err) {
      if (generation !== state.generation) return;
      show($("dead-empty"), `Unavailable: ${err.message}`);
      return;
    }
    if (generation !== state.generation) return;
    const jobLink = (id) => (id ? el("a", { href: `#job/${encodeURIComponent(id)}`, title: id }, id.slice(0, 8)) : "—");
    incidentRows("dead", found.dead_letters, (e) => [timeOnly(e.at), jobLink(e.job_id), String(e.receive_count ?? "—"), words(e.outcome || "—")]);
    incidentRows("rejected", found.intake_rejections, (e) => [timeOnly(e.at), el("code", { title: e.message_id }, String(e.message_id || "—").slice(0, 12)), e.fields || "—", e.error || "—"]);
  }

  function incidentRows(prefix, block, cells) {
    const items = (block && block.items) || [];
    $(`${prefix}-rows`).replaceChildren(...items.map((entry) => el("tr", { class: "incident" }, cells(entry).map((c) => el("td", {}, c)))));
    const count = (block && block.count) || 0;
    $(`${prefix}-count`).textContent = count ? `(${count}${count > items.length ? `, ${items.length} shown` : ""})` : "";
    show($(`${prefix}-empty`), items.length ? "" : "None in the last hour.");
  }

  // ---- one job's detail ----------------------------------------------------------------

  function openJob(id) {
    if (!state.key) {
      state.wanted = id;
      return;
    }
    const dialog = $("detail");
    state.open = { id, final: false, result: false };
    $("detail-title").textContent = "Job";
    $("detail-body").replaceChildren(
      el("div", { id: "detail-top" }, el("p", { class: "hint" }, "Loading…")),
      el("div", { id: "detail-actions", class: "actions" }),
      el("p", { id: "action-result", role: "status", hidden: true }),
      el("div", { id: "detail-result" }),
      el("div", { id: "detail-more" }),
    );
    if (!dialog.open) dialog.showModal();
    refreshJob(state.generation).catch((err) => {
      if (err.status === 401) signOut(refused(err));
    });
  }

  function closeJob() {
    const dialog = $("detail");
    state.open = null;
    $("detail-body").replaceChildren(); // media elements stop when they leave the page
    if (dialog.open) dialog.close();
    if (location.hash.startsWith("#job/")) history.replaceState(null, "", location.pathname + location.search);
  }

  async function refreshJob(generation) {
    const open = state.open;
    if (!open || open.settled) return;
    let view;
    try {
      view = await api(`/status/${encodeURIComponent(open.id)}`);
    } catch (err) {
      if (state.open !== open || generation !== state.generation) return;
      if (err.status === 401) throw err;
      const message = err.status === 404 ? "No such job for this key." : `Could not read the job: ${err.message}`;
      $("detail-top").replaceChildren(el("p", { class: "error job-error", role: "alert" }, message));
      return;
    }
    if (state.open !== open || generation !== state.generation) return;
    renderDetail(view);
    renderActions(open, view);
    if (view.status === "success" && !open.result) {
      open.result = true;
      await loadResult(open, view, generation);
    } else if (FINAL.has(view.status) && view.status !== "success" && !open.result) {
      open.result = true;
      $("detail-result").replaceChildren(
        el("section", { class: "result" }, el("h3", {}, "Result"), el("p", { class: "hint" }, `No result: the job is ${words(view.status)}.`)),
      );
    }
    // A final job whose webhooks are settled changes no more: stop reading it (an action
    // on it starts reading it again).
    open.settled = FINAL.has(view.status) && !view.phase;
  }

  function renderDetail(view) {
    $("detail-title").textContent = `${view.type || "job"} job`;
    const top = [
      el(
        "div",
        { class: "summary" },
        badge(view.status),
        view.phase && view.phase !== view.status ? el("span", { class: "phase-now" }, words(view.phase)) : null,
        el("code", { class: "full-id" }, view.id),
      ),
    ];
    if (view.error) top.push(el("p", { class: "error job-error", role: "alert" }, view.error));
    if (typeof view.progress === "number") {
      top.push(
        el(
          "label",
          { class: "progress" },
          "Rendering ",
          el("progress", { max: "1", value: String(view.progress) }),
          ` ${Math.round(view.progress * 100)}%`,
        ),
      );
    }
    $("detail-top").replaceChildren(...top);

    const facts = [
      ["Attempts", String(view.attempts ?? 0)],
      ["Created", clock(view.created_at)],
      ["Started", view.started_at ? clock(view.started_at) : "—"],
      ["Finished", view.finished_at ? clock(view.finished_at) : "—"],
      ["Complete by", clock(view.complete_by)],
      ["Max time", duration(view.max_time)],
    ];
    if (view.status === "queued" && typeof view.queue_position === "number") {
      facts.push(["Queue position", position(view.queue_position, !!view.queue_position_approximate)]);
    }
    if (view.webhook) facts.push(["Webhook", hookDetail(view.webhook)]);
    if (view.start_webhook) facts.push(["Start webhook", hookDetail(view.start_webhook)]);
    const more = [el("section", {}, el("h3", {}, "Details"), definitions(facts))];
    if (view.retry_of) {
      more[0].append(
        el("p", { class: "hint" }, "Retry of ", el("a", { href: `#job/${encodeURIComponent(view.retry_of)}` }, view.retry_of)),
      );
    }
    more.push(el("section", {}, el("h3", {}, "Timeline"), timeline(view)));
    if (view.params && typeof view.params === "object") {
      more.push(el("section", { class: "params" }, el("h3", {}, "Parameters"), params(view.params)));
    }
    $("detail-more").replaceChildren(...more);
  }

  // ---- actions on the open job: the API's own routes, each after a confirmation ----------

  const ACTIONS = {
    cancel: {
      label: "Cancel job",
      when: (view) => view.status === "queued" || view.status === "running",
      ask: "Cancel this job? A running job is stopped by its worker within seconds; its webhook reports it.",
      confirm: "Yes, cancel it",
      run: (id) => api(`/job/${encodeURIComponent(id)}`, {
        body: { status: "cancelled", error: "Cancelled from the operators' page" } }),
      done: (answer) => answer.message || "Cancelled.",
    },
    retry: {
      label: "Retry",
      when: (view) => ["failed", "timed_out", "cancelled"].includes(view.status),
      ask: "Run this job's parameters again, as a new job?",
      confirm: "Yes, retry it",
      run: (id) => api(`/jobs/${encodeURIComponent(id)}/retry`, { headers: { "Idempotency-Key": newKey() } }),
      done: (answer) => answer,
    },
    redeliver: {
      label: "Redeliver webhook",
      when: (view) => FINAL.has(view.status) && !!view.webhook,
      ask: "Send this job's final webhook to its notify_url again?",
      confirm: "Yes, redeliver it",
      run: (id) => api(`/jobs/${encodeURIComponent(id)}/redeliver`, { body: {} }),
      done: (answer) => (answer && answer.message) || "Redelivery queued.",
    },
  };

  function newKey() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    return `ui-${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }

  function renderActions(open, view) {
    const sig = `${view.status}|${view.webhook ? view.webhook.status : ""}`;
    if (open.actionsSig === sig || open.confirming) return;
    open.actionsSig = sig;
    const buttons = Object.entries(ACTIONS)
      .filter(([, action]) => action.when(view))
      .map(([name, action]) => el("button", {
        type: "button", class: `action act-${name}`, dataset: { action: name },
        onclick: () => confirmAction(open, view, name),
      }, action.label));
    $("detail-actions").replaceChildren(...buttons);
  }

  function confirmAction(open, view, name) {
    const action = ACTIONS[name];
    open.confirming = true;
    const yes = el("button", { type: "button", class: "confirm-yes", dataset: { action: name } }, action.confirm);
    const no = el("button", { type: "button", class: "confirm-no secondary" }, "Back");
    no.addEventListener("click", () => {
      open.confirming = false;
      open.actionsSig = null;
      renderActions(open, view);
    });
    yes.addEventListener("click", async () => {
      yes.disabled = no.disabled = true;
      yes.textContent = "Working…";
      await runAction(open, view, name);
    });
    $("detail-actions").replaceChildren(el("div", { class: "confirm", role: "alertdialog" },
      el("p", {}, action.ask), yes, no));
    yes.focus();
  }

  async function runAction(open, view, name) {
    const action = ACTIONS[name];
    let message;
    let error = false;
    let link = null;
    try {
      const answer = await action.run(view.id);
      const done = action.done(answer);
      if (name === "retry") {
        message = "Retried as a new job: ";
        link = done.id;
      } else message = done;
    } catch (err) {
      if (err.status === 401) {
        signOut(refused(err));
        return;
      }
      error = true;
      const noRoute = err.status === 404 && err.body && /^No route/.test(err.body.error || "");
      message = noRoute ? `This API has no ${ACTIONS[name].label.toLowerCase()} route yet (${err.message}).`
        : `Could not ${action.label.toLowerCase()}: ${err.message}`;
    }
    if (state.open !== open) return;
    open.confirming = false;
    open.actionsSig = null;
    open.settled = false; // read the job again: its state or webhook changed
    const result = $("action-result");
    result.className = error ? "error" : "done";
    result.replaceChildren(message, link ? el("a", { href: `#job/${encodeURIComponent(link)}`, class: "new-job" }, link) : "");
    result.hidden = false;
    renderActions(open, view);
    schedule(0);
  }

  function hookDetail(hook) {
    return webhookText(hook) + (hook.last_error ? ` — last error: ${hook.last_error}` : "");
  }

  function definitions(pairs) {
    return el("dl", { class: "facts" }, pairs.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  }

  function timeline(view) {
    const entries = Object.entries(view.phases || {})
      .map(([phase, iso]) => ({ phase, iso, t: Date.parse(iso) }))
      .filter((e) => !isNaN(e.t))
      .sort((a, b) => a.t - b.t);
    const end = view.finished_at ? Date.parse(view.finished_at) : null;
    const items = entries.map((entry, i) => {
      const next = i + 1 < entries.length ? entries[i + 1].t : end;
      const ongoing = next === null || next < entry.t;
      const spent = ((ongoing ? Date.now() : next) - entry.t) / 1000;
      return el(
        "li",
        { dataset: { phase: entry.phase } },
        el("span", { class: "phase" }, words(entry.phase)),
        el("time", { datetime: entry.iso }, timeOnly(entry.iso)),
        el("span", { class: "spent" }, ongoing ? `${duration(spent)} so far` : duration(spent, true)),
      );
    });
    if (end !== null && !isNaN(end)) {
      items.push(
        el(
          "li",
          { class: "end", dataset: { phase: view.status } },
          el("span", { class: "phase" }, words(view.status)),
          el("time", { datetime: view.finished_at }, timeOnly(view.finished_at)),
          el("span", { class: "spent" }, ""),
        ),
      );
    }
    return items.length ? el("ol", { class: "timeline" }, items) : el("p", { class: "hint" }, "No phases yet.");
  }

  function params(values) {
    const pairs = Object.keys(values)
      .sort()
      .map((name) => {
        const value = values[name];
        let shown;
        if (value === "") shown = el("span", { class: "hint" }, "(empty)");
        else if (["string", "number", "boolean"].includes(typeof value)) shown = String(value);
        else if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
          shown = el("ol", { class: "plain" }, value.map((v) => el("li", {}, v)));
        } else shown = el("pre", {}, JSON.stringify(value, null, 2));
        return [words(name), shown];
      });
    return definitions(pairs);
  }

  function mediaKind(view, url) {
    if (view.type === "csm") return "audio";
    if (view.type === "portrait") return "video";
    const path = (() => {
      try {
        return new URL(url).pathname.toLowerCase();
      } catch {
        return "";
      }
    })();
    if (/\.(mp3|wav|flac|ogg|m4a)$/.test(path)) return "audio";
    if (/\.(mp4|webm|mov)$/.test(path)) return "video";
    return null;
  }

  async function loadResult(open, view, generation) {
    const box = $("detail-result");
    let result;
    try {
      result = await api(`/result/${encodeURIComponent(open.id)}`);
    } catch (err) {
      if (state.open !== open || generation !== state.generation) return;
      if (err.status === 401) throw err;
      open.result = false; // try again on the next poll
      box.replaceChildren(el("p", { class: "error" }, `Could not read the result: ${err.message}`));
      return;
    }
    if (state.open !== open || generation !== state.generation) return;
    const section = el("section", { class: "result" }, el("h3", {}, "Result"));
    if (typeof result.text === "string") {
      section.append(el("pre", { class: "result-text" }, result.text));
    } else {
      const url = safeUrl(result.result_url);
      const kind = url && mediaKind(view, url);
      if (kind) {
        const media = el(kind, { controls: true, preload: "metadata", src: url, playsinline: kind === "video" });
        const problem = el("p", { class: "error", role: "alert", hidden: true });
        media.addEventListener("error", () => {
          const code = media.error ? media.error.code : "?";
          show(problem, `The browser could not play this result (media error ${code}).`);
        });
        section.append(media, problem);
      }
      const link = safeUrl(result.result_link) || url;
      if (link) {
        section.append(
          el("p", {}, el("a", { href: link, target: "_blank", rel: "noopener noreferrer", download: "" }, "Download")),
        );
      }
    }
    box.replaceChildren(section);
  }

  // ---- wiring --------------------------------------------------------------------------

  function fromHash() {
    const match = location.hash.match(/^#job\/(.+)$/);
    if (!match) {
      if ($("detail").open) closeJob();
      return;
    }
    let id;
    try {
      id = decodeURIComponent(match[1]);
    } catch {
      return;
    }
    if (!state.open || state.open.id !== id) openJob(id);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-submit").disabled = false; // disabled in the HTML: without this script the form must not submit
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (!key) {
        show($("login-error"), "Enter a key.");
        return;
      }
      signIn(key);
    });
    $("change-key").addEventListener("click", () => signOut(""));
    $("search").addEventListener("submit", (event) => {
      event.preventDefault();
      const field = $("search-id");
      const id = field.value.trim().toLowerCase();
      field.setCustomValidity(JOB_ID.test(id) ? "" : "Enter a whole job id (36 characters, like 0b6e2f9c-4e8a-4c39-9a43-6f4d6c1d2e11).");
      if (!field.reportValidity()) return;
      location.hash = `#job/${encodeURIComponent(id)}`;
      if (state.open && state.open.id === id) refreshJob(state.generation).catch(() => {});
    });
    $("search-id").addEventListener("input", () => $("search-id").setCustomValidity(""));
    $("detail-close").addEventListener("click", closeJob);
    $("detail").addEventListener("close", () => {
      if (state.open) closeJob();
    });
    $("detail").addEventListener("click", (event) => {
      if (event.target === $("detail")) closeJob(); // a click on the backdrop
    });
    for (const id of ["filter-status", "filter-type"]) {
      $(id).addEventListener("change", () => {
        state.limit = 25;
        if (state.key) schedule(0);
      });
    }
    $("more").addEventListener("click", () => {
      state.limit = Math.min(100, state.limit * 2);
      schedule(0);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.key) schedule(0);
    });
    window.addEventListener("hashchange", fromHash);
    fromHash();
    const stored = sessionStorage.getItem(KEY_STORE);
    if (stored) signIn(stored);
    else $("key").focus();
  });
})();
