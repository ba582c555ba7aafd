// conn.js: the one WebSocket to ccm-gateway (schema/protocol.md, "Gateway
// WebSocket API"). Requests are matched to replies by id; events are handed
// on in seq order, exactly once. After any disconnect (a gateway restart, a
// "resync" for a slow reader, a network blip) it reconnects with backoff and
// subscribes again from the last seq it handed on, so nothing is missed and
// nothing is doubled. What it saw is counted in stats, for the browser test
// and for anyone debugging from the console (window.ccm).

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;
const CALL_TIMEOUT_MS = 30000;

export class Conn {
  constructor({ onEvent, onPush, onState, historyBack = 300 }) {
    this.onEvent = onEvent;   // (event) for each new event, in seq order
    this.onPush = onPush;     // (push) for terminal pushes and others
    this.onState = onState;   // (state, detail): connecting, open, synced, closed
    this.historyBack = historyBack;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.lastSeq = null;      // the last event handed on (null: none yet)
    this.retryMs = RETRY_MIN_MS;
    this.stopped = false;
    this.stats = { events: 0, duplicates: 0, gaps: 0, connects: 0, resyncs: 0,
                   seqs: [], lastGap: null };
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  _url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  _connect() {
    this.onState("connecting");
    let ws;
    try {
      // The token, if one is needed, travels in the HttpOnly cookie set by
      // POST /login: never in the URL, never readable by this script.
      ws = new WebSocket(this._url(), ["ccm.v1"]);
    } catch (e) {
      this._retry(String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.stats.connects++;
      this.retryMs = RETRY_MIN_MS;
      this.onState("open");
      this._subscribe();
    };
    ws.onmessage = (msg) => this._message(msg.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(Object.assign(new Error("connection lost"), { code: "unavailable" }));
      }
      this.pending.clear();
      this._retry(ev.reason || `closed (${ev.code})`);
    };
  }

  _retry(why) {
    this.onState("closed", why);
    if (this.stopped) return;
    const wait = this.retryMs;
    this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    setTimeout(() => this._connect(), wait);
  }

  async _subscribe() {
    try {
      let since = this.lastSeq;
      if (since === null) {
        // First connection: some history for the event stream, then live.
        const ping = await this.call("ping");
        since = Math.max(0, (ping.store_seq || 0) - this.historyBack);
        this.lastSeq = since;
      }
      await this.call("subscribe", { since_seq: since });
    } catch (e) {
      if (this.ws) this.ws.close(4001, "subscribe failed");
    }
  }

  _message(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (msg.type === "reply") {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result || {});
      else {
        const err = msg.error || {};
        p.reject(Object.assign(new Error(err.message || err.code || "error"),
                               { code: err.code, field: err.field }));
      }
    } else if (msg.type === "event") {
      this._event(msg);
    } else if (msg.type === "synced") {
      this.onState("synced", msg.seq);
    } else if (msg.type === "resync") {
      // We fell behind: the gateway closes; we come back from lastSeq.
      this.stats.resyncs++;
    } else if (this.onPush) {
      this.onPush(msg);
    }
  }

  _event(ev) {
    if (this.lastSeq !== null && ev.seq <= this.lastSeq) {
      this.stats.duplicates++;
      return;
    }
    if (this.lastSeq !== null && ev.seq !== this.lastSeq + 1) {
      // With no filter the gateway sends every seq: a jump is a loss.
      this.stats.gaps++;
      this.stats.lastGap = [this.lastSeq, ev.seq];
    }
    this.lastSeq = ev.seq;
    this.stats.events++;
    if (this.stats.seqs.length < 100000) this.stats.seqs.push(ev.seq);
    try {
      this.onEvent(ev);
    } catch (e) {
      console.error("event handler", e);
    }
  }

  // Sends one request; resolves with its result, rejects with {code, field}.
  call(cmd, args = {}) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(Object.assign(new Error("not connected"), { code: "unavailable" }));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Object.assign(new Error(`${cmd}: no reply`), { code: "timeout" }));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...args, id, cmd }));
    });
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }
}
