// Starts the page: reads /config.json, opens the WebSocket while fetching the snapshot, and wires
// the pieces together. The modules beside it each do one thing:
//   wire.js        binary formats          api.js       canvas-api calls
//   board.js       the canvas in memory    sync.js      snapshot + frames + history
//   connection.js  WebSocket + reconnect   view.js      zoom, pan, drawing
//   gestures.js    mouse and touch input   controls.js  palette, cooldown, undo, opening
//                                                       hours, status, info

import { canvasApi } from "./api.js";
import { CanvasSync } from "./sync.js";
import { Connection } from "./connection.js";
import { View } from "./view.js";
import { attachGestures } from "./gestures.js";
import * as controls from "./controls.js";

async function loadConfig() {
  const response = await fetch("/config.json", { cache: "no-cache" });
  if (!response.ok) throw new Error(`/config.json: HTTP ${response.status}`);
  return response.json();
}

async function main() {
  const config = await loadConfig();
  const api = canvasApi(config.apiBase);
  const canvas = document.getElementById("board");
  const view = new View(canvas);
  const setStatus = controls.status();
  const setOnline = controls.online();
  const setIdentity = controls.identity(config.wsUrl);
  const colours = controls.palette();
  const wait = controls.cooldown();
  const info = controls.pixelInfo(api);
  const hours = controls.opening();
  let hoveredColour; // the hovered pixel's colour when it was last looked up

  let connected = false;
  let handle = null; // who we place as (the hello's identity.handle); null: watching only
  let signedIn = false; // whether that identity is a signed-in person
  let cooldownSeconds = 0;
  let undoSeconds = 0;
  let nextId = 1;
  let lastPlacementId = null; // the id of our newest placement: only its answer offers undo

  const showState = () => {
    if (!connected) return;
    setStatus(sync.synced ? "live" : "syncing", sync.synced ? "live" : "syncing…");
  };

  const sync = new CanvasSync({
    api,
    onBoard: (board) => view.setBoard(board),
    onUpdate: () => {
      view.requestPixels();
      // Someone painted the pixel under the pointer: its info is stale.
      const pixel = info.hovered();
      const colour = pixel && sync.board ? sync.board.colourAt(pixel.x, pixel.y) : undefined;
      if (colour !== hoveredColour) {
        hoveredColour = colour;
        info.refresh();
      }
    },
    onSynced: showState,
  });

  const connection = new Connection({
    wsUrl: config.wsUrl,
    // Resume after the last applied version, so the gateway replays only what we missed.
    since: () => (sync.board ? sync.board.version : null),
    onFrame: (frame) => sync.frame(frame),
    onState: (state, detail) => {
      connected = state === "open";
      if (state === "connecting") setStatus("connecting", "connecting…");
      if (state === "offline") {
        setStatus("offline", `offline · retry in ${Math.ceil(detail.retryInMs / 1000)} s`);
      }
      showState();
    },
    onMessage: (message) => {
      switch (message.type) {
        case "hello":
          // For benchmarks: the first paint needs both the snapshot and this.
          performance.mark("gateway-hello");
          cooldownSeconds = message.cooldownSeconds;
          undoSeconds = message.undoSeconds ?? 0;
          hours.set(message);
          handle = message.identity ? message.identity.handle : null;
          signedIn = message.identity?.kind === "signed_in";
          setIdentity({ identity: message.identity ?? null, signIn: Boolean(message.signIn) });
          // The cooldown is the person's, not the connection's: a reload shows what is left.
          if (message.cooldownMs > 0) wait.start(message.cooldownMs);
          // So is the undo: a reload right after a placement may still take it back.
          undoButton.offer(message.undoMs ?? 0);
          colours.set(message.palette);
          setOnline(message.online);
          sync.hello(message);
          showState();
          break;
        case "online":
          setOnline(message.count);
          break;
        case "refetch":
          sync.refetch(message);
          break;
        case "placed":
          if (cooldownSeconds > 0) wait.start(cooldownSeconds * 1000);
          if (message.id === lastPlacementId) undoButton.offer(undoSeconds * 1000);
          break;
        case "undone":
          // The pixel comes back through the update frames; the cooldown is refunded.
          wait.clear();
          wait.say("undone");
          break;
        case "error":
          if (message.retryAfterMs) wait.start(message.retryAfterMs);
          else wait.say(message.message || message.code);
          break;
        default:
          break; // newer gateways may send more; ignoring them is forward compatible
      }
    },
  });

  const undoButton = controls.undo(() => {
    if (!connection.send({ type: "undo", id: nextId++ })) wait.say("offline: not undone");
  });

  attachGestures(canvas, view, {
    onTap: (pixel) => {
      if (hours.closed() !== null || wait.active()) return;
      const message = { type: "place", x: pixel.x, y: pixel.y, color: colours.selected(), id: nextId++ };
      lastPlacementId = message.id;
      undoButton.withdraw();
      if (!connection.send(message)) wait.say("offline: not placed");
    },
    onHover: (pixel) => {
      view.setHover(pixel);
      info.show(pixel);
      hoveredColour = pixel && sync.board ? sync.board.colourAt(pixel.x, pixel.y) : undefined;
    },
  });
  document.getElementById("zoom-in").addEventListener("click", () => view.zoomCentre(1.5));
  document.getElementById("zoom-out").addEventListener("click", () => view.zoomCentre(1 / 1.5));
  document.getElementById("zoom-fit").addEventListener("click", () => view.fit());

  // Read-only hooks for the browser test and for looking around from the console.
  window.pixelPlayground = Object.freeze({
    state: () => ({
      connected,
      handle,
      signedIn,
      cooldownLeftMs: wait.leftMs(),
      undoOffered: undoButton.offered(),
      closed: hours.closed(),
      synced: sync.synced,
      version: sync.board ? sync.board.version : null,
      drawnVersion: view.drawnVersion,
    }),
    centreOf: (x, y) => view.centreOf(x, y),
  });

  // Both at once: the snapshot does not wait for the hello (sync.js explains why that is safe).
  sync.prefetch();
  connection.connect();
}

main().catch((error) => {
  console.error(error);
  const label = document.getElementById("status");
  label.dataset.state = "offline";
  label.textContent = "cannot start: reload the page";
});
