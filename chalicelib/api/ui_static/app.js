// c3-render operators' page: polls the API with the key typed in once (kept in this tab's
// sessionStorage) and shows jobs, one job's detail and /health. Everything from the API is
// put on the page as text nodes or attribute values, never parsed as HTML.
"use strict";

(() => {
  const KEY_STORE = "c3-render-key";
  const POLL_MS = 2000;
  const QUEUE_LOOKUPS = 10; // queued jobs per poll whose position is read from GET /status
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

  async function api(path) {
    let resp;
    try {
      resp = await fetch(BASE + path, {
        headers: { "X-C3-Render-Key": state.key || "", Accept: "application/json" },
        cache: "no-store",
      });
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
    state.rows.clear();
    state.positions.clear();
    $("jobs-empty").hidden = true;
    $("more").hidden = true;
  }

  /** The dashboard (signed in) or the key form (signed out); the form's button ready again. */
  function showDashboard(on) {
    $("login").hidden = on;
    for (const id of ["dashboard", "live", "change-key"]) $(id).hidden = !on;
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
      renderJobs(list);
      renderHealth(health);
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
      el("td", { "data-label": "Type", class: "type" }, job.type || "—"),
      el("td", { "data-label": "Status", class: "status" }, badge(job.status)),
      el("td", { "data-label": "Phase", class: "phase" }, phaseText(job)),
      el("td", { "data-label": "Queue", class: "queue" }, queueText(job)),
      el("td", { "data-label": "Age", class: "age", title: clock(job.created_at) }, ageOf(job)),
      el("td", { "data-label": "Attempts", class: "attempts" }, String(job.attempts ?? 0)),
      el(
        "td",
        { "data-label": "Webhook", class: `webhook ${hook ? `w-${hook.status}` : ""}`, title: hook && hook.last_error },
        webhookText(hook),
      ),
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
  const HIDDEN_FIELDS = new Set(["approximate", "fleet"]);

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
    if (view.status === "success" && !open.result) {
      open.result = true;
      await loadResult(open, view, generation);
    } else if (FINAL.has(view.status) && view.status !== "success" && !open.result) {
      open.result = true;
      $("detail-result").replaceChildren(
        el("section", { class: "result" }, el("h3", {}, "Result"), el("p", { class: "hint" }, `No result: the job is ${words(view.status)}.`)),
      );
    }
    // A final job whose webhooks are settled changes no more: stop reading it.
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
