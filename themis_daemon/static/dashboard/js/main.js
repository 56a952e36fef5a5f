// Dashboard entry point: API key field, connection indicator, hash router.

import { getKey, setKey } from "./api.js";
import { LiveFeed } from "./live.js";
import { mountCompare } from "./views/compare.js";
import { mountDetail } from "./views/detail.js";
import { mountPairs } from "./views/pairs.js";
import { mountSample } from "./views/sample.js";
import { mountRuns } from "./views/runs.js";

const view = document.getElementById("view");
const conn = document.getElementById("conn");
const banner = document.getElementById("banner");
let unmount = null;

const STATES = {
  connecting: "connecting…",
  live: "live",
  polling: "offline · polling",
};

const feed = new LiveFeed({
  onState(state, delay) {
    conn.dataset.state = state;
    conn.textContent = STATES[state] || state;
    conn.title = state === "polling"
      ? `WebSocket unavailable: polling every few seconds, reconnecting in ${Math.round(delay / 1000)} s`
      : state === "live" ? "Live updates over WebSocket" : "Connecting to /ws";
  },
});

function route() {
  if (unmount) unmount();
  unmount = null;
  banner.hidden = true;
  const hash = window.location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  let active = "runs";
  const sample = /^\/runs\/([^/]+)\/samples\/(.+)$/.exec(path);
  if (sample) {
    unmount = mountSample(view, decodeURIComponent(sample[1]), decodeURIComponent(sample[2]));
  } else if (path.startsWith("/runs/")) {
    unmount = mountDetail(view, decodeURIComponent(path.slice("/runs/".length)));
  } else if (path === "/compare/samples") {
    active = "compare";
    unmount = mountPairs(view, params);
  } else if (path === "/compare") {
    active = "compare";
    unmount = mountCompare(view, params);
  } else {
    unmount = mountRuns(view);
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === active);
  }
}

function setupKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = getKey();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    banner.textContent = input.value.trim() ? "API key saved in this browser." : "API key removed.";
    banner.className = "banner info";
    banner.hidden = false;
    feed.restart();
    route();
    banner.hidden = false;
  });
}

setupKeyForm();
window.addEventListener("hashchange", route);
route();
feed.start();
