// canvas-api as the page uses it (docs/protocol.md, Canvas API). The base comes from
// /config.json: a path on this origin by default, so the Ingress routes it.

import { parseSnapshot } from "./wire.js";

/** Thrown when the history no longer reaches back far enough (`410`): take a snapshot. */
export class HistoryGone extends Error {}

async function ok(response, what) {
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status}`);
  return response;
}

export function canvasApi(apiBase) {
  return {
    /** The whole canvas, decoded, with the version it shows. */
    async snapshot() {
      // no-store: the snapshot carries its own version, and a cached older one would only
      // make the page catch up through the history for nothing.
      // For benchmarks: where a first paint's time goes (see view.js for the rest). The
      // headers come once canvas-api has the whole (compressed) body ready.
      const asking = performance.now();
      const response = await ok(await fetch(`${apiBase}/canvas`, { cache: "no-store" }), "snapshot");
      const receiving = performance.now();
      performance.measure("snapshot-headers", { start: asking });
      const body = await response.arrayBuffer();
      const parsing = performance.now();
      performance.measure("snapshot-body", { start: receiving });
      const snapshot = parseSnapshot(body);
      performance.measure("snapshot-parse", { start: parsing });
      return snapshot;
    },

    /** One page of placements after `since`: {updates: [{version, x, y, color}], more}. */
    async history(since) {
      const response = await fetch(`${apiBase}/history?since=${since}`, { cache: "no-store" });
      if (response.status === 410) throw new HistoryGone(`history gone after ${since}`);
      await ok(response, "history");
      return response.json();
    },

    /** Who placed pixel (x, y) and when; `signal` cancels it when the pointer moves on. */
    async pixel(x, y, signal) {
      const response = await ok(await fetch(`${apiBase}/pixels/${x}/${y}`, { signal }), "pixel");
      return response.json();
    },
  };
}
