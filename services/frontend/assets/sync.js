// Keeps the board equal to the server's canvas: the r/place 2017 recipe.
//
// 1. Subscribe (open the WebSocket) and fetch the snapshot at the same time, so the first
//    paint does not wait for the hello. Frames that arrive meanwhile are buffered.
// 2. A snapshot older than the subscription leaves a gap up to the hello's version, which
//    the history fills (step 3), so no update falls between snapshot and live stream.
// 3. Apply the buffered frames newer than the snapshot's version. When something is
//    missing between the board's version and a frame (the snapshot may be served from a
//    cache slightly older than the hello), read it from the history; when the history
//    no longer reaches back, fetch the snapshot again.

import { Board } from "./board.js";
import { HistoryGone } from "./api.js";

/** Frames kept while a resync runs; past it a snapshot is cheaper than catching up. */
const MAX_BUFFERED_FRAMES = 2000;
/** Waits between resync attempts that failed or made no progress. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class CanvasSync {
  /**
   * `api` from api.js; `onBoard(board)` when a new board replaces the old one;
   * `onUpdate()` when the board changed; `onSynced(bool)` when the board starts or stops
   * lagging behind the server.
   */
  constructor({ api, onBoard, onUpdate, onSynced }) {
    this.api = api;
    this.onBoard = onBoard;
    this.onUpdate = onUpdate;
    this.onSynced = onSynced;
    this.board = null;
    this.palette = null;
    /** The newest version the server told us exists. */
    this.known = 0;
    this.buffer = [];
    this.wantSnapshot = false;
    this.running = false;
    /** A snapshot request started before the hello (see prefetch). */
    this.prefetched = null;
  }

  /** Starts loading the snapshot now; the first hello uses it instead of asking again. */
  prefetch() {
    // A failure here only means the hello fetches the snapshot itself.
    this.prefetched = this.api.snapshot().catch((error) => {
      console.warn("snapshot prefetch failed; fetching on the hello", error);
      return null;
    });
  }

  get synced() {
    return this.board !== null && !this.running && this.board.version >= this.known;
  }

  /** The gateway's hello: on the first one (or a changed canvas) load the snapshot. */
  hello({ version, width, height, palette }) {
    this.known = Math.max(this.known, version);
    const b = this.board;
    const same =
      b && b.width === width && b.height === height && b.palette.join() === palette.join();
    this.palette = palette;
    if (!same) {
      // A reconfigured canvas invalidates everything buffered for the old one.
      this.buffer = [];
      this.board = null;
      this.wantSnapshot = true;
      this.resync();
    }
    // Otherwise this is a reconnect with ?since=: the gateway sends what we missed.
  }

  /** The gateway says updates were lost: reload the snapshot; frames go on after `version`. */
  refetch({ version }) {
    this.known = Math.max(this.known, version);
    this.wantSnapshot = true;
    this.resync();
  }

  /** A decoded update frame. */
  frame(frame) {
    const last = frame.first + frame.updates.length - 1;
    this.known = Math.max(this.known, last);
    if (this.running || !this.board) {
      this.buffer.push(frame);
      if (this.buffer.length > MAX_BUFFERED_FRAMES) {
        this.buffer = [];
        this.wantSnapshot = true;
      }
      return;
    }
    if (frame.first > this.board.version + 1) {
      this.buffer.push(frame);
      this.resync();
      return;
    }
    this.applyFrame(frame);
    this.onUpdate();
  }

  /** Applies the updates of `frame` the board does not have yet. */
  applyFrame(frame) {
    for (const update of frame.updates) {
      if (update.version === this.board.version + 1) this.board.apply(update);
    }
  }

  /** Applies buffered frames that now connect to the board; drops the ones it has. */
  drain() {
    this.buffer.sort((a, b) => a.first - b.first);
    while (this.buffer.length > 0 && this.buffer[0].first <= this.board.version + 1) {
      this.applyFrame(this.buffer.shift());
    }
  }

  /** Brings the board up to `known`; one loop at a time, retried with backoff. */
  async resync() {
    if (this.running) return;
    this.running = true;
    this.onSynced(false);
    let retry = RETRY_MIN_MS;
    while (this.wantSnapshot || !this.board || this.board.version < this.known) {
      const before = this.board ? this.board.version : -1;
      try {
        if (this.wantSnapshot || !this.board || !this.palette) {
          await this.loadSnapshot();
        } else {
          await this.loadHistory();
        }
        this.drain();
        this.onUpdate();
      } catch (error) {
        if (error instanceof HistoryGone) {
          this.wantSnapshot = true;
        } else {
          console.warn("resync failed; will retry", error);
        }
      }
      const progressed = this.board && this.board.version > before;
      if (!progressed && this.palette) {
        // Nothing moved (a network error, or a cached snapshot older than we need):
        // wait before asking again rather than hammering the API.
        await sleep(retry * (0.5 + Math.random()));
        retry = Math.min(retry * 2, RETRY_MAX_MS);
      } else {
        retry = RETRY_MIN_MS;
      }
      if (!this.palette) break; // no hello yet: the next hello starts us again
    }
    this.running = false;
    this.onSynced(this.synced);
  }

  async loadSnapshot() {
    const prefetched = this.prefetched;
    this.prefetched = null;
    const snapshot = (prefetched && (await prefetched)) || (await this.api.snapshot());
    if (!this.palette) return;
    this.wantSnapshot = false;
    this.board = new Board(snapshot, this.palette);
    this.onBoard(this.board);
  }

  /** Reads history pages from the board's version while they connect. */
  async loadHistory() {
    let more = true;
    while (more && this.board.version < this.known) {
      const page = await this.api.history(this.board.version);
      for (const u of page.updates) {
        if (u.version === this.board.version + 1) {
          this.board.apply({ version: u.version, x: u.x, y: u.y, colour: u.color });
        }
      }
      more = page.more && page.updates.length > 0;
    }
  }
}
