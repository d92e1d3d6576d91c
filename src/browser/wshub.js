// wshub.js: the browser client of wshub's JSON protocol (PROTOCOL.md). One ES module, no
// dependencies, no build step. Served by the crate at /wshub.js (wshub::browser).
//
//   import { connect } from "/wshub.js";
//   const client = connect("/ws");
//   client.subscribe("board", { onPublication: (data) => show(data) });
//
// It reconnects with exponential backoff and full jitter, resubscribes each topic "since"
// the last position it processed (exactly what was missed is replayed), detects gaps and
// dead connections, queues what is sent while offline (bounded), and reports presence.
// A connection found dead is reported as "closed" with code 4000.

const DEFAULTS = {
  minDelay: 500, // ms: the first reconnection waits a random time in [0, minDelay]
  maxDelay: 15000, // ms: the cap of the backoff step
  stableAfter: 5000, // ms open before the backoff starts again from the first step
  pingInterval: 20000, // ms of silence from the server before the client sends a ping
  pongTimeout: 10000, // ms more without any message: the connection is dead and replaced
  queueLimit: 100, // messages that send() keeps while offline; beyond, they are dropped
  protocols: undefined, // WebSocket subprotocols to offer
};

/** Opens a client to `url` (absolute ws(s)://, or a path on this page's host). */
export function connect(url, options) {
  return new Client(url, options);
}

function absolute(url) {
  if (/^wss?:\/\//.test(url)) return url;
  const u = new URL(url, location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export class Client {
  constructor(url, options) {
    this.url = absolute(url);
    this.options = { ...DEFAULTS, ...options };
    this.state = "connecting"; // "connecting" | "open" | "reconnecting" | "closed"
    this.attempt = 0; // reconnection attempts since the last stable connection
    this.subscriptions = new Map(); // topic -> Subscription
    this.queue = []; // what send() kept while offline
    this.listeners = new Map(); // event name -> Set of functions
    this.presenceWaiters = new Map(); // topic -> [{resolve, reject}], answered in order
    this.ws = null;
    this.timer = 0; // the liveness watchdog
    this.retryTimer = 0; // the next reconnection
    this.stableTimer = 0; // resets the backoff once the connection has lasted
    this.lastReceived = 0;
    this.pinged = false;
    this.pings = 0; // ids of the pings sent
    this.pingedAt = 0;
    this.wake = () => this.retryNow();
    this.visible = () => document.visibilityState === "visible" && this.retryNow();
    if (typeof window !== "undefined") window.addEventListener("online", this.wake);
    if (typeof document !== "undefined") document.addEventListener("visibilitychange", this.visible);
    // Once the caller has attached its listeners: they see the first "connecting" too.
    queueMicrotask(() => this.state === "connecting" && this.open());
  }

  /** The extensions the server accepted on the current socket (e.g. permessage-deflate). */
  get extensions() { return this.ws ? this.ws.extensions : ""; }

  /**
   * Listens to "connecting", "open", "closed", "reconnecting", "message", "error", "dropped",
   * "pong"; returns a function that removes the listener.
   */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(listener);
    return () => this.listeners.get(event).delete(listener);
  }

  emit(event, ...args) {
    for (const listener of this.listeners.get(event) || []) {
      try { listener(...args); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  /** Follows `topic` until unsubscribed, across reconnections, from `handlers.since` if given. */
  subscribe(topic, handlers = {}) {
    const existing = this.subscriptions.get(topic);
    if (existing) existing.unsubscribe();
    const sub = new Subscription(this, topic, handlers);
    this.subscriptions.set(topic, sub);
    if (this.state === "open") sub.request();
    return sub;
  }

  unsubscribe(topic) {
    if (!this.subscriptions.delete(topic)) return false;
    this.write({ type: "unsubscribe", topic });
    return true;
  }

  /**
   * Sends `data` (a string, an ArrayBuffer or typed array, or any other value as JSON). While
   * offline it is queued, up to `queueLimit` messages, and sent in order after the resubscribe
   * commands of the next connection. When the queue is full the message is dropped: send
   * returns false and "dropped" is emitted with it. Returns true when sent or queued, false
   * when dropped or after close().
   */
  send(data) {
    if (typeof data !== "string" && !(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) {
      data = JSON.stringify(data);
    }
    if (this.state === "closed") return false;
    if (this.state === "open" && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(data);
      return true;
    }
    if (this.queue.length >= this.options.queueLimit) {
      this.emit("dropped", { data, queued: this.queue.length });
      return false;
    }
    this.queue.push(data);
    return true;
  }

  /** Who is subscribed to `topic` now: a promise of [{id, info}] (ids are decimal strings). */
  presence(topic) {
    return new Promise((resolve, reject) => {
      if (this.state !== "open") return reject(new Error("not connected"));
      if (!this.presenceWaiters.has(topic)) this.presenceWaiters.set(topic, []);
      this.presenceWaiters.get(topic).push({ resolve, reject });
      this.write({ type: "presence", topic });
    });
  }

  /** Closes the connection for good (code 1000); nothing is reconnected or flushed after. */
  close() {
    if (this.state === "closed") return;
    if (typeof window !== "undefined") window.removeEventListener("online", this.wake);
    if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this.visible);
    this.state = "closed";
    this.drop(1000, "closed by the client");
    this.emit("closed", { code: 1000, reason: "closed by the client", wasClean: true });
  }

  // --- the connection ---------------------------------------------------------------------

  open() {
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.state = "connecting";
    this.emit("connecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url, this.options.protocols);
    } catch (e) { // a malformed URL, a blocked port: retried with backoff like any failure
      return this.lost(1006, String(e && e.message), false);
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.state = "open";
      this.received();
      // Reset the backoff only once the connection has proved stable.
      this.stableTimer = setTimeout(() => { this.attempt = 0; }, this.options.stableAfter);
      for (const sub of this.subscriptions.values()) {
        sub.resyncing = false; // a repair cut short is asked for again, here
        sub.request();
      }
      const queued = this.queue;
      this.queue = [];
      for (const data of queued) ws.send(data);
      this.emit("open", {});
    };
    ws.onmessage = (event) => {
      this.received();
      this.dispatch(event.data);
    };
    ws.onclose = (event) => this.lost(event.code, event.reason, event.wasClean);
  }

  /** Forgets the current socket without waiting for its close handshake. */
  drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    clearTimeout(this.timer);
    clearTimeout(this.stableTimer);
    clearTimeout(this.retryTimer);
    this.timer = this.retryTimer = 0;
    for (const waiters of this.presenceWaiters.values()) {
      for (const w of waiters) w.reject(new Error("connection lost"));
    }
    this.presenceWaiters.clear();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(code, reason); } catch { /* already closing */ }
  }

  lost(code, reason, wasClean) {
    if (this.state === "closed") return;
    this.drop(code === 4000 ? 4000 : 1000, reason);
    this.emit("closed", { code, reason, wasClean });
    // Full jitter: a random delay in [0, step], the step doubling up to maxDelay.
    this.attempt++;
    const { minDelay, maxDelay } = this.options;
    const step = Math.min(maxDelay, minDelay * 2 ** (this.attempt - 1));
    const delay = Math.random() * step;
    this.state = "reconnecting";
    this.retryTimer = setTimeout(() => this.open(), delay);
    this.emit("reconnecting", { attempt: this.attempt, delay });
  }

  /** Back online, or the page became visible: a pending reconnection starts now. */
  retryNow() {
    if (this.state === "reconnecting") this.open();
  }

  // --- liveness: browsers cannot see WebSocket pings, so the protocol has its own ---------

  received() {
    this.lastReceived = Date.now();
    this.pinged = false;
    if (!this.timer) this.watch();
  }

  watch() {
    const { pingInterval, pongTimeout } = this.options;
    const silent = Date.now() - this.lastReceived;
    let next;
    if (silent >= pingInterval + pongTimeout) {
      this.timer = 0;
      const reason = `no message for ${silent} ms`;
      return this.lost(4000, reason, false);
    } else if (silent >= pingInterval) {
      if (!this.pinged) {
        this.pingedAt = Date.now();
        this.write({ type: "ping", id: ++this.pings });
      }
      this.pinged = true;
      next = pingInterval + pongTimeout - silent;
    } else {
      next = pingInterval - silent;
    }
    this.timer = setTimeout(() => this.watch(), next);
  }

  write(command) {
    if (this.state === "open") this.ws.send(JSON.stringify(command));
  }

  // --- what the server sends ----------------------------------------------------------------

  dispatch(raw) {
    if (typeof raw !== "string") return this.emit("message", new Uint8Array(raw), undefined);
    let m;
    try { m = JSON.parse(raw); } catch { return this.emit("message", raw, undefined); }
    const sub = m && typeof m.topic === "string" ? this.subscriptions.get(m.topic) : undefined;
    switch (m && m.type) {
      case "pub":
        if (sub) return sub.publication(m);
        break; // a topic the server subscribed this session to itself: a plain message
      case "subscribed":
        return sub && sub.subscribed(m);
      case "unrecoverable":
        return sub && sub.unrecoverable(m.position || null);
      case "join":
        return sub && sub.call("onJoin", { id: m.id, info: m.info ?? null });
      case "leave":
        return sub && sub.call("onLeave", { id: m.id });
      case "pong":
        return this.emit("pong", { rtt: m.id === this.pings ? Date.now() - this.pingedAt : undefined });
      case "presence":
        if (Array.isArray(m.present)) return this.answerPresence(m.topic, (w) => w.resolve(m.present));
        break;
      case "error": {
        const error = { command: m.command, topic: m.topic, code: m.code, message: m.message };
        if (m.command === "presence") this.answerPresence(m.topic, (w) => w.reject(Object.assign(new Error(m.message || m.code), error)));
        if (sub && m.command === "subscribe") sub.resyncing = false; // the next gap asks again
        if (sub) sub.call("onError", error);
        return this.emit("error", error);
      }
    }
    this.emit("message", raw, m);
  }

  answerPresence(topic, answer) {
    const waiters = this.presenceWaiters.get(topic);
    if (!waiters) return;
    answer(waiters.shift());
    if (!waiters.length) this.presenceWaiters.delete(topic);
  }
}

/** One followed topic and its position: the last publication processed. */
export class Subscription {
  constructor(client, topic, handlers) {
    this.client = client;
    this.topic = topic;
    this.handlers = handlers;
    const since = handlers.since; // {epoch: string, offset: number}
    this.position = since ? { epoch: String(since.epoch), offset: Number(since.offset) } : null;
    this.resyncing = false; // a gap was seen: ignore publications until the server answers
  }

  request() {
    const command = { type: "subscribe", topic: this.topic };
    if (this.position) command.since = this.position;
    this.client.write(command);
  }

  unsubscribe() {
    if (this.client.subscriptions.get(this.topic) === this) this.client.unsubscribe(this.topic);
  }

  call(name, ...args) {
    const f = this.handlers[name];
    if (f) {
      try { f(...args); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  publication(m) {
    if (this.resyncing) return;
    if (m.epoch !== undefined) {
      const last = this.position;
      const epoch = String(m.epoch);
      if (last && epoch === last.epoch && m.offset <= last.offset) return; // a duplicate
      if (last && (epoch !== last.epoch || m.offset > last.offset + 1)) {
        // A gap on the live stream: ask again from the last position processed.
        this.resyncing = true;
        return this.request();
      }
      this.position = { epoch, offset: m.offset };
    }
    const data = m.data_base64 !== undefined ? base64Bytes(m.data_base64) : m.data;
    this.call("onPublication", data, { topic: this.topic, epoch: m.epoch, offset: m.offset });
  }

  subscribed(m) {
    this.resyncing = false;
    if (!this.position && m.position) this.position = { epoch: String(m.position.epoch), offset: m.position.offset };
    this.call("onSubscribed", { recovered: !!m.recovered, replayed: m.replayed || 0, position: this.position });
  }

  unrecoverable(position) {
    // Nothing is replayed: the application reloads its state; live publications follow.
    this.resyncing = false;
    this.position = position && { epoch: String(position.epoch), offset: position.offset };
    this.call("onUnrecoverable", this.position);
  }
}
