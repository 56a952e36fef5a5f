// Live run events over /ws (subscribed to "*"), with reconnect + back-off and polling meanwhile.

import { api, wsUrl } from "./api.js";
import { store } from "./store.js";

const RUN_EVENTS = new Set(["run_started", "run_progress", "run_completed", "run_failed", "run_stalled", "run_state"]);
const POLL_MS = 3000;
const MAX_BACKOFF_MS = 30000;

export class LiveFeed {
  constructor({ onState = () => {}, onEvent = () => {} } = {}) {
    this.onState = onState;
    this.onEvent = onEvent;
    this.ws = null;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pollTimer = null;
    this.stopped = false;
    this.state = "connecting";
    // Events that arrive while a GET /api/runs is in flight, per request: its answer may be
    // older than they are, so they are applied again over it.
    this.inFlight = new Set();
  }

  start() {
    this.stopped = false;
    this.refresh();
    this.connect();
  }

  /** Drop the connection and start again at once (e.g. after the API key changed). */
  restart() {
    this.attempt = 0;
    clearTimeout(this.reconnectTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close();
    }
    this.refresh();
    this.connect();
  }

  setState(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  async connect() {
    if (this.stopped) return;
    this.setState("connecting");
    const attempt = (this.connecting = {});
    let ws;
    try {
      const url = await wsUrl();
      if (this.connecting !== attempt || this.stopped) return; // restarted meanwhile
      ws = new WebSocket(url);
    } catch (e) {
      if (this.connecting === attempt) this.onClosed();
      return;
    }
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", run_id: "*" }));
    ws.onmessage = (message) => this.onMessage(message);
    ws.onclose = () => {
      if (this.ws === ws) this.onClosed();
    };
  }

  onMessage(message) {
    let msg;
    try {
      msg = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    if (msg.type === "subscribed") {
      this.attempt = 0;
      this.stopPolling();
      this.setState("live");
      // Events may have been missed while disconnected: take a fresh snapshot.
      this.refresh();
    } else if (msg.type === "run_removed") {
      store.remove(msg.run_id);
      for (const seen of this.inFlight) seen.set(msg.run_id, null);
      this.onEvent(msg);
    } else if (RUN_EVENTS.has(msg.type) && msg.data) {
      store.upsert(msg.data);
      for (const seen of this.inFlight) seen.set(msg.data.run_id, msg.data);
      this.onEvent(msg);
    } else if (msg.type === "error") {
      console.warn("themis /ws:", msg.message);
    }
  }

  onClosed() {
    this.ws = null;
    if (this.stopped) return;
    this.startPolling();
    const delay = Math.round(Math.min(MAX_BACKOFF_MS, 1000 * 2 ** this.attempt) * (0.75 + Math.random() / 2));
    this.attempt += 1;
    this.setState("polling", delay);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  startPolling() {
    if (this.pollTimer) return;
    this.pollTimer = setInterval(() => this.refresh(), POLL_MS);
  }

  stopPolling() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  async refresh() {
    const seen = new Map();
    this.inFlight.add(seen);
    try {
      const { data } = await api("api/runs");
      store.replace(data);
      for (const [runId, summary] of seen) {
        if (summary) store.upsert(summary);
        else store.remove(runId);
      }
      this.onEvent({ type: "refresh" });
    } catch (err) {
      store.setError(err);
    } finally {
      this.inFlight.delete(seen);
    }
  }
}
