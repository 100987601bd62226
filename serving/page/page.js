// The control page: every action is one call of the public HTTP/JSON API (serving/http.py) with the
// person's bearer token; nothing here decides anything the API does not.
"use strict";

const API = "/apron.v1.Recommender/";
const SHOWN_ROWS = 12; // profile rows shown (plus every edited tag)
// kMax: the model's k_max (ListPrototypes); a list asks for min(LIST_LENGTH, kMax), as more is refused
const LIST_LENGTH = 10;
const state = { token: "", user: "", history: [], lastItems: [], kMax: LIST_LENGTH };
const $ = (id) => document.getElementById(id);

function log(text, bad) {
  const line = document.createElement("div");
  line.textContent = text;
  if (bad) line.className = "bad";
  $("status").prepend(line);
  while ($("status").children.length > 5) $("status").lastChild.remove();
}

// calls in flight, on <body data-pending> (a script driving the page waits for 0)
function pending(change) {
  document.body.dataset.pending = String(Number(document.body.dataset.pending || 0) + change);
}

async function call(method, body) {
  pending(+1);
  try {
    return await callApi(method, body);
  } finally {
    pending(-1);
  }
}

async function callApi(method, body) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = "Bearer " + state.token;
  const started = performance.now();
  const response = await fetch(API + method, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json();
  const ms = Math.round(performance.now() - started);
  log(`${method} ${JSON.stringify(body)} → ${response.status} in ${ms} ms${response.ok ? "" : ": " + answer.message}`, !response.ok);
  if (!response.ok) {
    if (response.status === 401) askForToken(answer.message);
    throw new Error(answer.message);
  }
  return answer;
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function useToken(token, user) {
  state.token = token;
  const claim = claims(token);
  // a user token may touch its own profile only; a service token any (the person names it)
  state.user = claim.role === "user" ? claim.sub : user || state.user || "apron-page";
  $("who").textContent = token
    ? `Signed in as ${claim.sub} (${claim.role}); profile of user ${state.user}.`
    : `No token needed (auth is off); profile of user ${state.user}.`;
  $("token-form").hidden = true;
  $("search").disabled = false;
  $("reset").disabled = false;
}

function askForToken(why) {
  $("token-why").textContent = why;
  $("user").value = state.user || "apron-page";
  $("token-form").hidden = false;
  $("search").disabled = true;
}

async function start() {
  const saved = sessionStorage.getItem("apron-token");
  if (saved !== null) {
    useToken(saved, sessionStorage.getItem("apron-user"));
  } else {
    const response = await fetch("/v1/dev-token");
    const answer = await response.json();
    if (!response.ok) return askForToken(answer.message);
    state.user = answer.user_id;
    useToken(answer.auth ? answer.token : "", answer.user_id);
  }
  const listed = await call("ListPrototypes", {});
  state.kMax = listed.k_max;
  log(`model version ${listed.model_version}: ${listed.prototypes.length} tags`);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  sessionStorage.setItem("apron-token", token);
  sessionStorage.setItem("apron-user", $("user").value.trim());
  useToken(token, $("user").value.trim());
  call("ListPrototypes", {})
    .then((listed) => {
      state.kMax = listed.k_max;
      return refresh();
    })
    .catch(() => {});
});

let searching = null;
$("search").addEventListener("input", () => {
  clearTimeout(searching);
  const query = $("search").value.trim();
  if (!query) return void ($("results").textContent = "");
  searching = setTimeout(async () => {
    const found = await call("SearchItems", { query, limit: 8 });
    $("results").textContent = "";
    for (const item of found.items) {
      const li = document.createElement("li");
      li.textContent = item.name;
      const add = document.createElement("button");
      add.textContent = "add";
      add.dataset.id = item.item_id;
      add.addEventListener("click", () => addArtist(item));
      li.append(add);
      $("results").append(li);
    }
  }, 150);
});

function addArtist(item) {
  if (!state.history.some((known) => known.item_id === item.item_id)) state.history.push(item);
  $("search").value = "";
  $("results").textContent = "";
  renderHistory();
  refresh().catch(() => {});
}

function renderHistory() {
  $("history").textContent = "";
  for (const item of state.history) {
    const li = document.createElement("li");
    li.textContent = item.name;
    li.dataset.id = item.item_id;
    const drop = document.createElement("button");
    drop.textContent = "×";
    drop.title = "forget this artist";
    drop.addEventListener("click", () => {
      state.history = state.history.filter((known) => known.item_id !== item.item_id);
      renderHistory();
      refresh().catch(() => {});
    });
    li.append(drop);
    $("history").append(li);
  }
}

// One Recommend: the history (the same one again is served from the cached profile) and the list.
async function refresh() {
  if (!state.history.length) {
    $("items").textContent = "";
    $("profile").textContent = "";
    return;
  }
  const history = state.history.map((item) => item.item_id);
  const answer = await call("Recommend", { user_id: state.user, history, k: Math.min(LIST_LENGTH, state.kMax) });
  renderItems(answer.items);
  renderProfile(answer.profile);
}

function renderItems(items) {
  const before = new Set(state.lastItems);
  $("items").textContent = "";
  for (const item of items) {
    const li = document.createElement("li");
    li.textContent = item.name;
    li.dataset.id = item.item_id;
    if (state.lastItems.length && !before.has(item.item_id)) li.className = "new";
    $("items").append(li);
  }
  state.lastItems = items.map((item) => item.item_id);
}

function renderProfile(profile) {
  $("profile").textContent = "";
  const rows = [...profile.weights].sort((a, b) => b.base_weight - a.base_weight);
  const shown = rows.filter((row, rank) => row.edit || (rank < SHOWN_ROWS && Math.max(row.weight, row.base_weight) >= 0.005));
  for (const row of shown) $("profile").append(profileRow(row));
}

function profileRow(row) {
  const div = document.createElement("div");
  div.className = "row" + (row.edit ? " edited" : "");
  div.dataset.tag = row.prototype;
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = row.prototype;
  tag.title = row.edit ? `edited: ${JSON.stringify(row.edit)}` : row.prototype;
  const bar = document.createElement("div");
  bar.className = "bar";
  const base = document.createElement("div");
  base.className = "base";
  base.style.width = `${(100 * row.base_weight).toFixed(1)}%`;
  const now = document.createElement("div");
  now.className = "now";
  now.style.width = `${(100 * row.weight).toFixed(1)}%`;
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = "0";
  slider.max = "100";
  slider.value = String(Math.round(100 * row.weight));
  slider.className = "weight";
  slider.setAttribute("aria-label", `share of ${row.prototype}`);
  const pct = document.createElement("span");
  pct.className = "pct";
  pct.textContent = `${(100 * row.weight).toFixed(0)}%`;
  slider.addEventListener("input", () => (pct.textContent = `${slider.value}%`));
  slider.addEventListener("change", () => edit({ prototype: row.prototype, weight: Number(slider.value) / 100 }));
  const remove = document.createElement("button");
  remove.className = "remove";
  remove.textContent = "remove";
  remove.addEventListener("click", () => edit({ prototype: row.prototype, scale: 0 }));
  bar.append(base, now, slider);
  div.append(tag, bar, pct, remove);
  return div;
}

// One EditProfile (stored for the user), then the list again.
async function edit(change) {
  try {
    await call("EditProfile", { user_id: state.user, edits: [change] });
  } finally {
    await refresh().catch(() => {});
  }
}

$("reset").addEventListener("click", () => {
  call("EditProfile", { user_id: state.user, reset: true }).then(refresh).catch(() => {});
});

start().catch((error) => log(String(error), true));
