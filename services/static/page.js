// The live page: containers (sorted by name, then id: rows never move as records
// change), the worker nodes with their liveness, and a container's history.
// Fed by GET /api/containers, GET /api/nodes and the event stream
// GET /api/events?nodes=1; writes through the API. Updates are applied in
// batches, at most one per 50 ms, so thousands of records stay responsive.
"use strict";

const $ = (id) => document.getElementById(id);
const tbody = $("rows");
const status = $("status");
const message = $("message");
const collator = new Intl.Collator(undefined, {numeric: true});

// ------------------------------------------------------------------ containers

const rows = new Map();    // id -> {tr, cells, buttons, record, busy}
const order = [];          // the rows in page order (sorted by name, then id)
const pending = new Map(); // id -> record (null: deleted), applied at the next flush
let flushTimer = null;
let loadStarted = null;    // ids changed by events since the current load() began

function compare(a, b) {
  return collator.compare(a.record.name || "", b.record.name || "")
    || (a.record.id < b.record.id ? -1 : a.record.id > b.record.id ? 1 : 0);
}

function text(td, value) {
  const s = value == null ? "" : String(value);
  if (td.textContent !== s) { td.textContent = s; td.title = s; }
}

const ACTIONS = ["start", "stop", "restart", "delete", "history"];

function newRow(record) {
  const tr = document.createElement("tr");
  tr.dataset.id = record.id;
  const cells = {};
  for (const cls of ["name", "owner", "desired", "actual", "node", "pid", "error"]) {
    cells[cls] = tr.appendChild(document.createElement("td"));
    cells[cls].className = cls;
  }
  const td = tr.appendChild(document.createElement("td"));
  td.className = "actions";
  const row = {tr, cells, buttons: {}, record, busy: false};
  for (const action of ACTIONS) {
    const b = td.appendChild(document.createElement("button"));
    b.type = "button";
    b.textContent = action[0].toUpperCase() + action.slice(1);
    b.className = action;
    b.onclick = () => act(row, action);
    row.buttons[action] = b;
  }
  return row;
}

function paint(row) {
  const c = row.record;
  text(row.cells.name, c.name);
  text(row.cells.owner, c.owner);
  text(row.cells.desired, c.power_desired);
  text(row.cells.actual, c.power_actual);
  row.cells.actual.className = "actual " + c.power_actual;
  text(row.cells.node, c.assigned_node);
  text(row.cells.pid, c.pid);
  text(row.cells.error, [c.rejected_reason, c.last_error].filter(Boolean).join(" · "));
  // a button that would change nothing in this state is disabled
  const on = c.power_desired === "on";
  row.buttons.start.disabled = row.busy || on;
  row.buttons.stop.disabled = row.busy || !on;
  row.buttons.restart.disabled = row.busy || !on;
  row.buttons.delete.disabled = row.busy;
}

// index of the first row that sorts after `row` (binary search)
function position(row) {
  let lo = 0, hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compare(order[mid], row) < 0) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function place(row) {
  const at = position(row);
  tbody.insertBefore(row.tr, at < order.length ? order[at].tr : null);
  order.splice(at, 0, row);
}

function unplace(row) {
  const at = order.indexOf(row);
  if (at >= 0) order.splice(at, 1);
  row.tr.remove();
}

function apply(id, record) {
  let row = rows.get(id);
  if (record == null) {
    if (row) { unplace(row); rows.delete(id); }
    if (drawer.id === id) showHistoryGone();
    return;
  }
  if (!row) {
    row = newRow(record);
    rows.set(id, row);
    place(row);
  } else if ((row.record.name || "") !== (record.name || "")) {  // names never change today
    unplace(row);
    row.record = record;
    place(row);
  }
  row.record = record;
  paint(row);
  if (drawer.id === id) refreshHistory();
}

function flush() {
  flushTimer = null;
  const batch = [...pending];
  pending.clear();
  for (const [id, record] of batch) apply(id, record);
  $("count").textContent = `${rows.size} container${rows.size === 1 ? "" : "s"}`;
}

function update(id, record) {
  pending.set(id, record);
  if (loadStarted) loadStarted.add(id);
  if (flushTimer === null) flushTimer = setTimeout(flush, 50);
}

async function act(row, action) {
  const id = row.record.id;
  if (action === "history") { openHistory(id); return; }
  if (action === "delete" && !window.confirm(
      `Delete container "${row.record.name}" (${id})? This cannot be undone.`)) return;
  const url = action === "delete" ? `/api/containers/${id}` : `/api/containers/${id}/${action}`;
  row.busy = true;  // its buttons stay disabled until the answer is shown
  paint(row);
  let done = false;
  try {
    const r = await fetch(url, {method: action === "delete" ? "DELETE" : "POST"});
    const body = await r.json();
    if (!r.ok) message.textContent = `${action} failed: ${body.error}`;
    else {
      done = true;
      message.textContent = "";
      update(id, action === "delete" ? null : body);
    }
  } catch (e) {
    message.textContent = `${action} failed: ${e}`;
  } finally {
    row.busy = false;  // painted with the answer at the next flush, or now if it failed
    if (!done && rows.get(id) === row) paint(row);
  }
}

$("create").onsubmit = async (e) => {
  e.preventDefault();
  const name = $("name").value;
  const owner = $("owner").value || undefined;
  const r = await fetch("/api/containers", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({name, owner})});
  const body = await r.json();
  if (r.ok) { update(body.id, body); $("name").value = ""; message.textContent = ""; }
  else message.textContent = body.error;
};

// The whole list; a record an event changed meanwhile keeps the event's version,
// and a row the list no longer has goes (it was deleted while we were away).
async function load() {
  const changed = loadStarted = new Set();
  try {
    const r = await fetch("/api/containers");
    const list = await r.json();
    const present = new Set();
    for (const c of list) {
      present.add(c.id);
      if (!changed.has(c.id)) update(c.id, c);
    }
    for (const id of rows.keys()) if (!present.has(id) && !changed.has(id)) update(id, null);
  } finally {
    if (loadStarted === changed) loadStarted = null;
  }
}

// ------------------------------------------------------------------ nodes

const nodes = new Map(); // name -> {tr, cells, node, seenAt}

function nodeRow(name) {
  let n = nodes.get(name);
  if (n) return n;
  const tr = document.createElement("tr");
  tr.dataset.node = name;
  const cells = {};
  for (const cls of ["node-name", "capacity", "running", "liveness"]) {
    cells[cls] = tr.appendChild(document.createElement("td"));
    cells[cls].className = cls;
  }
  n = {tr, cells, node: null, seenAt: 0};
  nodes.set(name, n);
  const after = [...nodes.keys()].sort(collator.compare).find((k) => collator.compare(k, name) > 0);
  $("node-rows").insertBefore(tr, after ? nodes.get(after).tr : null);
  return n;
}

function setNode(name, node) {
  if (node == null) {
    const n = nodes.get(name);
    if (n) { n.tr.remove(); nodes.delete(name); }
  } else {
    const n = nodeRow(name);
    n.node = node;
    n.seenAt = performance.now();
    text(n.cells["node-name"], name);
    text(n.cells.capacity, node.capacity);
    text(n.cells.running, node.running);
    paintLiveness(n);
  }
  $("no-nodes").hidden = nodes.size > 0;
}

// the heartbeat's age as web saw it, plus the time since: no clock of this
// browser is compared with the worker's
function paintLiveness(n) {
  const age = n.node.age_ms + (performance.now() - n.seenAt);
  const live = n.node.heartbeat_ms > 0 && age <= n.node.timeout_ms;
  const secs = Math.max(0, Math.round(age / 1000));
  const lease = n.node.lease_ms > 0 && age > n.node.lease_ms
    ? `, past its ${Math.round(n.node.lease_ms / 1000)} s lease` : "";
  text(n.cells.liveness, live ? "live" : n.node.heartbeat_ms > 0
    ? `silent for ${secs} s${lease}` : "never heard");
  n.cells.liveness.className = "liveness " + (live ? "live" : "silent");
}

async function loadNodes() {
  const r = await fetch("/api/nodes");
  const list = await r.json();
  const present = new Set(list.map((n) => n.name));
  for (const name of [...nodes.keys()]) if (!present.has(name)) setNode(name, null);
  for (const n of list) setNode(n.name, n);
}

setInterval(() => { for (const n of nodes.values()) paintLiveness(n); }, 1000);

// ------------------------------------------------------------------ history

const drawer = {id: null, timer: null}; // the container whose history is open

function describe(v) {
  return v == null ? "—" : typeof v === "string" ? v : JSON.stringify(v);
}

function openHistory(id) {
  const prev = rows.get(drawer.id);
  if (prev) prev.tr.classList.remove("selected");
  drawer.id = id;
  const row = rows.get(id);
  if (row) row.tr.classList.add("selected");
  $("history-name").textContent = row ? `${row.record.name} (${id})` : id;
  $("history-entries").replaceChildren();
  $("history").hidden = false;
  document.body.classList.add("with-history");
  refreshHistory(0);
}

function closeHistory() {
  const row = rows.get(drawer.id);
  if (row) row.tr.classList.remove("selected");
  drawer.id = null;
  $("history").hidden = true;
  document.body.classList.remove("with-history");
}

function showHistoryGone() {
  const li = document.createElement("li");
  li.className = "deleted";
  li.textContent = "deleted";
  $("history-entries").prepend(li);
}

// fetch again soon (coalesced: a burst of changes is one fetch)
function refreshHistory(delay = 200) {
  if (drawer.timer !== null) return;
  drawer.timer = setTimeout(async () => {
    drawer.timer = null;
    const id = drawer.id;
    if (id === null) return;
    const r = await fetch(`/api/containers/${id}/history`);
    if (drawer.id !== id || !r.ok) return;
    renderHistory(await r.json());
  }, delay);
}

function renderHistory(h) {
  const items = h.entries.slice().reverse().map((e) => {
    const li = document.createElement("li");
    li.className = "entry " + e.kind;
    const head = li.appendChild(document.createElement("div"));
    const when = head.appendChild(document.createElement("time"));
    when.dateTime = new Date(e.at_ms).toISOString();
    when.textContent = new Date(e.at_ms).toLocaleTimeString() + " ";
    head.append(e.kind === "created" ? "created by " : "changed by ");
    const by = head.appendChild(document.createElement("span"));
    by.className = "by";
    by.textContent = e.service || e.origin;
    if (e.service && e.service !== e.origin) head.append(` (replica ${e.origin})`);
    const ul = li.appendChild(document.createElement("ul"));
    for (const c of e.changes) {
      const item = ul.appendChild(document.createElement("li"));
      item.className = "change wrap";
      item.dataset.field = c.field;
      item.textContent = e.kind === "created" ? `${c.field} = ${describe(c.new)}`
        : `${c.field}: ${describe(c.old)} → ${describe(c.new)}`;
    }
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.textContent = "no change seen since web started";
    items.push(li);
  }
  $("history-entries").replaceChildren(...items);
}

$("history-close").onclick = closeHistory;
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeHistory(); });

// ------------------------------------------------------------------ the stream

const events = new EventSource("/api/events?nodes=1");
let wasDown = false;
events.onopen = () => {
  status.textContent = "live";
  if (wasDown) { wasDown = false; load(); loadNodes(); }  // catch up on what we missed
};
events.onerror = () => { status.textContent = "reconnecting…"; wasDown = true; };
events.addEventListener("container", (e) => {
  const data = JSON.parse(e.data);
  update(data.id, data.record);
});
events.addEventListener("node", (e) => {
  const data = JSON.parse(e.data);
  setNode(data.name, data.node);
});
load();
loadNodes();
