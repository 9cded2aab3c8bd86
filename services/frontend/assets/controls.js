// The page around the board: palette, cooldown countdown, undo, opening hours, connection
// state, online count and the pixel-info box. Each is a small function of the DOM it owns.

const $ = (id) => document.getElementById(id);

/** Colour buttons from the hello's palette; `selected()` is the chosen index. */
export function palette(onPick) {
  const root = $("palette");
  let chosen = 1; // index 0 is the colour of an untouched pixel: start with the next one
  let colours = [];

  const render = () => {
    root.replaceChildren(
      ...colours.map((hex, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "swatch";
        button.dataset.index = String(index);
        button.setAttribute("role", "radio");
        button.setAttribute("aria-checked", String(index === chosen));
        button.setAttribute("aria-label", `colour ${hex}`);
        button.title = hex;
        button.style.backgroundColor = hex;
        button.addEventListener("click", () => {
          chosen = index;
          render();
          onPick?.(index);
        });
        return button;
      }),
    );
  };

  return {
    set(list) {
      if (list.join() === colours.join()) return;
      colours = list;
      if (chosen >= colours.length) chosen = colours.length > 1 ? 1 : 0;
      render();
    },
    selected: () => chosen,
  };
}

/**
 * Who this page places as (the hello's identity and signIn): a signed-in person's name, an
 * anonymous handle, or that it can only watch; on a sign-in canvas, the sign-in link or the
 * sign-out button. `wsUrl` locates the gateway, which serves /auth/… beside /ws.
 */
export function identity(wsUrl) {
  const label = $("identity");
  const signIn = $("sign-in");
  const signOut = $("sign-out");
  const gateway = new URL(wsUrl, location.href);
  gateway.protocol = gateway.protocol === "wss:" ? "https:" : "http:";
  // Back to this page afterwards: a path when the gateway shares its origin, else the URL
  // (the gateway accepts only its allowed origins).
  const here = () =>
    gateway.origin === location.origin ? location.pathname + location.search : location.href;
  const auth = (path) => `${gateway.origin}${path}?next=${encodeURIComponent(here())}`;
  return ({ identity, signIn: signInCanvas }) => {
    const signedIn = identity?.kind === "signed_in";
    label.textContent = identity
      ? `you: ${identity.name ?? identity.handle}`
      : signInCanvas ? "watching · sign in to place" : "watching";
    label.title = identity
      ? `your placements show as ${identity.handle}`
      : "this connection has no identity and cannot place";
    signIn.hidden = !signInCanvas || identity !== null;
    signIn.href = auth("/auth/login");
    signOut.hidden = !signedIn;
    signOut.action = auth("/auth/logout");
  };
}

/** The countdown until the next placement is allowed. */
export function cooldown() {
  const label = $("cooldown");
  let until = 0;
  let timer = null;
  let note = "";

  const tick = () => {
    const left = until - performance.now();
    if (left > 0) {
      label.textContent = `wait ${Math.ceil(left / 1000)} s`;
      label.classList.add("active");
      timer = setTimeout(tick, Math.min(250, left));
    } else {
      label.textContent = note;
      label.classList.remove("active");
      timer = null;
    }
  };

  return {
    /** Blocks placing for `ms` (from `cooldownSeconds` or an error's `retryAfterMs`). */
    start(ms) {
      until = Math.max(until, performance.now() + ms);
      note = "";
      if (timer === null) tick();
    },
    /** Ends the countdown at once (an undo refunded the cooldown). */
    clear() {
      until = 0;
      note = "";
      clearTimeout(timer);
      timer = null;
      tick();
    },
    active: () => until > performance.now(),
    /** How long the countdown still runs, in ms. */
    leftMs: () => Math.max(0, Math.ceil(until - performance.now())),
    /** A short message shown where the countdown is, when there is none. */
    say(text) {
      note = text;
      if (timer === null) tick();
    },
  };
}

/** The undo button, offered for the undo window after each placement; Ctrl+Z presses it. */
export function undo(onUndo) {
  const button = $("undo");
  let timer = null;
  const withdraw = () => {
    clearTimeout(timer);
    timer = null;
    button.hidden = true;
  };
  button.addEventListener("click", () => {
    withdraw();
    onUndo();
  });
  window.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "z" && !button.hidden) {
      event.preventDefault();
      button.click();
    }
  });
  return {
    /** Offers the undo for `ms`. */
    offer(ms) {
      withdraw();
      if (ms <= 0) return;
      button.hidden = false;
      timer = setTimeout(withdraw, ms);
    },
    withdraw,
    offered: () => !button.hidden,
  };
}

/**
 * Whether the canvas takes placements (the hello's readOnly, opensAtMs, closesAtMs): a notice
 * that counts down to the opening, and `closed()`, the reason it refuses now (null: open).
 */
export function opening() {
  const label = $("opening");
  let rules = { readOnly: false, opensAtMs: null, closesAtMs: null };
  let timer = null;

  const closed = () => {
    const now = Date.now();
    if (rules.readOnly) return "frozen";
    if (rules.opensAtMs !== null && now < rules.opensAtMs) return "not_open_yet";
    if (rules.closesAtMs !== null && now >= rules.closesAtMs) return "ended";
    return null;
  };

  const render = () => {
    clearTimeout(timer);
    timer = null;
    const reason = closed();
    const now = Date.now();
    label.hidden = reason === null;
    if (reason === "frozen") label.textContent = "frozen: no placements for now";
    if (reason === "ended") label.textContent = "this canvas has ended";
    if (reason === "not_open_yet") label.textContent = `opens in ${span(rules.opensAtMs - now)}`;
    // Re-render at the next change: each second before the opening, or at the closing.
    const next = reason === "not_open_yet"
      ? 1000
      : reason === null && rules.closesAtMs !== null ? rules.closesAtMs - now : null;
    if (next !== null) timer = setTimeout(render, Math.min(Math.max(next, 50), 2 ** 31 - 1));
  };

  return {
    set(hello) {
      rules = {
        readOnly: Boolean(hello.readOnly),
        opensAtMs: hello.opensAtMs ?? null,
        closesAtMs: hello.closesAtMs ?? null,
      };
      render();
    },
    closed,
  };
}

/** A duration in words: `2 d 3 h`, `4 h 5 min`, `6 min 7 s`, `8 s`. */
function span(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const [d, h, m] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60)];
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

/** The connection indicator: a state for the colour and a text for people. */
export function status() {
  const label = $("status");
  return (state, text) => {
    label.dataset.state = state;
    label.textContent = text;
  };
}

export function online() {
  const label = $("online");
  return (count) => {
    label.textContent = `${count} online`;
  };
}

/** How long ago a Unix-epoch millisecond time was, in words. */
function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}

/** The box naming the hovered pixel; asks canvas-api who placed it, at most every 300 ms. */
export function pixelInfo(api) {
  const box = $("pixel-info");
  const THROTTLE_MS = 300;
  let current = null; // the hovered pixel
  let lastAsked = 0;
  let timer = null;
  let inFlight = null; // AbortController of the request for a pixel no longer hovered

  const ask = async () => {
    timer = null;
    const pixel = current;
    if (!pixel) return;
    lastAsked = performance.now();
    inFlight?.abort();
    inFlight = new AbortController();
    try {
      const info = await api.pixel(pixel.x, pixel.y, inFlight.signal);
      if (current !== pixel) return;
      box.textContent =
        info.placedBy === null
          ? `(${pixel.x}, ${pixel.y}) · never painted`
          : `(${pixel.x}, ${pixel.y}) · ${info.placedByName ? `${info.placedByName} (${info.placedBy})` : info.placedBy} · ${ago(info.placedAtMs)}`;
    } catch (error) {
      if (error.name !== "AbortError" && current === pixel) box.textContent = `(${pixel.x}, ${pixel.y})`;
    }
  };

  const schedule = () => {
    // Throttle with a trailing call: the pixel the pointer rests on is always looked up.
    if (timer === null) {
      const wait = Math.max(0, lastAsked + THROTTLE_MS - performance.now());
      timer = setTimeout(ask, wait);
    }
  };

  return {
    /** The pointer is over `pixel` (null: over nothing). */
    show(pixel) {
      const same = pixel && current && pixel.x === current.x && pixel.y === current.y;
      if (same) return;
      current = pixel;
      box.hidden = !pixel;
      if (!pixel) return;
      box.textContent = `(${pixel.x}, ${pixel.y})`;
      schedule();
    },
    /** The hovered pixel was painted again: look it up anew. */
    refresh() {
      if (current) schedule();
    },
    hovered: () => current,
  };
}
