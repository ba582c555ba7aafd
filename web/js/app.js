// app.js: ccm's web UI. Views: dashboard, task board (+ create form), task
// detail (prompt, live hook timeline, terminal, result, diff, actions),
// attention inbox, event stream, sync status. Everything comes from the
// gateway's WebSocket API (schema/protocol.md): snapshots when a view opens
// or an event says something changed, events as they happen.

import { Conn } from "./conn.js";
import { h, clear, short, ago, clock, badge, firstLine, toast, ansi, diffView, coalesce }
  from "./ui.js";

const STATUSES = ["created", "queued", "assigned", "executing", "complete", "failed", "cancelled"];
const EVENTS_KEPT = 2000;

const state = {
  tasks: [], total: 0, stats: null, systems: [], agents: [], permissions: [],
  projects: [], sync: null, events: [], conn: "connecting",
  detail: null,          // {id, task, events, results, hooks: Map, lastHookId, result, term}
  eventFilter: { types: "", task: "", agent: "", project: "" },
  notified: new Set(),
};

let conn = null;
const main = () => document.getElementById("main");

// ------------------------------------------------------------------ calls

async function call(cmd, args, quiet) {
  try {
    return await conn.call(cmd, args);
  } catch (e) {
    if (!quiet) toast(`${cmd}: ${e.message}${e.code ? ` (${e.code})` : ""}`, "error");
    throw e;
  }
}

const refresh = {
  tasks: coalesce(async () => {
    const r = await call("tasks", { limit: 500 }, true).catch(() => null);
    if (!r) return;
    state.tasks = r.tasks || [];
    state.total = r.total || 0;
    render("tasks");
  }, 200),
  stats: coalesce(async () => {
    const r = await call("stats", {}, true).catch(() => null);
    if (r) state.stats = r;
    render("stats");
  }, 300),
  agents: coalesce(async () => {
    const r = await call("agents", {}, true).catch(() => null);
    if (r) state.agents = r.agents || [];
    render("agents");
  }, 200),
  systems: coalesce(async () => {
    const r = await call("systems", {}, true).catch(() => null);
    if (r) state.systems = r.systems || [];
    render("systems");
  }, 300),
  permissions: coalesce(async () => {
    const r = await call("permissions", {}, true).catch(() => null);
    if (r) state.permissions = r.requests || [];
    render("permissions");
  }, 100),
  projects: coalesce(async () => {
    const r = await call("projects", {}, true).catch(() => null);
    if (r) state.projects = r.projects || [];
    render("projects");
  }, 300),
  sync: coalesce(async () => {
    const r = await call("sync", {}, true).catch(() => null);
    if (r) state.sync = r;
    render("sync");
  }, 300),
  detail: coalesce(() => loadDetail(false), 200),
  result: coalesce(() => loadResult(), 400),
};

function refreshAll() {
  for (const key of ["tasks", "stats", "agents", "systems", "permissions", "projects", "sync"])
    refresh[key]();
  if (state.detail) loadDetail(true);
}

// ----------------------------------------------------------------- events

function onEvent(ev) {
  state.events.push(ev);
  if (state.events.length > EVENTS_KEPT) state.events.splice(0, state.events.length - EVENTS_KEPT);
  const topic = ev.topic || "";
  const d = state.detail;
  if (topic.startsWith("task.")) {
    refresh.tasks();
    refresh.stats();
    if (topic === "task.status") refresh.systems();  // running counts per system
    if (d && ev.task_id === d.id) refresh.detail();
  } else if (topic === "hook.added") {
    if (d && ev.task_id === d.id) {
      if (Array.isArray(ev.hooks)) addHooks(ev.hooks);
      else loadTimeline();
    }
    refresh.stats();
  } else if (topic.startsWith("agents.")) {
    refresh.agents();
  } else if (topic.startsWith("permission.")) {
    refresh.permissions();
    if (topic === "permission.requested") notify(ev);
  } else if (topic.startsWith("systems.") || topic.startsWith("contexts.")) {
    refresh.systems();
  } else if (topic.startsWith("project")) {
    refresh.projects();
  }
  if (d && ev.task_id === d.id && /^(task_results|task_worktrees|supervisory_reports)\./.test(topic))
    refresh.result();
  if (current.view === "events") appendEventRow(ev);
}

function notify(ev) {
  const data = ev.data || {};
  if (state.notified.has(data.id)) return;
  state.notified.add(data.id);
  // Only what happens now: not the history replayed at start.
  if (Date.now() - Date.parse(ev.ts) > 60000) return;
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const n = new Notification("ccm: permission asked", {
      body: `${data.tool_name || "a tool"}: ${summarize(data.tool_input)}`, tag: data.id,
    });
    n.onclick = () => { window.focus(); location.hash = "#/inbox"; };
  } catch (e) {
    // Notifications not available here (e.g. a service-worker-only browser).
  }
}

function onPush(msg) {
  const d = state.detail;
  if (!d || msg.task !== d.id) return;
  if (msg.type === "terminal") {
    d.term = { data: msg.data, control: msg.control };
    const pre = document.getElementById("terminal");
    if (pre) clear(pre, ansi(msg.data || ""));
  } else if (msg.type === "terminal_closed") {
    d.term = null;
    d.termOpen = false;
    const pre = document.getElementById("terminal");
    if (pre) clear(pre, h("span.muted", { text: `terminal closed: ${msg.reason || ""}` }));
    renderTermControls();
  }
}

function onState(s, detail) {
  state.conn = s;
  const el = document.getElementById("conn");
  if (el) {
    el.className = `conn conn-${s}`;
    el.textContent = s === "synced" || s === "open" ? "live" : s === "closed" ? "offline" : s;
    el.title = `${s}${detail !== undefined ? `: ${detail}` : ""}; last seq ${conn.lastSeq}`;
  }
  if (s === "open") refreshAll();
  if (s === "open" && state.detail && state.detail.termOpen) openTerminal(state.detail.termControl);
}

// ------------------------------------------------------------------ router

const current = { view: "dashboard", arg: null };

function route() {
  const parts = (location.hash || "#/").slice(2).split("/");
  const view = parts[0] || "dashboard";
  const arg = parts[1] ? decodeURIComponent(parts[1]) : null;
  if (state.detail && (view !== "task" || arg !== state.detail.id)) leaveDetail();
  current.view = ["dashboard", "tasks", "task", "inbox", "events"].includes(view) ? view : "dashboard";
  current.arg = arg;
  for (const a of document.querySelectorAll("nav a"))
    a.classList.toggle("active", a.dataset.view === (current.view === "task" ? "tasks" : current.view));
  renderView();
}

function renderView() {
  const m = main();
  if (current.view === "dashboard") clear(m, dashboardView());
  else if (current.view === "tasks") clear(m, boardView());
  else if (current.view === "task") {
    clear(m, h("section.detail#detail", h("p.muted", "loading…")));
    if (!state.detail || state.detail.id !== current.arg) enterDetail(current.arg);
    else renderDetail();
  } else if (current.view === "inbox") clear(m, inboxView());
  else if (current.view === "events") clear(m, eventsView());
}

// Re-renders what depends on what changed, if it is on screen.
function render(what) {
  renderBadges();
  const v = current.view;
  if (v === "dashboard" && ["stats", "systems", "agents", "sync", "permissions"].includes(what))
    clear(main(), dashboardView());
  else if (v === "tasks" && (what === "tasks" || what === "projects")) updateBoard();
  else if (v === "inbox" && (what === "permissions" || what === "agents" || what === "tasks"))
    clear(main(), inboxView());
  else if (v === "task" && what === "agents") renderDetailHeader();
  if (what === "sync" || what === "stats") renderSyncChip();
}

function renderBadges() {
  const n = attention().length;
  const el = document.getElementById("inbox-count");
  if (el) {
    el.textContent = n ? String(n) : "";
    el.hidden = !n;
  }
  document.title = n ? `(${n}) ccm` : "ccm";
}

function renderSyncChip() {
  const el = document.getElementById("sync");
  if (!el) return;
  const s = state.sync;
  const queue = s ? s.queue : state.stats ? state.stats.sync_pending : null;
  const word = syncWord(s);
  el.className = `chip sync-${word === "local only" ? "unknown" : word}`;
  el.textContent = `sync ${word === "unknown" ? "—" : word}`
    + (word !== "local only" && queue !== null && queue !== undefined ? ` · ${queue} queued` : "");
}

// What the sync state means to a user: no hub configured is "local only", not offline.
function syncWord(s) {
  if (!s) return "unknown";
  if (s.state === "LocalOnly") return "local only";
  return s.online === true ? "online" : s.online === false ? "offline" : "unknown";
}

// --------------------------------------------------------------- dashboard

function agentState(agent) {
  if (agent.status === "waiting")
    return state.permissions.some((p) => p.agent_id === agent.id)
      ? "waiting for permission" : "waiting for input";
  return agent.status;
}

function dashboardView() {
  const counts = (state.stats && state.stats.tasks) || {};
  const s = state.sync;
  return h("section.dashboard",
    h("h1", "Dashboard"),
    h("div.cards",
      STATUSES.map((st) => h("a.card.count", { href: "#/tasks", dataset: { status: st } },
        h("span.num", { text: String(counts[st] || 0) }), badge(st)))),
    h("div.grid2",
      h("div.panel",
        h("h2", "Systems"),
        state.systems.length ? h("table.list",
          h("thead", h("tr", ["host", "state", "running", "agents", "contexts", "last seen"].map((c) => h("th", c)))),
          h("tbody", state.systems.map((sys) => h("tr", { dataset: { system: sys.id } },
            h("td", { title: sys.id, text: sys.hostname || short(sys.id) }),
            h("td", badge(sys.status === "offline" ? `offline since ${ago(sys.last_seen)}`
                            : sys.status || "unknown", sys.status || "unknown")),
            h("td", { text: `${sys.running || 0}/${sys.capacity || "?"}` }),
            h("td", { text: String(sys.agents || 0) }),
            h("td", { text: String(sys.contexts || 0) }),
            h("td", { text: ago(sys.last_seen) })))))
          : h("p.muted", "No executor has registered yet.")),
      h("div.panel",
        h("h2", "Sync"),
        h("p", badge(syncWord(s), syncWord(s) === "local only" ? "unknown" : syncWord(s)),
          " queue depth ", h("strong#sync-queue", { text: String(s ? s.queue : "—") })),
        state.stats ? h("p.muted", `${state.stats.hook_events || 0} hook events stored`) : null)),
    h("div.panel",
      h("h2", "Agents"),
      state.agents.length ? h("table.list#agents",
        h("thead", h("tr", ["agent", "task", "state", "source", "last active"].map((c) => h("th", c)))),
        h("tbody", state.agents.map((a) => h("tr", { dataset: { agent: a.id } },
          h("td", { title: a.id, text: a.profile ? `${a.profile} ${short(a.id)}` : short(a.id) }),
          h("td", a.task_id ? h("a", { href: `#/task/${a.task_id}`, text: short(a.task_id) }) : ""),
          h("td", badge(agentState(a), a.status)),
          h("td", { text: a.state_source || "unknown" }),
          h("td", { text: ago(a.last_active) })))))
        : h("p.muted", "No agents yet.")));
}

// -------------------------------------------------------------- task board

// A failed task the store will try again says so, and when (local time);
// status_reason has the same in UTC.
function retrying(t) {
  return t.status === "failed" && t.retry_at;
}

function statusBadge(t) {
  return retrying(t)
    ? badge(`retry ${t.attempts + 1} of ${t.max_attempts} at ${clock(t.retry_at)}`, "retrying")
    : badge(t.status);
}

function taskCard(t) {
  return h("a.task-card", { href: `#/task/${t.id}`, dataset: { task: t.id, status: t.status } },
    h("div.row", h("code", { text: t.short_id || short(t.id) }), badge(t.priority, `p-${t.priority}`),
      retrying(t) ? statusBadge(t) : null,
      t.project ? h("span.muted", { text: t.project }) : null),
    h("div.prompt", { text: firstLine(t.prompt) }),
    t.status_reason ? h("div.reason.muted", { text: t.status_reason }) : null,
    h("div.muted.small", { text: `${t.agent_profile || ""} ${ago(t.updated_at)}` }));
}

function updateBoard() {
  const board = document.getElementById("board");
  if (!board) return;
  for (const st of STATUSES) {
    const col = board.querySelector(`[data-column="${st}"] .cards-col`);
    const tasks = state.tasks.filter((t) => t.status === st);
    board.querySelector(`[data-column="${st}"] .n`).textContent = String(tasks.length);
    clear(col, tasks.map(taskCard));
  }
  const sel = document.getElementById("f-project");
  if (sel && sel.options.length !== state.projects.length + 1) {
    const value = sel.value;
    clear(sel, h("option", { value: "", text: "(none)" }),
      state.projects.map((p) => h("option", { value: p.name, text: p.name })));
    sel.value = value;
  }
}

function boardView() {
  const form = createForm();
  const section = h("section.board-view",
    h("div.head", h("h1", "Tasks"),
      h("button#new-task", { type: "button", onclick: () => form.classList.toggle("open") }, "New task")),
    form,
    h("div.board#board", STATUSES.map((st) => h("div.column", { dataset: { column: st } },
      h("h3", badge(st), " ", h("span.n", "0")), h("div.cards-col")))));
  setTimeout(updateBoard);
  return section;
}

function field(label, input, hint) {
  return h("label.field", h("span", label), input, hint ? h("small.muted", hint) : null);
}

function createForm() {
  const f = h("form.create#create-form", { autocomplete: "off" });
  const prompt = h("textarea#f-prompt", { name: "prompt", rows: 4, required: true,
    placeholder: "What should the agent do?" });
  const project = h("select#f-project", { name: "project" }, h("option", { value: "", text: "(none)" }),
    state.projects.map((p) => h("option", { value: p.name, text: p.name })));
  const priority = h("select#f-priority", { name: "priority" },
    ["normal", "low", "high", "urgent"].map((p) => h("option", { value: p, text: p })));
  const type = h("select#f-type", { name: "task_type" },
    ["worker", "supervisory", "manager"].map((p) => h("option", { value: p, text: p })));
  const agent = h("input#f-agent", { name: "agent", list: "profiles", placeholder: "claude" });
  const profiles = h("datalist#profiles",
    ["claude", "claude-headless", "codex", "gemini", "aider", "shell"].map((p) => h("option", { value: p })));
  const timeout = h("input#f-timeout", { name: "timeout_s", type: "number", min: 1, placeholder: "seconds" });
  const system = h("input#f-system", { name: "system_id", placeholder: "any system" });
  const requires = h("textarea#f-requires", { name: "requires", rows: 2, placeholder: "KEY=VALUE, one a line" });
  const depends = h("input#f-depends", { name: "depends_on", placeholder: "task ids, comma-separated" });
  const metadata = h("textarea#f-metadata", { name: "metadata", rows: 2, placeholder: "{\"key\": \"value\"}" });
  const inputData = h("textarea#f-input", { name: "input_data", rows: 2, placeholder: "{}" });
  const hold = h("input#f-hold", { type: "checkbox", name: "hold" });
  const supa = h("input#f-supabase", { type: "checkbox", name: "requires_supabase" });
  const submit = h("button#f-submit", { type: "submit" }, "Create task");
  f.append(
    field("Prompt", prompt),
    h("div.fields",
      field("Project", project), field("Priority", priority), field("Type", type),
      field("Agent", agent), field("Timeout", timeout), field("System", system)),
    h("details", h("summary", "More options"),
      h("div.fields",
        field("Requires", requires, "context metadata or system tags"),
        field("Depends on", depends),
        field("Metadata (JSON)", metadata), field("Input data (JSON)", inputData)),
      h("label.check", hold, " hold (stay created)"),
      h("label.check", supa, " requires Supabase")),
    profiles, h("div.actions", submit));
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const args = { prompt: prompt.value };
    if (!args.prompt.trim()) return toast("a prompt is needed", "error");
    if (project.value) args.project = project.value;
    args.priority = priority.value;
    args.task_type = type.value;
    if (agent.value.trim()) args.agent = agent.value.trim();
    if (timeout.value) args.timeout_s = parseInt(timeout.value, 10);
    if (system.value.trim()) args.system_id = system.value.trim();
    if (hold.checked) args.hold = true;
    if (supa.checked) args.requires_supabase = true;
    const req = {};
    for (const line of requires.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
      const eq = line.indexOf("=");
      if (eq < 1) return toast(`requires: "${line}" is not KEY=VALUE`, "error");
      req[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    if (Object.keys(req).length) args.requires = req;
    const deps = depends.value.split(/[\s,]+/).filter(Boolean);
    if (deps.length) args.depends_on = deps;
    for (const [name, el] of [["metadata", metadata], ["input_data", inputData]]) {
      if (!el.value.trim()) continue;
      try {
        args[name] = JSON.parse(el.value);
      } catch (err) {
        return toast(`${name}: not JSON (${err.message})`, "error");
      }
    }
    submit.disabled = true;
    try {
      const r = await call("task.add", args);
      toast(`task ${r.task.short_id} created (${r.task.status})`);
      prompt.value = "";
      state.tasks = [r.task, ...state.tasks.filter((t) => t.id !== r.task.id)];
      updateBoard();
    } catch (err) {
      // toast shown by call()
    } finally {
      submit.disabled = false;
    }
  });
  return f;
}

// ------------------------------------------------------------- task detail

function enterDetail(id) {
  state.detail = { id, task: null, events: [], results: [], hooks: new Map(), lastHookId: 0,
                   result: null, term: null, termOpen: false, termControl: false };
  loadDetail(true);
}

function leaveDetail() {
  const d = state.detail;
  if (d && d.termOpen && conn.connected) call("terminal.close", { task: d.id }, true).catch(() => {});
  state.detail = null;
}

async function loadDetail(full) {
  const d = state.detail;
  if (!d) return;
  let r;
  try {
    r = await call("task", { task: d.id }, true);
  } catch (e) {
    const el = document.getElementById("detail");
    if (el && !d.task) clear(el, h("p.error", { text: `task ${d.id}: ${e.message}` }));
    return;
  }
  if (state.detail !== d) return;
  if (d.id !== r.task.id) {
    // A prefix in the URL: show the full id.
    d.id = r.task.id;
    history.replaceState(null, "", `#/task/${d.id}`);
    current.arg = d.id;
  }
  const wasRunning = d.task && ["assigned", "executing"].includes(d.task.status);
  d.task = r.task;
  d.events = r.events || [];
  d.results = r.results || [];
  if (full) {
    renderDetail();
    await loadTimeline();
    loadResult();
    if (["assigned", "executing"].includes(d.task.status)) openTerminal(false);
  } else {
    renderDetailHeader();
    renderHistory();
    if (wasRunning && !["assigned", "executing"].includes(d.task.status)) loadResult();
    if (!d.termOpen && ["executing"].includes(d.task.status)) openTerminal(false);
  }
}

// Reads hook rows after the last one we have, until there are no more.
async function loadTimeline() {
  const d = state.detail;
  if (!d || d.loadingTimeline) return;
  d.loadingTimeline = true;
  try {
    for (let i = 0; i < 50; i++) {
      const r = await call("timeline", { task: d.id, after_id: d.lastHookId }, true);
      if (state.detail !== d) return;
      addHooks(r.hooks || []);
      if (!r.hooks || r.hooks.length < 1000) break;
    }
  } catch (e) {
    // shown as missing rows; the next event tries again
  } finally {
    d.loadingTimeline = false;
  }
}

// Adds hook rows to the timeline, each once, in id order.
function addHooks(rows) {
  const d = state.detail;
  if (!d) return;
  let added = false;
  for (const row of rows) {
    if (!row || typeof row.id !== "number" || d.hooks.has(row.id)) continue;
    if (row.task_id && row.task_id !== d.id) continue;
    d.hooks.set(row.id, row);
    d.lastHookId = Math.max(d.lastHookId, row.id);
    added = true;
  }
  if (added) renderTimeline();
}

async function loadResult() {
  const d = state.detail;
  if (!d) return;
  try {
    const r = await call("result", { task: d.id }, true);
    if (state.detail !== d) return;
    d.result = r;
    renderResult();
  } catch (e) {
    const el = document.getElementById("result");
    if (el) clear(el, h("p.muted", { text: `no result yet (${e.message})` }));
  }
}

async function openTerminal(control) {
  const d = state.detail;
  if (!d) return;
  try {
    const r = await call("terminal.open", { task: d.id, control: !!control }, true);
    d.termOpen = true;
    d.termControl = !!r.control;
  } catch (e) {
    d.termOpen = false;
    const pre = document.getElementById("terminal");
    if (pre && !d.term) clear(pre, h("span.muted", { text: `no terminal: ${e.message}` }));
  }
  renderTermControls();
}

function renderDetail() {
  const d = state.detail;
  const el = document.getElementById("detail");
  if (!d || !el) return;
  if (!d.task) return clear(el, h("p.muted", "loading…"));
  clear(el,
    h("div#detail-head"),
    h("div.grid2",
      h("div.panel", h("h2", "Prompt"), h("pre.prompt#prompt", { text: d.task.prompt })),
      h("div.panel", h("h2", "Actions"), actionsView())),
    h("div.grid2",
      h("div.panel", h("h2", "Timeline ", h("span.muted.small#hook-count")),
        h("ol.timeline#timeline")),
      h("div.panel", h("h2", "Terminal"), h("div#term-controls"),
        h("pre.terminal#terminal", { tabindex: 0 }, d.term ? ansi(d.term.data) : h("span.muted", "…")))),
    h("div.panel", h("h2", "Result"), h("div#result", h("p.muted", "…"))),
    h("div.panel", h("h2", "History"), h("ol.history#history")));
  renderDetailHeader();
  renderTimeline();
  renderHistory();
  renderResult();
  renderTermControls();
}

function renderDetailHeader() {
  const d = state.detail;
  const el = document.getElementById("detail-head");
  if (!d || !d.task || !el) return;
  const t = d.task;
  const agents = state.agents.filter((a) => a.task_id === t.id);
  clear(el,
    h("h1", h("code", { text: t.short_id }), " ", statusBadge(t), " ",
      h("span.muted.small", { text: t.id })),
    h("p.meta",
      t.project ? ["project ", h("strong", { text: t.project }), " · "] : null,
      `priority ${t.priority} · ${t.task_type} · attempt ${t.attempts}` +
        (t.max_attempts ? ` of ${t.max_attempts}` : ""),
      t.agent_profile ? ` · agent ${t.agent_profile}` : null,
      ` · created ${ago(t.created_at)}`),
    t.status_reason ? h("p.reason", { text: t.status_reason }) : null,
    agents.map((a) => h("p.agent-state", "agent ", h("code", { text: short(a.id) }), " ",
      badge(agentState(a), a.status), h("span.muted", { text: ` from ${a.state_source || "unknown"}` }))),
    pendingFor(t.id).map(permissionCard));
  // The action buttons that apply depend on the status.
  const actions = document.getElementById("actions");
  if (actions) actions.replaceWith(actionsView());
}

function actionsView() {
  const d = state.detail;
  const t = d.task;
  const live = ["assigned", "executing"].includes(t.status);
  const text = h("input#send-text", { placeholder: "text for the agent", disabled: !live });
  const force = h("input#discard-force", { type: "checkbox" });
  const act = (label, id, cmd, args, confirmText, enabled = true) =>
    h("button", { type: "button", id, disabled: !enabled, onclick: async (e) => {
      if (confirmText && !confirm(confirmText)) return;
      e.target.disabled = true;
      try {
        const r = await call(cmd, args());
        toast(r.message || `${cmd}: done`);
        refresh.detail();
        refresh.result();
      } catch (err) {
        // toast shown
      } finally {
        e.target.disabled = false;
      }
    } }, label);
  return h("div.actions#actions",
    h("div.row",
      act("Cancel", "act-cancel", "task.cancel", () => ({ task: t.id }), `Cancel task ${t.short_id}?`,
          !["complete", "cancelled", "failed"].includes(t.status)),
      act("Retry", "act-retry", "task.retry", () => ({ task: t.id }), null, t.status === "failed")),
    h("form.row.send", { onsubmit: async (e) => {
      e.preventDefault();
      if (!text.value) return;
      const button = e.target.querySelector("button");
      button.disabled = true;
      try {
        const r = await call("agent.send", { task: t.id, text: text.value });
        toast(`sent: ${r.delivery}`);
        text.value = "";
      } catch (err) {
        // toast shown
      } finally {
        button.disabled = false;
      }
    } }, text, h("button#act-send", { type: "submit", disabled: !live }, "Send")),
    h("div.row",
      act("Merge", "act-merge", "worktree.merge", () => ({ task: t.id }),
          `Merge the branch of ${t.short_id} into its base?`),
      act("Discard", "act-discard", "worktree.discard", () => ({ task: t.id, force: force.checked }),
          `Discard the worktree of ${t.short_id}?`),
      h("label.check", force, " force")));
}

function hookSummary(row) {
  const data = row.event_data || {};
  if (row.tool_name) {
    const input = data.tool_input || {};
    return `${row.tool_name} ${input.command || input.file_path || input.pattern || input.url || ""}`.trim();
  }
  if (data.prompt) return firstLine(data.prompt, 80);
  if (data.message) return firstLine(data.message, 80);
  return "";
}

function renderTimeline() {
  const d = state.detail;
  const el = document.getElementById("timeline");
  if (!d || !el) return;
  const rows = [...d.hooks.values()].sort((a, b) => a.id - b.id);
  // Append only what is new, in order: the list is a log.
  const shown = el.children.length;
  const have = shown ? Number(el.lastElementChild.dataset.hookId) : 0;
  if (rows.length === shown && (!shown || rows[rows.length - 1].id === have)) return;
  const fresh = rows.length > shown && (!shown || rows[shown - 1].id === have) ? rows.slice(shown) : null;
  if (!fresh) clear(el);
  for (const row of fresh || rows) {
    const ok = row.success === true ? "ok" : row.success === false ? "fail" : "";
    el.append(h("li", { dataset: { hookId: row.id, type: row.hook_type }, class: ok ? `hook-${ok}` : "" },
      h("span.time", { text: clock(row.hook_timestamp) }),
      h("span.type", { text: row.hook_type }),
      h("span.what", { text: hookSummary(row), title: row.file_path || "" }),
      ok ? h("span.mark", { text: ok === "ok" ? "✓" : "✗", title: ok === "ok" ? "succeeded" : "failed" }) : null));
  }
  const count = document.getElementById("hook-count");
  if (count) count.textContent = `${rows.length} hook events`;
  if (el.parentElement) el.scrollTop = el.scrollHeight;
}

function renderHistory() {
  const d = state.detail;
  const el = document.getElementById("history");
  if (!d || !el) return;
  clear(el, d.events.map((ev) => h("li",
    h("span.time", { text: clock(ev.created_at) }), h("span.type", { text: ev.event_type }),
    h("span.what", { text: firstLine(JSON.stringify(ev.event_data || {}), 200) }))));
}

function renderResult() {
  const d = state.detail;
  const el = document.getElementById("result");
  if (!d || !el || !d.result) return;
  const r = d.result;
  const results = r.results || d.results || [];
  clear(el,
    results.length ? results.map((res) => h("div.result",
      h("p", badge(res.status), res.exit_code !== null && res.exit_code !== undefined
        ? ` exit ${res.exit_code}` : "", h("span.muted", { text: ` ${ago(res.created_at)}` })),
      res.output ? h("pre.output", { text: res.output }) : null))
      : h("p.muted", "No result yet."),
    r.worktree ? h("p.muted", { text: `worktree ${r.worktree.worktree_path} on ${r.worktree.branch_name}`
      + ` (${r.worktree.status})` }) : null,
    h("h3", `Files changed (${(r.files_changed || []).length})`),
    h("ul.files#files", (r.files_changed || []).map((f) => h("li", h("code", { text: f })))),
    r.diff ? [h("h3", "Diff", r.diff_truncated ? h("span.muted", " (cut at 1 MiB)") : null), diffView(r.diff)]
      : null,
    r.report ? [h("h3", "Supervisory report"), h("pre.report", { text:
      typeof r.report === "string" ? r.report : JSON.stringify(r.report, null, 2) })] : null);
}

function renderTermControls() {
  const d = state.detail;
  const el = document.getElementById("term-controls");
  if (!d || !el) return;
  if (!d.termOpen) {
    return clear(el, h("button#term-open", { type: "button", onclick: () => openTerminal(false) },
      "Watch terminal"));
  }
  if (!d.termControl) {
    return clear(el, h("span.muted", "read-only "),
      h("button#term-control", { type: "button", onclick: () => {
        if (confirm("Take control of this agent's terminal? What you type goes to the agent."))
          openTerminal(true);
      } }, "Take control"));
  }
  const input = h("input#term-input", { placeholder: "type, then Enter to send it" });
  const keys = (list) => call("terminal.input", { task: d.id, keys: list }).catch(() => {});
  clear(el, h("form.row", { onsubmit: (e) => {
      e.preventDefault();
      call("terminal.input", { task: d.id, text: input.value, keys: ["Enter"] })
        .then(() => { input.value = ""; }).catch(() => {});
    } }, h("span.badge.s-control", "control"), input,
    h("button", { type: "button", onclick: () => keys(["Escape"]) }, "Esc"),
    h("button", { type: "button", onclick: () => keys(["C-c"]) }, "Ctrl-C"),
    h("button", { type: "button", onclick: () => openTerminal(false) }, "Release")));
}

// ------------------------------------------------------------------- inbox

function pendingFor(taskId) {
  return state.permissions.filter((p) => p.task_id === taskId && p.status === "pending");
}

// Everything that waits for a human: permission requests, and agents
// waiting for input with no request pending.
function attention() {
  const items = state.permissions.filter((p) => p.status === "pending")
    .map((p) => ({ kind: "permission", p }));
  for (const a of state.agents) {
    if (a.status === "waiting" && !state.permissions.some((p) => p.agent_id === a.id))
      items.push({ kind: "input", a });
  }
  return items;
}

function summarize(input) {
  if (!input || typeof input !== "object") return "";
  return input.command || input.file_path || input.url || input.pattern || input.preview
    || JSON.stringify(input).slice(0, 300);
}

function permissionCard(p) {
  const reason = h("input.deny-reason", { placeholder: "reason (for a deny)", maxLength: 1000 });
  const answer = (decision) => async (e) => {
    const card = e.target.closest(".perm");
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    try {
      const args = { request: p.id, decision };
      if (decision === "deny" && reason.value) args.reason = reason.value;
      await call("permission.answer", args);
      toast(`${decision === "allow" ? "allowed" : "denied"}: ${p.tool_name || "tool"}`);
      state.permissions = state.permissions.filter((x) => x.id !== p.id);
      render("permissions");
      if (state.detail) renderDetailHeader();
    } catch (err) {
      for (const b of card.querySelectorAll("button")) b.disabled = false;
      refresh.permissions();
    }
  };
  return h("div.perm.attention", { dataset: { request: p.id } },
    h("div.row", badge("permission", "waiting"), h("strong", { text: p.tool_name || "tool" }),
      p.task_id ? h("a", { href: `#/task/${p.task_id}`, text: `task ${short(p.task_id)}` }) : null,
      h("span.muted.small", { text: `asked ${ago(p.created_at)}, expires ${ago(p.expires_at)}` })),
    h("pre.tool-input", { text: summarize(p.tool_input) }),
    p.reason ? h("p.muted.small", { text: p.reason }) : null,
    h("div.row.answer",
      h("button.allow", { type: "button", onclick: answer("allow") }, "Allow"),
      h("button.deny", { type: "button", onclick: answer("deny") }, "Deny"), reason));
}

function inputCard(a) {
  const text = h("input", { placeholder: "reply to the agent" });
  return h("div.waiting-input.attention", { dataset: { agent: a.id } },
    h("div.row", badge("waiting for input", "waiting"), h("code", { text: short(a.id) }),
      a.task_id ? h("a", { href: `#/task/${a.task_id}`, text: `task ${short(a.task_id)}` }) : null,
      h("span.muted.small", { text: `since ${ago(a.last_active)} (${a.state_source || "?"})` })),
    a.task_id ? h("form.row", { onsubmit: async (e) => {
      e.preventDefault();
      if (!text.value) return;
      try {
        const r = await call("agent.send", { task: a.task_id, text: text.value });
        toast(`sent: ${r.delivery}`);
        text.value = "";
      } catch (err) {
        // toast shown
      }
    } }, text, h("button", { type: "submit" }, "Send")) : null);
}

function inboxView() {
  const items = attention();
  const canAsk = "Notification" in window && Notification.permission === "default";
  return h("section.inbox",
    h("div.head", h("h1", "Inbox"),
      canAsk ? h("button#notify", { type: "button", onclick: async () => {
        await Notification.requestPermission();
        clear(main(), inboxView());
      } }, "Enable notifications") : null),
    items.length ? h("div#inbox-items", items.map((it) =>
      it.kind === "permission" ? permissionCard(it.p) : inputCard(it.a)))
      : h("p.muted#inbox-empty", "Nothing waits for you."));
}

// ------------------------------------------------------------------ events

function eventMatches(ev) {
  const f = state.eventFilter;
  if (f.types) {
    const types = f.types.split(",").map((s) => s.trim()).filter(Boolean);
    if (types.length && !types.some((t) => (t.endsWith(".") ? ev.topic.startsWith(t) : ev.topic === t)))
      return false;
  }
  if (f.task && !(ev.task_id || "").startsWith(f.task)) return false;
  if (f.agent) {
    const d = ev.data || {};
    if (d.agent_id !== f.agent && !(ev.entity === "agents" && ev.entity_id === f.agent)) return false;
  }
  if (f.project) {
    const t = state.tasks.find((x) => x.id === ev.task_id);
    const projectId = ev.project_id || (t && t.project_id);
    const p = state.projects.find((x) => x.name === f.project || x.id === f.project);
    if (!p || projectId !== p.id) return false;
  }
  return true;
}

function eventRow(ev) {
  return h("tr", { dataset: { seq: ev.seq, topic: ev.topic } },
    h("td", { text: String(ev.seq) }), h("td", { text: clock(ev.ts) }),
    h("td", h("code", { text: ev.topic })),
    h("td", ev.task_id ? h("a", { href: `#/task/${ev.task_id}`, text: short(ev.task_id) }) : ""),
    h("td.data", { text: firstLine(JSON.stringify(ev.data || {}), 160) }));
}

function appendEventRow(ev) {
  const body = document.getElementById("events-body");
  if (!body || !eventMatches(ev)) return;
  body.prepend(eventRow(ev));
  while (body.children.length > 500) body.lastElementChild.remove();
}

function eventsView() {
  const f = state.eventFilter;
  const input = (key, placeholder) => h("input", { value: f[key], placeholder, dataset: { filter: key },
    oninput: (e) => { f[key] = e.target.value.trim(); fill(); } });
  const body = h("tbody#events-body");
  const fill = () => clear(body, state.events.filter(eventMatches).slice(-500).reverse().map(eventRow));
  fill();
  return h("section.events",
    h("h1", "Events"),
    h("div.filters", input("types", "types: task., hook.added"), input("task", "task id"),
      input("agent", "agent id"), input("project", "project")),
    h("table.list.events-table", h("thead", h("tr", ["seq", "time", "topic", "task", "data"].map((c) => h("th", c)))),
      body));
}

// -------------------------------------------------------------------- start

function shell() {
  const nav = [["dashboard", "Dashboard"], ["tasks", "Tasks"], ["inbox", "Inbox"], ["events", "Events"]];
  clear(document.body,
    h("header",
      h("a.brand", { href: "#/" }, "ccm"),
      h("nav", nav.map(([view, label]) => h("a", { href: `#/${view === "dashboard" ? "" : view}`,
        dataset: { view } }, label, view === "inbox" ? h("span.count#inbox-count", { hidden: true }) : null))),
      h("span.chips", h("span.chip#sync", "sync —"), h("span.conn#conn", "connecting"))),
    h("main#main"));
}

function loginView(failed) {
  clear(document.body, h("main.login",
    h("h1", "ccm"),
    h("form", { method: "post", action: "/login" },
      h("label.field", h("span", "Gateway token"),
        h("input", { type: "password", name: "token", autocomplete: "current-password", required: true })),
      failed ? h("p.error", "That token was refused.") : null,
      h("button", { type: "submit" }, "Sign in")),
    h("p.muted.small", "The token is in $CCM_HOME/gateway.token (ccm gateway token).")));
}

async function start() {
  let auth = { token_required: false, authenticated: true };
  try {
    const r = await fetch("/api/auth", { credentials: "same-origin" });
    if (r.ok) auth = await r.json();
  } catch (e) {
    // The gateway is down: the connection below retries until it is back.
  }
  if (auth.token_required && !auth.authenticated) return loginView(false);
  shell();
  conn = new Conn({ onEvent, onPush, onState });
  window.ccm = { conn, state };
  window.addEventListener("hashchange", route);
  route();
  conn.start();
  setInterval(() => { if (conn.connected) refresh.sync(); }, 5000);
  setInterval(() => { if (current.view === "inbox" || current.view === "dashboard") render("permissions"); }, 15000);
}

start();
