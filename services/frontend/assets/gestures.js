// Pointer input on the board, for mouse, pen and touch alike (Pointer Events; the canvas
// has `touch-action: none` so the browser leaves panning and pinching to us):
// - one pointer dragged: pan;
// - two pointers: pinch to zoom around their middle, and pan with it;
// - wheel: zoom around the cursor;
// - a press released without moving (a click or a tap): place a pixel;
// - a mouse hovering: show who placed the pixel under it.

/** How far (CSS px) a press may wander and still count as a click, not a drag. */
const TAP_SLOP = 6;

export function attachGestures(canvas, view, { onTap, onHover }) {
  const pointers = new Map(); // pointerId → last {x, y}
  let press = null; // where the only pointer went down, while it may still be a tap
  let pinchDistance = 0;

  const midpoint = () => {
    const [a, b] = [...pointers.values()];
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2, d: Math.hypot(a.x - b.x, a.y - b.y) };
  };

  canvas.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    canvas.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    if (pointers.size === 1) {
      press = { x: event.clientX, y: event.clientY };
    } else {
      // A second finger turns the gesture into a pinch: it will not place anything.
      press = null;
      pinchDistance = midpoint().d;
    }
  });

  canvas.addEventListener("pointermove", (event) => {
    const last = pointers.get(event.pointerId);
    if (!last) {
      if (event.pointerType === "mouse") onHover(view.pixelAt(event.clientX, event.clientY));
      return;
    }
    if (pointers.size === 1) {
      if (press && Math.hypot(event.clientX - press.x, event.clientY - press.y) > TAP_SLOP) {
        press = null;
        canvas.classList.add("dragging");
      }
      if (!press) view.panBy(event.clientX - last.x, event.clientY - last.y);
      pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      return;
    }
    const before = midpoint();
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    const after = midpoint();
    view.panBy(after.x - before.x, after.y - before.y);
    if (pinchDistance > 0 && after.d > 0) view.zoomAt(after.d / pinchDistance, after.x, after.y);
    pinchDistance = after.d;
  });

  const release = (event, cancelled) => {
    if (!pointers.delete(event.pointerId)) return;
    canvas.classList.remove("dragging");
    if (!cancelled && press && pointers.size === 0) {
      const pixel = view.pixelAt(event.clientX, event.clientY);
      if (pixel) onTap(pixel);
    }
    if (pointers.size > 0) pinchDistance = pointers.size === 2 ? midpoint().d : 0;
    if (pointers.size === 0) press = null;
  };
  canvas.addEventListener("pointerup", (event) => release(event, false));
  canvas.addEventListener("pointercancel", (event) => release(event, true));
  canvas.addEventListener("pointerleave", (event) => {
    if (event.pointerType === "mouse") onHover(null);
  });

  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault(); // the page itself must not scroll or zoom
      const lines = event.deltaMode === WheelEvent.DOM_DELTA_LINE ? 16 : 1;
      view.zoomAt(Math.exp(-event.deltaY * lines * 0.002), event.clientX, event.clientY);
    },
    { passive: false },
  );
}
