// Fleet console: hash routes over the admin API. The admin credential lives in sessionStorage
// and goes only in the Authorization header (no cookie: other sites' forms cannot use it).
"use strict";
const $ = (s, root = document) => root.querySelector(s);
const PARAMS = new URLSearchParams(location.search);
const POLL_MS = Number(PARAMS.get("poll")) || 5000;  // only while the live stream is down
const RETRY_MS = Number(PARAMS.get("retry")) || 5000;  // a broken stream is tried again after this
const PAGE = 100;
let timer = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - t));
  return s < 90 ? s + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : s < 172800 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago";
}
function dur(s) { if (s == null) return "-"; return s < 3600 ? Math.round(s / 60) + " min" : s < 172800 ? (s / 3600).toFixed(1) + " h" : (s / 86400).toFixed(1) + " d"; }
function when(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"; }

async function api(path, options = {}) {
  const headers = {Authorization: "Bearer " + sessionStorage.getItem("adm"), ...(options.body ? {"Content-Type": "application/json"} : {})};
  const r = await fetch(path, {...options, headers});
  if (r.status === 401) { sessionStorage.removeItem("adm"); showLogin("That credential was refused."); throw new Error("unauthorised"); }
  const body = r.status === 204 ? {} : await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
function say(text) { $("#status").textContent = text; }
function showLogin(message) {
  $("#login").hidden = false; $("#logout").hidden = true; $("#view").replaceChildren(); if (message) say(message);
}

// ---- overview ----
const filters = {q: "", status: "", group: ""};
let offset = 0;
function paged(fn) { return (e) => { fn(e); offset = 0; refresh(); }; }
async function overview() {
  const query = new URLSearchParams({...filters, limit: PAGE, offset});
  const data = await api("/v1/admin/fleet?" + query);
  if (route() !== "") return;  // the user moved on while this was loading
  let view = $("#overview");
  if (!view) {
    view = el("section", {id: "overview"},
      el("div", {class: "cards", id: "counts"}),
      el("p", {class: "states", id: "states"}),
      el("div", {class: "filters"},
        el("input", {id: "q", type: "search", placeholder: "search id, name, group", value: filters.q,
          oninput: paged((e) => { filters.q = e.target.value; })}),
        el("select", {id: "status-filter", onchange: paged((e) => { filters.status = e.target.value; })},
          ...["", "attention", "online", "offline", "disabled", "revoked"].map((s) => el("option", {value: s, selected: s === filters.status}, s || "all devices")))),
      el("table", {class: "responsive", id: "devices"},
        el("thead", {}, el("tr", {}, ...["device", "group", "status", "state", "last seen", "needs attention", "latency", "false wakes", "uptime", "version"].map((h) => el("th", {}, h)))),
        el("tbody")),
      el("p", {class: "pager"},
        el("button", {id: "prev", type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); }}, "← previous"),
        el("span", {class: "note", id: "matching"}),
        el("button", {id: "next", type: "button", onclick: () => { offset += PAGE; refresh(); }}, "next →")));
    $("#view").replaceChildren(view);
  }
  showCounts(data);
  $("#devices tbody").replaceChildren(...data.devices.map((d) => el("tr", {dataset: {id: d.id, status: d.status}},
    el("td", {"data-label": "device"}, el("a", {href: "#/device/" + d.id}, d.name), el("br"), el("small", {}, d.id)),
    el("td", {"data-label": "group"}, d.group),
    el("td", {"data-label": "status", class: "st-" + d.status}, d.status),
    el("td", {"data-label": "state"}, d.state),
    el("td", {"data-label": "last seen"}, ago(d.last_seen)),
    el("td", {"data-label": "attention"}, d.attention.length ? el("ul", {class: "attn"}, ...d.attention.map((a) => el("li", {}, a))) : "—"),
    el("td", {"data-label": "latency"}, d.last_turn_latency_ms == null ? "-" : d.last_turn_latency_ms + " ms"),
    el("td", {"data-label": "false wakes"}, String(d.false_wakes ?? "-")),
    el("td", {"data-label": "uptime"}, dur(d.uptime_s)),
    el("td", {"data-label": "version"}, d.version || "-"))));
  const last = offset + data.devices.length;
  $("#matching").textContent = data.matching ? `${offset + 1}–${last} of ${data.matching} (attention first)` : "no device matches";
  $("#prev").disabled = offset === 0;
  $("#next").disabled = last >= data.matching;
}
function showCounts(data) {  // the cards: from a page read or straight from a pushed event
  const c = data.counts;
  if (!$("#counts")) return;
  $("#counts").replaceChildren(...["online", "offline", "error", "muted", "disabled", "revoked"].map((k) =>
    el("div", {class: "card " + k, dataset: {count: k}}, el("b", {}, String(c[k])), k)));
  $("#states").textContent = "By state: " + (Object.entries(data.states).map(([s, n]) => `${s} ${n}`).join(" · ") || "none online") + ` — ${c.total} devices, ${data.attention} need attention`;
}

// ---- device page ----
const PLOTS = [
  ["Turn latency (end of speech → first audio), ms", [["latency_p50", "p50", "#1f77b4"], ["latency_p95", "p95", "#d62728"]]],
  ["Reconnects", [["reconnects", "reconnects", "#9467bd"]]],
  ["False wakes per hour", [["false_wakes_per_h", "false wakes/h", "#ff7f0e"]]],
  ["Self-interruptions", [["self_interruptions", "self-interruptions", "#8c564b"]]],
  ["ERLE (dB, audio front end)", [["erle_db", "ERLE", "#2ca02c"]]],
  ["Session length, s", [["session_s", "session", "#17becf"]]],
  ["Errors", [["errors", "errors", "#b00020"]]],
];
let deviceRange = "24h";
async function devicePage(id) {
  const [d, h] = await Promise.all([api(`/v1/admin/devices/${id}/detail`), api(`/v1/admin/devices/${id}/history?range=${deviceRange}`)]);
  if (location.hash !== "#/device/" + encodeURIComponent(id) && location.hash !== "#/device/" + id) return;
  const action = (verb) => async () => {
    if (verb === "revoke" && !confirm(`Revoke ${d.name}? It cannot come back.`)) return;
    await api(`/v1/admin/devices/${id}/${verb}`, {method: "POST"});
    say(verb === "rotate" ? `${d.name}: key rotation requested` : `${d.name}: ${verb}d`); refresh();
  };
  const cfg = d.config;
  const plots = el("div", {class: "plots", id: "plots"});
  const page = el("section", {id: "device", dataset: {id, status: d.status}},
    el("h2", {}, d.name, " ", el("small", {class: "st-" + d.status, id: "device-status"}, d.status)),
    el("p", {}, `${d.id} · state ${d.state} · last seen ${ago(d.last_seen)} · up ${dur(d.uptime_s)}`),
    d.attention.length ? el("ul", {class: "attn"}, ...d.attention.map((a) => el("li", {}, a))) : null,
    el("div", {class: "actions"},
      d.status !== "revoked" && d.status !== "disabled" ? el("button", {id: "disable", onclick: action("disable")}, "Disable") : null,
      d.status === "disabled" ? el("button", {id: "enable", onclick: action("enable")}, "Enable") : null,
      d.status !== "revoked" ? el("button", {id: "revoke", onclick: action("revoke")}, "Revoke") : null,
      d.status !== "revoked" && !d.key.rotation_requested_at ? el("button", {id: "rotate", title: "the device makes a new key at its next heartbeat", onclick: action("rotate")}, "Rotate key") : null),
    el("dl", {class: "config"},
      ...[["group", cfg.group], ["board", cfg.board || "not reported"], ["model", cfg.model || "service default"], ["firmware", cfg.firmware || "-"],
        ["echo canceller", cfg.aec || "-"], ["heartbeat", cfg.heartbeat_s ? cfg.heartbeat_s + " s" : "not reported"],
        ["last error", d.last_error || "none"], ["enrolled", when(d.created_at)],
        ["key", d.key.rotation_requested_at ? `rotation requested ${when(d.key.rotation_requested_at)}: the device makes its new key at its next heartbeat`
          : d.key.rotations.length ? `rotated ${when(d.key.rotations[0])}` : "the key it enrolled with"],
        ["key rotations", d.key.rotations.length ? d.key.rotations.map(when).join(", ") : "none"],
        ["transcripts", cfg.transcripts ? "this group opts in: the last turn's words are stored" : "kept on the device (the group has not opted in)"]]
        .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {dataset: {key: k}}, String(v))])),
    el("h3", {}, "Health over ", el("select", {id: "range", onchange: (e) => { deviceRange = e.target.value; refresh(); }},
      ...["24h", "7d"].map((r) => el("option", {value: r, selected: r === deviceRange}, r === "24h" ? "the last 24 h" : "the last 7 days")))),
    plots,
    el("h3", {}, "Audit trail"),
    auditTable(d.audit));
  $("#view").replaceChildren(page);
  drawPlots(plots, h.series);
}
function drawPlots(root, s) {
  const boxes = PLOTS.map(([title]) => el("div", {class: "plot"}, el("h3", {}, title)));
  root.append(...boxes);  // all laid out first: each plot then takes its box's width
  for (const [i, [, lines]] of PLOTS.entries()) {
    const box = boxes[i];
    const points = lines.reduce((n, [k]) => n + s[k].filter((v) => v !== null).length, 0);
    box.dataset.points = String(points);
    new uPlot({width: Math.max(240, box.clientWidth - 12), height: 160, legend: {show: true},
      series: [{}, ...lines.map(([, label, stroke]) => ({label, stroke, width: 2, spanGaps: false, points: {size: 5}}))],
      axes: [{}, {size: 58}]}, [s.t, ...lines.map(([k]) => s[k])], box);
  }
}
function auditTable(rows) {
  return el("table", {class: "responsive audit"},
    el("thead", {}, el("tr", {}, ...["when", "action", "device", "detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((a) => el("tr", {},
      el("td", {"data-label": "when"}, when(a.at)), el("td", {"data-label": "action"}, a.action),
      el("td", {"data-label": "device"}, a.device_id ? el("a", {href: "#/device/" + a.device_id}, a.device_id) : "—"),
      el("td", {"data-label": "detail"}, JSON.stringify(a.detail))))));
}

// ---- groups, tokens, audit ----
async function groupsPage() {
  const {groups} = await api("/v1/admin/console/groups");
  $("#view").replaceChildren(el("section", {id: "groups"}, el("h2", {}, "Groups"),
    el("p", {class: "privacy"}, "Transcripts: the words of a device's last turn leave it only when its own setting provisioning.report_transcripts is on (off by default), and are stored only when its group opts in here; otherwise the server drops them before storing anything."),
    el("table", {class: "responsive"},
      el("thead", {}, el("tr", {}, ...["group", "devices", "model", "model warnings", "transcripts"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...groups.map((g) => el("tr", {dataset: {group: g.name}},
        el("td", {"data-label": "group"}, el("a", {href: "#/", onclick: () => { filters.group = g.name; }}, g.name)),
        el("td", {"data-label": "devices"}, String(g.devices)),
        el("td", {"data-label": "model"}, g.model || "service default"),
        el("td", {"data-label": "warnings"}, g.model_warnings.map((w) => `${w.field} ${w.model} ${w.retired ? "was shut down" : "retires " + w.shutdown_date}`).join("; ") || "—"),
        el("td", {"data-label": "transcripts"}, el("label", {}, el("input", {type: "checkbox", checked: g.transcripts,
          onchange: async (e) => { await api(`/v1/admin/groups/${encodeURIComponent(g.name)}/transcripts`, {method: "PUT", body: JSON.stringify({enabled: e.target.checked})}); say(`${g.name}: transcripts ${e.target.checked ? "on" : "off"}`); }}), " opt in"))))))));
}
async function tokensPage() {
  const {tokens} = await api("/v1/admin/tokens");
  const {groups} = await api("/v1/admin/console/groups");
  const made = el("p", {id: "new-token"});
  $("#view").replaceChildren(el("section", {id: "tokens"}, el("h2", {}, "Enrollment tokens"),
    el("form", {class: "filters", onsubmit: async (e) => { e.preventDefault(); const f = e.target;
      const t = await api("/v1/admin/tokens", {method: "POST", body: JSON.stringify({group: f.group.value, uses: Number(f.uses.value), ttl_s: Number(f.ttl.value) * 3600, label: f.label.value})});
      await tokensPage(); $("#new-token").textContent = `New token (shown once): ${t.token}`; }},
      el("select", {name: "group"}, ...groups.map((g) => el("option", {value: g.name}, g.name))),
      el("label", {}, "uses ", el("input", {name: "uses", type: "number", min: 1, value: 1, size: 5})),
      el("label", {}, "valid (h) ", el("input", {name: "ttl", type: "number", min: 1, value: 24, size: 5})),
      el("input", {name: "label", placeholder: "label"}), el("button", {type: "submit", id: "create-token"}, "Create token")),
    made,
    el("table", {class: "responsive"},
      el("thead", {}, el("tr", {}, ...["id", "group", "label", "uses", "expires", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...tokens.map((t) => el("tr", {},
        el("td", {"data-label": "id"}, String(t.id)), el("td", {"data-label": "group"}, t.group), el("td", {"data-label": "label"}, t.label || "—"),
        el("td", {"data-label": "uses"}, `${t.uses} / ${t.max_uses}`), el("td", {"data-label": "expires"}, when(t.expires_at)),
        el("td", {}, t.usable ? el("button", {onclick: async () => { await api(`/v1/admin/tokens/${t.id}/expire`, {method: "POST"}); tokensPage(); }}, "Expire") : "not usable")))))));
}
const auditFilter = {action: "", device_id: ""};
async function auditPage() {
  const {audit} = await api("/v1/admin/audit/search?" + new URLSearchParams({...auditFilter, limit: 200}));
  $("#view").replaceChildren(el("section", {id: "audit"}, el("h2", {}, "Audit log"),
    el("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); auditFilter.action = e.target.action.value; auditFilter.device_id = e.target.device.value; auditPage(); }},
      el("input", {name: "action", placeholder: "action (prefix, e.g. device.)", value: auditFilter.action}),
      el("input", {name: "device", placeholder: "device id", value: auditFilter.device_id}),
      el("button", {type: "submit"}, "Filter")),
    auditTable(audit)));
}

// ---- routing and live updates ----
function route() { return (location.hash || "#/").split("/")[1] || ""; }
let loading = null, again = false;
async function refresh() {  // one read at a time; a change meanwhile reads once more after it
  if (loading) { again = true; return loading; }
  loading = load();
  try { await loading; } finally { loading = null; }
  if (again) { again = false; return refresh(); }
}
async function load() {
  if (!sessionStorage.getItem("adm")) return showLogin();
  $("#login").hidden = true; $("#logout").hidden = false;
  const [, route, arg] = (location.hash || "#/").split("/");
  try {
    if (route === "device") await devicePage(decodeURIComponent(arg));
    else if (route === "groups") await groupsPage();
    else if (route === "tokens") await tokensPage();
    else if (route === "audit") await auditPage();
    else await overview();
    document.body.dataset.updated = String(Date.now());
  } catch (err) { say(String(err.message || err)); }
  live();
}

// The live feed: Server-Sent Events read with fetch (EventSource cannot send the
// Authorization header, and the credential never goes in a URL or a cookie). While it is
// down the overview polls every POLL_MS, and the stream is tried again every RETRY_MS.
let stream = null, retryAt = 0;
function setLive(mode) {
  document.body.dataset.live = mode;
  $("#live").textContent = mode === "stream" ? "● live" : mode === "polling" ? "○ polling" : "";
}
function onFleet(event) {
  if (!route()) { showCounts(event); refresh(); }
  else if (route() === "device") {
    const id = decodeURIComponent((location.hash || "").split("/")[2] || "");
    if (event.devices === null || event.devices.includes(id)) refresh();
  }
}
async function live() {
  if (stream || Date.now() < retryAt || !sessionStorage.getItem("adm")) return;
  const ctl = new AbortController();
  stream = ctl;
  let opened = 0;
  try {
    const r = await fetch("/v1/admin/console/events", {signal: ctl.signal,
      headers: {Authorization: "Bearer " + sessionStorage.getItem("adm"), Accept: "text/event-stream"}});
    if (r.status === 401) { sessionStorage.removeItem("adm"); showLogin("That credential was refused."); }
    if (!r.ok || !r.body) throw new Error("live feed refused: " + r.status);
    opened = Date.now();
    setLive("stream");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer = (buffer + value).replace(/\r\n/g, "\n");  // either line end, even split between reads
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {  // one event per blank line
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon === 0) continue;  // a comment (the server's keep-alive ping)
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = value; else if (field === "data") data.push(value);
        }
        if (name === "fleet" && data.length) onFleet(JSON.parse(data.join("\n")));
      }
    }
  } catch (err) {
    if (ctl.signal.aborted) return;
  } finally {
    if (stream === ctl) stream = null;
  }
  if (!sessionStorage.getItem("adm")) return setLive("off");
  // a stream that ran its lifetime comes back at once; one that broke or was refused after
  // RETRY_MS, the overview polling meanwhile
  if (opened && Date.now() - opened > 1000) return live();
  setLive("polling");
  retryAt = Date.now() + RETRY_MS;
  setTimeout(live, RETRY_MS);
}
function schedule() {
  clearInterval(timer);
  // only while the stream is down: the overview reads itself again every POLL_MS
  timer = setInterval(() => { if (!route() && !document.hidden && document.body.dataset.live !== "stream") refresh(); }, POLL_MS);
}
window.addEventListener("hashchange", () => { if (!location.hash.startsWith("#/device")) $("#view").replaceChildren(); refresh(); });
$("#login").addEventListener("submit", (e) => { e.preventDefault(); sessionStorage.setItem("adm", $("#token").value); $("#token").value = ""; refresh(); });
$("#logout").addEventListener("click", () => { sessionStorage.removeItem("adm"); if (stream) stream.abort(); stream = null; setLive("off"); showLogin("Logged out."); });
refresh(); schedule();
