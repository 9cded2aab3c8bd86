// The WebSocket to the gateway (docs/protocol.md, WebSocket protocol): JSON text messages
// and binary update frames in, `place` and `undo` messages out. It reconnects on its own with
// jittered exponential backoff, and with ?since=<last applied version> so the gateway
// sends only what was missed.

import { parseFrame } from "./wire.js";

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;

/** Close codes after which reconnecting at once would only repeat the failure. */
const CLIENT_BUG_CODES = new Set([1003, 1009]);

/** `/ws` (a path on this page's host, ws: or wss: as the page) or an absolute ws(s):// URL. */
export function resolveWsUrl(wsUrl, since) {
  const url = new URL(wsUrl, window.location.href);
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  if (since !== null) url.searchParams.set("since", String(since));
  return url.toString();
}

export class Connection {
  /**
   * `since()` gives the version to resume from (null for a fresh start);
   * `onMessage(json)` and `onFrame(frame)` get what the gateway sends;
   * `onState(state, detail)` with state "connecting" | "open" | "offline".
   */
  constructor({ wsUrl, since, onMessage, onFrame, onState }) {
    this.wsUrl = wsUrl;
    this.since = since;
    this.onMessage = onMessage;
    this.onFrame = onFrame;
    this.onState = onState;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    // The OS knows before a timeout does: retry at once when the network comes back.
    window.addEventListener("online", () => this.reconnectNow());
  }

  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.onState("connecting");
    const socket = new WebSocket(resolveWsUrl(this.wsUrl, this.since()));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => this.closed(socket, event));
    // "error" is always followed by "close", which does the work.
  }

  receive(data) {
    if (data instanceof ArrayBuffer) {
      try {
        this.onFrame(parseFrame(data));
      } catch (error) {
        console.warn("ignored a malformed frame", error);
      }
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      console.warn("ignored a malformed message", error);
      return;
    }
    if (message.type === "hello") {
      // A hello means the gateway took us: the next failure starts the backoff afresh.
      this.attempt = 0;
      this.onState("open");
    }
    this.onMessage(message);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (CLIENT_BUG_CODES.has(event.code)) {
      console.error(`the gateway refused our messages (close ${event.code}): ${event.reason}`);
    }
    // Jitter (half the delay random): after an outage the pages retry at different
    // moments instead of all at once, which would knock the recovering gateway over.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this.onState("offline", { retryInMs: delay, code: event.code });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.timer !== null) this.connect();
  }

  /** Sends a JSON message; false when there is no open socket to send it on. */
  send(message) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }
}
