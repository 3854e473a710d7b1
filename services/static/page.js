// The live page: one page of the containers at a time, filtered by owner, desired,
// actual and node (the API's filters), in container id order (the API's order: rows
// never move as records change); the worker nodes with their liveness; a
// container's history. Fed by GET /api/containers (a page of PAGE_SIZE records and
// the Link to the next), GET /api/nodes and the event stream
// GET /api/events?nodes=1&<filters>; writes through the API.
//
// A page is a range of ids: after the previous page's last row, up to its own last
// row (no upper bound on the last page). It stays live: a record created in the
// range appears, one deleted or no longer matching the filters goes, so a page may
// grow or shrink until it is loaded again (Next, Previous, First, a new filter, a
// reconnection). So the page holds one page of rows however many records there
// are. Updates are applied in batches, at most one per 50 ms.
"use strict";

const $ = (id) => document.getElementById(id);
const tbody = $("rows");
const status = $("status");
const message = $("message");
const collator = new Intl.Collator(undefined, {numeric: true});

const PAGE_SIZE = 100;
const FILTERS = ["owner", "desired", "actual", "node"];
// the record's field each filter compares
const FIELDS = {owner: "owner", desired: "power_desired", actual: "power_actual",
  node: "assigned_node"};

// ------------------------------------------------------------------ containers

const rows = new Map();    // id -> {tr, cells, buttons, record, busy}
const order = [];          // the rows in page order (by id)
const pending = new Map(); // id -> {record (null: deleted), matches}, applied at the next flush
// id -> how many stream events came for it. An answer to our own request (a create, a
// Start...) may reach the page after the stream brought a later state of the record (the
// worker's "on"): it is shown only if no stream event for the record came while it was
// on its way. Skipping it loses nothing: the stream sends every change, ours included.
const streamed = new Map();
let flushTimer = null;

const view = {
  filter: {},     // filter name -> value, the ones given
  cursor: null,   // the page starts after this cursor (null: the first page)
  floor: null,    // the previous page's last id: this page holds the ids above it
  ceiling: null,  // this page's last id while a next page exists (null: no bound)
  next: null,     // the next page's cursor (null: this is the last page)
  back: [],       // [{cursor, floor}] of the pages before this one, for Previous
  loaded: false,  // the range is known: events are held until it is
  total: null,    // how many records web lists (X-Total-Count)
};
let loadGen = 0;           // the current load; an older one's answers are dropped
let changedDuringLoad = null; // ids changed by events since the current load began

function compareIds(a, b) { return a < b ? -1 : a > b ? 1 : 0; }

function inRange(id) {
  return (view.floor === null || id > view.floor)
    && (view.ceiling === null || id <= view.ceiling);
}

function matchesFilter(record) {
  return record != null && FILTERS.every((f) =>
    view.filter[f] === undefined || record[FIELDS[f]] === view.filter[f]);
}

function text(td, value) {
  const s = value == null ? "" : String(value);
  if (td.textContent !== s) { td.textContent = s; td.title = s; }
}

const ACTIONS = ["start", "stop", "restart", "delete", "history"];

function newRow(record) {
  const tr = document.createElement("tr");
  tr.dataset.id = record.id;
  if (drawer.id === record.id) tr.classList.add("selected");
  const cells = {};
  for (const cls of ["cid", "name", "owner", "desired", "actual", "node", "pid", "error"]) {
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
  text(row.cells.cid, c.id);
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

// index of the first row whose id sorts after `id` (binary search)
function position(id) {
  let lo = 0, hi = order.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareIds(order[mid].record.id, id) < 0) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function place(row) {
  const at = position(row.record.id);
  tbody.insertBefore(row.tr, at < order.length ? order[at].tr : null);
  order.splice(at, 0, row);
}

function unplace(row) {
  const at = position(row.record.id);
  if (order[at] === row) order.splice(at, 1);
  row.tr.remove();
}

// show `record` in its row if this page shows it (it matches the filters and its id
// is in the page's range), else drop its row
function apply(id, record, matches) {
  let row = rows.get(id);
  if (record == null || !matches || !inRange(id)) {
    if (row) { unplace(row); rows.delete(id); }
    if (drawer.id === id && record == null) showHistoryGone();
    return;
  }
  if (!row) {
    row = newRow(record);
    rows.set(id, row);
    place(row);
  }
  row.record = record;
  paint(row);
  if (drawer.id === id) refreshHistory();
}

function flush() {
  flushTimer = null;
  if (!view.loaded) return;  // the load in progress flushes when it is done
  const batch = [...pending];
  pending.clear();
  for (const [id, u] of batch) apply(id, u.record, u.matches);
  paintPager();
}

function update(id, record, matches) {
  pending.set(id, {record, matches});
  if (changedDuringLoad) changedDuringLoad.add(id);
  if (flushTimer === null) flushTimer = setTimeout(flush, 50);
  refreshTotal();
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
  const seen = streamed.get(id) ?? 0;
  try {
    const r = await fetch(url, {method: action === "delete" ? "DELETE" : "POST"});
    const body = await r.json();
    if (!r.ok) message.textContent = `${action} failed: ${body.error}`;
    else {
      message.textContent = "";
      if ((streamed.get(id) ?? 0) === seen) {  // else the stream is ahead of the answer
        done = true;
        if (action === "delete") update(id, null, false);
        else update(id, body, matchesFilter(body));
      }
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
  if (!r.ok) { message.textContent = body.error; return; }
  $("name").value = "";
  const shown = matchesFilter(body) && inRange(body.id);
  message.textContent = shown ? "" : `created "${body.name}" (${body.id}): `
    + "not on this page or not matching the filters";
  if (!streamed.has(body.id)) update(body.id, body, matchesFilter(body));
};

// ------------------------------------------------------------------ pages

function query(extra) {
  const q = new URLSearchParams();
  for (const f of FILTERS) if (view.filter[f] !== undefined) q.set(f, view.filter[f]);
  for (const [k, v] of Object.entries(extra)) if (v != null) q.set(k, v);
  return q.toString();
}

// the cursor of the Link header's rel="next" URL (RFC 8288), or null
function nextCursor(link) {
  const m = link && link.match(/<([^>]*)>\s*;\s*rel="?next"?/);
  return m ? new URL(m[1], location.href).searchParams.get("cursor") : null;
}

// Load the current page: PAGE_SIZE records from view.cursor, following the Link
// while a filtered answer stops short. A record an event changed meanwhile keeps
// the event's version; a row the page no longer has goes.
async function loadView() {
  const gen = ++loadGen;
  const changed = changedDuringLoad = new Set();
  view.loaded = false;
  paintPager();
  const found = [];
  let cursor = view.cursor, next = null, failed = false;
  try {
    do {
      const r = await fetch(`/api/containers?${query({limit: PAGE_SIZE - found.length, cursor})}`);
      const body = await r.json();
      if (gen !== loadGen) return;
      if (!r.ok) { message.textContent = `listing failed: ${body.error}`; failed = true; break; }
      found.push(...body);
      cursor = next = nextCursor(r.headers.get("Link"));
    } while (next !== null && found.length < PAGE_SIZE);
  } catch (e) {
    if (gen !== loadGen) return;
    message.textContent = `listing failed: ${e}`;
    failed = true;
  }
  view.next = failed ? null : next;
  view.ceiling = next !== null && found.length ? found[found.length - 1].id : null;
  const present = new Set();
  for (const c of found) {
    present.add(c.id);
    if (!changed.has(c.id)) pending.set(c.id, {record: c, matches: true});
  }
  if (!failed) {
    for (const [id, row] of rows) {
      if (!present.has(id) && !changed.has(id)) pending.set(id, {record: row.record, matches: false});
    }
  }
  changedDuringLoad = null;
  view.loaded = true;
  flush();
  refreshTotal(0);
}

function go(cursor, floor) {
  view.cursor = cursor;
  view.floor = floor;
  view.ceiling = null;
  view.next = null;
  loadView();
}

$("next").onclick = $("next-bottom").onclick = () => {
  if (!view.loaded || view.next === null) return;
  view.back.push({cursor: view.cursor, floor: view.floor});
  go(view.next, view.ceiling);
};
$("prev").onclick = $("prev-bottom").onclick = () => {
  if (!view.loaded || !view.back.length) return;
  const before = view.back.pop();
  go(before.cursor, before.floor);
};
$("first").onclick = () => { view.back = []; go(null, null); };

function paintPager() {
  $("next").disabled = $("next-bottom").disabled = !view.loaded || view.next === null;
  $("prev").disabled = $("prev-bottom").disabled = !view.loaded || !view.back.length;
  $("first").disabled = !view.loaded || !view.back.length;
  $("pager-bottom").hidden = rows.size < 20;  // a short page needs no second pager
  const filtered = FILTERS.some((f) => view.filter[f] !== undefined);
  const what = filtered ? "matching rows" : "rows";
  $("page-info").textContent = view.loaded
    ? `page ${view.back.length + 1}: ${rows.size} ${what}${view.next === null ? " (the last page)" : ""}`
    : "loading…";
  if (view.total !== null) {
    $("count").textContent = `${view.total} container${view.total === 1 ? "" : "s"}`;
  }
}

// how many records there are, from a one-record page without a filter; again at
// most every 2 s while records change
let totalTimer = null;
function refreshTotal(delay = 2000) {
  if (totalTimer !== null) return;
  totalTimer = setTimeout(async () => {
    try {
      const r = await fetch("/api/containers?limit=1");
      if (r.ok && r.headers.has("X-Total-Count")) view.total = +r.headers.get("X-Total-Count");
      paintPager();
    } finally {
      totalTimer = null;
    }
  }, delay);
}

// the filters: a new filter starts at the first page, on a stream of its own
$("filters").onsubmit = (e) => {
  e.preventDefault();
  const filter = {};
  for (const f of FILTERS) {
    const value = $(`f-${f}`).value;
    if (value !== "") filter[f] = value;
  }
  view.filter = filter;
  view.back = [];
  view.cursor = view.floor = view.ceiling = view.next = null;
  view.loaded = false;
  loadGen++;  // an answer for the old filter is dropped
  paintPager();
  connect();
};
for (const f of ["desired", "actual"]) $(`f-${f}`).onchange = () => $("filters").requestSubmit();
$("f-clear").onclick = () => {
  for (const f of FILTERS) $(`f-${f}`).value = "";
  $("filters").requestSubmit();
};

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
  const names = [...nodes.keys()].sort(collator.compare);
  const list = $("node-names");
  if ([...list.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    list.replaceChildren(...names.map((v) => Object.assign(document.createElement("option"),
      {value: v})));
  }
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
  const dropped = h.complete_since_ms > h.since_ms;
  if (!items.length) {
    const li = document.createElement("li");
    li.textContent = dropped ? "no change kept" : "no change seen since web started";
    items.push(li);
  }
  if (dropped) {  // web keeps h.total changes in all: older ones may be gone
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = `changes before ${new Date(h.complete_since_ms).toLocaleTimeString()} `
      + `may be missing (web keeps the latest ${h.total} changes of all containers)`;
    items.push(li);
  }
  $("history-entries").replaceChildren(...items);
}

$("history-close").onclick = closeHistory;
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeHistory(); });

// ------------------------------------------------------------------ the stream

// The stream of the current filters; each time it (re)connects, the current page
// and the nodes are loaded again (the stream is subscribed before it opens: a list
// read then misses no change).
let events = null;
function connect() {
  if (events) events.close();
  events = new EventSource(`/api/events?${query({nodes: 1})}`);
  const mine = events;
  events.onopen = () => {
    status.textContent = "live";
    loadView();
    loadNodes();
  };
  events.onerror = () => {
    if (mine.readyState === EventSource.CLOSED) {  // refused: the listing says why
      status.textContent = "stopped";
      loadView();
    } else status.textContent = "reconnecting…";
  };
  events.addEventListener("container", (e) => {
    const data = JSON.parse(e.data);
    // bounded: after a clear, an answer on its way may be shown over a later state once
    if (streamed.size >= 10000 && !streamed.has(data.id)) streamed.clear();
    streamed.set(data.id, (streamed.get(data.id) ?? 0) + 1);
    update(data.id, data.record, data.record != null && data.matches !== false);
  });
  events.addEventListener("node", (e) => {
    const data = JSON.parse(e.data);
    setNode(data.name, data.node);
  });
}
connect();
