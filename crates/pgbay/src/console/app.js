// pgbay web console: plain JavaScript, no build step. Every API request is signed in the page
// with EXO2-HMAC-SHA256 (Web Crypto), exactly as the official Exoscale clients sign, with the
// key pair that the login form keeps in sessionStorage (this tab only). Live pool numbers come
// from the Prometheus endpoint /metrics, signed the same way (it names every pool and user).
// Every URL is relative to the page: the console works over HTTPS (--api-tls) as over HTTP.
"use strict";

const API = "/v2";
const REFRESH_MS = 3000;
const SIGNATURE_VALIDITY_S = 600;
const OPERATION_WAIT_MS = 120000;
const METRICS = {
  clientsActive: "pgbay_pool_clients_active",
  clientsWaiting: "pgbay_pool_clients_waiting",
  serversActive: "pgbay_pool_servers_active",
  serversIdle: "pgbay_pool_servers_idle",
  transactions: "pgbay_pool_transactions_total",
};
const DASH = "\u2013";

// ---------------------------------------------------------------------------------------------
// Credentials and signing

const creds = {
  get() {
    const key = sessionStorage.getItem("pgbay.key");
    const secret = sessionStorage.getItem("pgbay.secret");
    return key && secret ? { key, secret } : null;
  },
  set(key, secret) {
    sessionStorage.setItem("pgbay.key", key);
    sessionStorage.setItem("pgbay.secret", secret);
  },
  clear() {
    sessionStorage.removeItem("pgbay.key");
    sessionStorage.removeItem("pgbay.secret");
  },
};

// Seconds to add to this browser's clock to get the server's (from the Date header), so that a
// skewed clock does not make every signature "expired".
let clockSkew = 0;

function b64(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s);
}

// The Authorization header of a request without query string: HMAC-SHA256 over
// "METHOD PATH\nBODY\n<signed query values>\n<signed headers>\nEXPIRES" (as pgbay_api::auth).
async function authorization(c, method, path, body) {
  const expires = Math.floor(Date.now() / 1000) + clockSkew + SIGNATURE_VALIDITY_S;
  const message = `${method} ${path}\n${body}\n\n\n${expires}`;
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey(
    "raw", enc.encode(c.secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const sig = await crypto.subtle.sign("HMAC", key, enc.encode(message));
  return `EXO2-HMAC-SHA256 credential=${c.key},expires=${expires},signature=${b64(sig)}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function seg(s) {
  return encodeURIComponent(s);
}

// A signed API call with `c` (the logged-in key pair by default); the parsed JSON answer, or an
// ApiError with the API's message. A refused signature of the logged-in pair logs out.
async function api(method, path, bodyValue, given = null, retried = false) {
  const c = given || creds.get();
  if (!c) throw new ApiError(403, "not logged in");
  const body = bodyValue === undefined ? "" : JSON.stringify(bodyValue);
  const headers = { Authorization: await authorization(c, method, API + path, body) };
  if (body) headers["Content-Type"] = "application/json";
  const resp = await fetch(API + path, { method, headers, body: body || undefined, cache: "no-store" });
  const text = await resp.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (resp.ok) return data;
  const message = (data && typeof data.message === "string") ? data.message : `HTTP ${resp.status}: ${text}`;
  if (resp.status === 403 && /expire/.test(message) && !retried && resp.headers.get("Date")) {
    clockSkew = Math.round((Date.parse(resp.headers.get("Date")) - Date.now()) / 1000);
    return api(method, path, bodyValue, given, true);
  }
  if (resp.status === 403 && !given) {
    creds.clear();
    route();
  }
  throw new ApiError(resp.status, message);
}

// The text of /metrics, signed like the API's requests; "" when it cannot be read (the numbers
// then show dashes).
async function fetchMetrics() {
  const c = creds.get();
  if (!c) return "";
  try {
    const headers = { Authorization: await authorization(c, "GET", "/metrics", "") };
    const resp = await fetch("/metrics", { headers, cache: "no-store" });
    return resp.ok ? await resp.text() : "";
  } catch (_) {
    return "";
  }
}

async function waitOperation(op) {
  const deadline = Date.now() + OPERATION_WAIT_MS;
  while (op && op.state === "pending") {
    if (Date.now() > deadline) throw new Error(`operation ${op.id} still pending`);
    await new Promise((r) => setTimeout(r, 300));
    op = await api("GET", `/operation/${seg(op.id)}`);
  }
  if (!op || op.state !== "success") {
    throw new Error(`operation ${op && op.id} ended in ${op && op.state}: ${op && op.reason}: ${op && op.message}`);
  }
  return op;
}

// ---------------------------------------------------------------------------------------------
// Metrics

// "name{a="x",b="y"} 12" lines → [{name, labels, value}] (comments and other shapes skipped).
function parseMetrics(text) {
  const out = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(label)) {
      labels[l[1]] = l[2].replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// Per pool of `service`: {clientsActive, …, transactions} summed over its series, or {} when
// /metrics has no such series.
function poolNumbers(samples, service) {
  const byPool = new Map();
  const wanted = new Map(Object.entries(METRICS).map(([k, v]) => [v, k]));
  for (const s of samples) {
    const field = wanted.get(s.name);
    if (!field || s.labels.service !== service || !s.labels.pool) continue;
    const p = byPool.get(s.labels.pool) || {};
    p[field] = (p[field] || 0) + s.value;
    byPool.set(s.labels.pool, p);
  }
  return byPool;
}

const previousTotals = new Map(); // "service/pool" → {t, total}

function tps(service, pool, total, now) {
  const key = `${service}/${pool}`;
  const prev = previousTotals.get(key);
  previousTotals.set(key, { t: now, total });
  if (!prev || now <= prev.t || total < prev.total) return null;
  return (total - prev.total) / ((now - prev.t) / 1000);
}

// ---------------------------------------------------------------------------------------------
// Page helpers

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

let flashTimer = null;
function flash(text, kind = "info") {
  const f = $("#flash");
  f.textContent = text;
  f.className = kind;
  f.hidden = false;
  clearTimeout(flashTimer);
  if (kind !== "error") flashTimer = setTimeout(() => { f.hidden = true; }, 6000);
}

function stateBadge(state) {
  return el("span", { class: `state ${state}` }, state);
}

// A delete button that asks for a second click within 4 s.
// Delete buttons armed by a first click, by key, with when the arming ends: the periodic refresh
// re-renders the rows, and a button made again for the same object stays armed.
const armedUntil = new Map();
const ARMED_MS = 4000;

function deleteButton(label, onConfirm, cls = "", key = null) {
  const b = el("button", { type: "button", class: `danger small ${cls}` }, label);
  let timer = null;
  const arm = (ms) => {
    b.classList.add("armed");
    b.textContent = "Confirm delete";
    timer = setTimeout(() => { b.classList.remove("armed"); b.textContent = label; }, ms);
  };
  const left = key === null ? 0 : (armedUntil.get(key) || 0) - Date.now();
  if (left > 0) arm(left);
  b.addEventListener("click", async () => {
    if (!b.classList.contains("armed")) {
      const now = Date.now();
      for (const [k, until] of armedUntil) if (until <= now) armedUntil.delete(k);
      if (key !== null) armedUntil.set(key, now + ARMED_MS);
      arm(ARMED_MS);
      return;
    }
    clearTimeout(timer);
    if (key !== null) armedUntil.delete(key);
    b.disabled = true;
    await onConfirm();
    b.disabled = false;
  });
  return b;
}

// Runs a mutation: disables `control`, waits for its operation, reports, then `after`.
async function mutate(control, pending, done, call, after) {
  if (control) control.disabled = true;
  flash(pending);
  try {
    const op = await call();
    await waitOperation(op);
    flash(done, "ok");
  } catch (e) {
    flash(e.message, "error");
  } finally {
    if (control) control.disabled = false;
  }
  if (after) await after();
}

async function copy(text, button) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      const t = el("textarea");
      t.style.position = "fixed"; // CSSOM, not a style attribute: the CSP forbids inline styles
      t.style.left = "-9999px";
      t.value = text;
      document.body.append(t);
      t.select();
      document.execCommand("copy");
      t.remove();
    }
    button.textContent = "Copied";
  } catch (_) {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

function maskedUri(uri) {
  return uri.replace(/^(postgres(?:ql)?:\/\/[^:@/]*:)[^@]*@/, "$1\u2022\u2022\u2022\u2022@");
}

// ---------------------------------------------------------------------------------------------
// Views

let refreshTimer = null;
let view = null; // {kind, service} of the page shown

function stopRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = null;
}

function scheduleRefresh(fn) {
  stopRefresh();
  refreshTimer = setTimeout(async () => {
    try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 403)) flash(e.message, "error"); }
    if (refreshTimer !== null) scheduleRefresh(fn);
  }, REFRESH_MS);
}

function show(templateId) {
  const main = $("#main");
  main.replaceChildren($(templateId).content.cloneNode(true));
  return main;
}

function crumbs(...parts) {
  $("#crumbs").replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

function loginView() {
  stopRefresh();
  view = { kind: "login" };
  $("#who").hidden = true;
  crumbs();
  show("#t-login");
  if (!window.crypto || !crypto.subtle) {
    flash("This page needs Web Crypto, which browsers offer only over HTTPS or on localhost: open the console through HTTPS or http://127.0.0.1.", "error");
  }
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const c = { key: $("#login-key").value.trim(), secret: $("#login-secret").value };
    const button = $("#login-form button");
    button.disabled = true;
    try {
      await api("GET", "/dbaas-service", undefined, c);
      creds.set(c.key, c.secret);
      $("#flash").hidden = true;
      route();
    } catch (e) {
      flash(e.message, "error");
    } finally {
      button.disabled = false;
    }
  });
}

async function servicesView() {
  view = { kind: "services" };
  crumbs(el("a", { href: "#/" }, "Services"));
  show("#t-services");
  $("#create-service-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("#service-name").value.trim();
    const plan = $("#service-plan").value.trim();
    mutate(ev.submitter, `Creating service ${name}…`, `Service ${name} created`,
      async () => {
        const op = await api("POST", `/dbaas-postgres/${seg(name)}`, { plan });
        renderServices().catch(() => {}); // show it provisioning while the operation runs
        return op;
      }, async () => { $("#service-name").value = ""; await renderServices(); });
  });
  await renderServices();
  scheduleRefresh(renderServices);
}

async function renderServices() {
  if (!view || view.kind !== "services") return;
  const list = (await api("GET", "/dbaas-service"))["dbaas-services"] || [];
  if (!view || view.kind !== "services") return;
  list.sort((a, b) => a.name.localeCompare(b.name));
  const rows = list.map((s) => el("tr", { dataset: { service: s.name } },
    el("td", {}, el("a", { href: `#/service/${seg(s.name)}`, class: "service-link" }, s.name)),
    el("td", {}, s.plan),
    el("td", { class: "service-state" }, stateBadge(s.state)),
    el("td", {}, (s["created-at"] || "").replace("T", " ").replace("Z", " UTC")),
    el("td", {}, deleteButton("Delete", () => deleteService(s.name), "service-delete", `service:${s.name}`))));
  $("#services tbody").replaceChildren(...rows);
  $("#services-empty").hidden = list.length > 0;
}

function deleteService(name) {
  return mutate(null, `Deleting service ${name}…`, `Service ${name} deleted`,
    () => api("DELETE", `/dbaas-postgres/${seg(name)}`),
    async () => { if (view.kind === "services") await renderServices(); else location.hash = "#/"; });
}

async function serviceView(name) {
  view = { kind: "service", service: name, shape: null };
  crumbs(el("a", { href: "#/" }, "Services"), el("a", { href: `#/service/${seg(name)}` }, name));
  show("#t-service");
  $("#svc-title").textContent = name;
  const reload = () => renderService(name);
  $("#create-pool-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const pool = $("#pool-name").value.trim();
    const body = {
      name: pool,
      "database-name": $("#pool-database").value,
      mode: $("#pool-mode").value,
      size: Number($("#pool-size").value),
    };
    if ($("#pool-user").value) body.username = $("#pool-user").value;
    mutate(ev.submitter, `Creating pool ${pool}…`, `Pool ${pool} created`,
      () => api("POST", `/dbaas-postgres/${seg(name)}/connection-pool`, body),
      async () => { $("#pool-name").value = ""; await reload(); });
  });
  $("#create-database-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const db = $("#database-name").value.trim();
    mutate(ev.submitter, `Creating database ${db}…`, `Database ${db} created`,
      () => api("POST", `/dbaas-postgres/${seg(name)}/database`, { "database-name": db }),
      async () => { $("#database-name").value = ""; await reload(); });
  });
  $("#create-user-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = $("#user-name").value.trim();
    mutate(ev.submitter, `Creating user ${user}…`, `User ${user} created`,
      () => api("POST", `/dbaas-postgres/${seg(name)}/user`, { username: user }),
      async () => { $("#user-name").value = ""; await reload(); });
  });
  const del = deleteButton("Delete service", () => deleteService(name));
  del.id = "delete-service";
  del.classList.remove("small");
  $("#delete-service").replaceWith(del);
  await reload();
  scheduleRefresh(reload);
}

async function renderService(name) {
  if (!view || view.kind !== "service" || view.service !== name) return;
  const [svc, metricsText] = await Promise.all([
    api("GET", `/dbaas-postgres/${seg(name)}`),
    fetchMetrics(),
  ]);
  if (!view || view.kind !== "service" || view.service !== name) return;
  const pools = svc["connection-pools"] || [];
  const users = svc.users || [];
  const databases = svc.databases || [];
  const pooler = (svc.components || []).find((c) => c.component === "pgbouncer");
  const summary = [
    ["State", stateBadge(svc.state)],
    ["Plan", svc.plan],
    ["PostgreSQL", svc.version || DASH],
    ["Pooler", pooler ? `${pooler.host}:${pooler.port}` : DASH],
    ["Created", (svc["created-at"] || "").replace("T", " ").replace("Z", " UTC")],
  ];
  $("#svc-summary").replaceChildren(...summary.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));

  // Rebuild the tables only when what they show changed, so that a size being typed survives
  // the refresh; the live numbers are updated in place.
  const shape = JSON.stringify([pools.map((p) => [p.name, p.database, p.username, p.mode, p.size, p["connection-uri"]]),
    users.map((u) => [u.username, u.type]), databases]);
  if (shape !== view.shape) {
    view.shape = shape;
    renderPools(name, pools);
    renderObjects(name, databases, users);
  }
  const numbers = poolNumbers(parseMetrics(metricsText), name);
  const now = Date.now();
  for (const p of pools) {
    const row = document.querySelector(`#pools tbody[data-pool="${CSS.escape(p.name)}"]`);
    if (!row) continue;
    const n = numbers.get(p.name) || {};
    const put = (cls, v) => { $(`.${cls}`, row).textContent = v === undefined || v === null ? DASH : v; };
    put("m-clients-active", n.clientsActive);
    put("m-clients-waiting", n.clientsWaiting);
    put("m-servers-active", n.serversActive);
    put("m-servers-idle", n.serversIdle);
    const rate = n.transactions === undefined ? null : tps(name, p.name, n.transactions, now);
    put("m-tps", rate === null ? null : rate.toFixed(1));
  }
}

function renderPools(service, pools) {
  const rows = pools.map((p) => {
    const size = el("input", { type: "number", min: "1", max: "10000", class: "pool-size", value: String(p.size) });
    const mode = el("select", { class: "pool-mode" },
      ...["session", "transaction", "statement"].map((m) => {
        const o = el("option", { value: m }, m);
        if (m === p.mode) o.selected = true;
        return o;
      }));
    const save = el("button", { type: "button", class: "secondary small pool-save" }, "Save");
    save.addEventListener("click", () => mutate(save, `Updating pool ${p.name}…`, `Pool ${p.name} updated`,
      () => api("PUT", `/dbaas-postgres/${seg(service)}/connection-pool/${seg(p.name)}`,
        { size: Number(size.value), mode: mode.value }),
      () => renderService(service)));
    const copyButton = el("button", { type: "button", class: "secondary small copy" }, "Copy");
    copyButton.addEventListener("click", () => copy(p["connection-uri"], copyButton));
    // One tbody per pool: its numbers and controls, then its connection URI on a line of its own.
    return el("tbody", { dataset: { pool: p.name } },
      el("tr", {},
        el("td", { class: "pool-name" }, p.name),
        el("td", {}, p.database),
        el("td", {}, p.username),
        el("td", { class: "num m-clients-active" }, DASH),
        el("td", { class: "num m-clients-waiting" }, DASH),
        el("td", { class: "num m-servers-active" }, DASH),
        el("td", { class: "num m-servers-idle" }, DASH),
        el("td", { class: "num m-tps" }, DASH),
        el("td", {}, mode),
        el("td", {}, size),
        el("td", { class: "actions" }, save, " ", deleteButton("Delete", () => mutate(null, `Deleting pool ${p.name}…`,
          `Pool ${p.name} deleted`,
          () => api("DELETE", `/dbaas-postgres/${seg(service)}/connection-pool/${seg(p.name)}`),
          () => renderService(service)), "pool-delete", `pool:${service}:${p.name}`))),
      el("tr", { class: "uri-row" },
        el("td", { colspan: "11" }, el("span", { class: "label" }, "URI "),
          el("span", { class: "uri", dataset: { uri: p["connection-uri"] }, title: "password hidden; Copy copies the whole URI" },
            maskedUri(p["connection-uri"])), " ", copyButton)));
  });
  $("#pools").replaceChildren($("#pools thead"), ...rows);
  $("#pools-empty").hidden = pools.length > 0;
}

function renderObjects(service, databases, users) {
  const dbSel = $("#pool-database");
  const dbKeep = dbSel.value;
  dbSel.replaceChildren(...databases.map((d) => el("option", { value: d }, d)));
  if (databases.includes(dbKeep)) dbSel.value = dbKeep;
  const userSel = $("#pool-user");
  const userKeep = userSel.value;
  userSel.replaceChildren(el("option", { value: "" }, "(admin user)"),
    ...users.map((u) => el("option", { value: u.username }, u.username)));
  if (users.some((u) => u.username === userKeep)) userSel.value = userKeep;

  $("#databases tbody").replaceChildren(...databases.map((d) => el("tr", { dataset: { database: d } },
    el("td", {}, d),
    el("td", {}, deleteButton("Delete", () => mutate(null, `Deleting database ${d}…`, `Database ${d} deleted`,
      () => api("DELETE", `/dbaas-postgres/${seg(service)}/database/${seg(d)}`),
      () => renderService(service)), "database-delete", `database:${service}:${d}`)))));
  $("#users tbody").replaceChildren(...users.map((u) => el("tr", { dataset: { user: u.username } },
    el("td", {}, u.username),
    el("td", {}, u.type || ""),
    el("td", {}, u.type === "primary" ? "" : deleteButton("Delete", () => mutate(null, `Deleting user ${u.username}…`,
      `User ${u.username} deleted`,
      () => api("DELETE", `/dbaas-postgres/${seg(service)}/user/${seg(u.username)}`),
      () => renderService(service)), "user-delete", `user:${service}:${u.username}`)))));
}

// ---------------------------------------------------------------------------------------------
// Routing: #/ (services), #/service/NAME

function route() {
  stopRefresh();
  const c = creds.get();
  if (!c) return loginView();
  $("#who").hidden = false;
  $("#who-key").textContent = c.key;
  const m = /^#\/service\/(.+)$/.exec(location.hash);
  const go = m ? serviceView(decodeURIComponent(m[1])) : servicesView();
  go.catch((e) => flash(e.message, "error"));
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#logout").addEventListener("click", () => {
    creds.clear();
    $("#flash").hidden = true;
    route();
  });
  route();
});
