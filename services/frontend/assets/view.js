// What part of the board is on screen, and drawing it there. The transform is
// screen = offset + scale * board (CSS pixels); drawing happens at most once per animation
// frame, however many updates or gestures asked for it: the whole board after a change of
// view, size or board, else only the pixels placed since the last frame.

const MAX_SCALE = 64; // CSS pixels per board pixel
const BACKGROUND = "#3a3d40";

export class View {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { alpha: false });
    this.board = null;
    this.scale = 1;
    this.offsetX = 0;
    this.offsetY = 0;
    // Until the user zooms or pans, the board keeps fitting the stage (a phone rotating,
    // a window resized); afterwards their view is left alone.
    this.autoFit = true;
    this.scheduled = false;
    this.hover = null;
    /** The board whose first full draw has been marked (see draw). */
    this.painted = null;
    /** The board version the canvas last showed: every update up to it is drawn. */
    this.drawnVersion = null;
    /** Whether the backing store has been sized to the stage yet (resizing clears it). */
    this.sized = false;
    /** Whether the next frame must redraw everything, and the board the canvas shows. */
    this.stale = true;
    this.shown = null;
    // The canvas's backing store follows its CSS size times the device pixel ratio, so
    // pixels stay sharp on high-density phone screens.
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    this.canvas.height = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    this.sized = true;
    if (this.autoFit) this.fit();
    this.requestDraw();
  }

  setBoard(board) {
    const sizeChanged = !this.board || this.board.width !== board.width || this.board.height !== board.height;
    this.board = board;
    if (sizeChanged) this.fit();
    this.requestDraw();
  }

  /** The scale at which the whole board fits the stage, with a small margin. */
  fitScale() {
    if (!this.board) return 1;
    const { clientWidth: w, clientHeight: h } = this.canvas;
    return Math.max(0.01, 0.95 * Math.min(w / this.board.width, h / this.board.height));
  }

  fit() {
    if (!this.board || this.canvas.clientWidth === 0) return;
    this.scale = this.fitScale();
    this.offsetX = (this.canvas.clientWidth - this.scale * this.board.width) / 2;
    this.offsetY = (this.canvas.clientHeight - this.scale * this.board.height) / 2;
    this.autoFit = true;
    this.requestDraw();
  }

  /** Zooms by `factor` keeping the board point under (clientX, clientY) where it is. */
  zoomAt(factor, clientX, clientY) {
    const { x, y } = this.local(clientX, clientY);
    const scale = Math.min(MAX_SCALE, Math.max(this.fitScale() / 4, this.scale * factor));
    this.offsetX = x - ((x - this.offsetX) * scale) / this.scale;
    this.offsetY = y - ((y - this.offsetY) * scale) / this.scale;
    this.scale = scale;
    this.autoFit = false;
    this.requestDraw();
  }

  /** Zooms around the middle of the stage (the buttons). */
  zoomCentre(factor) {
    const rect = this.canvas.getBoundingClientRect();
    this.zoomAt(factor, rect.left + rect.width / 2, rect.top + rect.height / 2);
  }

  panBy(dx, dy) {
    this.offsetX += dx;
    this.offsetY += dy;
    this.autoFit = false;
    this.requestDraw();
  }

  local(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    return { x: clientX - rect.left, y: clientY - rect.top };
  }

  /** The board pixel under a client point, or null off the board. */
  pixelAt(clientX, clientY) {
    if (!this.board) return null;
    const { x, y } = this.local(clientX, clientY);
    const px = Math.floor((x - this.offsetX) / this.scale);
    const py = Math.floor((y - this.offsetY) / this.scale);
    return this.board.contains(px, py) ? { x: px, y: py } : null;
  }

  /** The client point at the centre of board pixel (x, y). */
  centreOf(x, y) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: rect.left + this.offsetX + (x + 0.5) * this.scale,
      y: rect.top + this.offsetY + (y + 0.5) * this.scale,
    };
  }

  setHover(pixel) {
    const same = pixel && this.hover && pixel.x === this.hover.x && pixel.y === this.hover.y;
    if (same || (!pixel && !this.hover)) return;
    this.hover = pixel;
    this.requestDraw();
  }

  /** The view, the size or the board changed: the next frame redraws the whole canvas. */
  requestDraw() {
    this.stale = true;
    this.schedule();
  }

  /** Only pixels of the board changed: the next frame repaints just those. */
  requestPixels() {
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  draw() {
    const board = this.board;
    // For benchmarks: the first draw of a board is timed (the snapshot's parse and
    // conversion are in api.js and board.js).
    const first = board !== null && this.painted !== board;
    const uploading = performance.now();
    // The off-screen copy is brought up to date in both cases.
    const changed = board ? board.flush() : null;
    if (first) performance.measure("board-upload", { start: uploading });
    const outlined = this.hover && this.scale >= 4;
    if (!this.stale && board && board === this.shown && changed !== null && !outlined) {
      // A few placements: repainting the whole board for them would cost every frame a
      // full-canvas copy and scale, the main thread's largest cost under a steady stream.
      this.drawPixels(changed);
    } else {
      const drawing = performance.now();
      this.drawAll();
      if (first) performance.measure("board-draw", { start: drawing });
    }
    if (board) this.drawnVersion = board.version;
  }

  /** Repaints board pixels `indices` where a full draw would put them. */
  drawPixels(indices) {
    const ctx = this.context;
    const ratio = window.devicePixelRatio || 1;
    const s = ratio * this.scale;
    const left = ratio * this.offsetX - 0.5;
    const top = ratio * this.offsetY - 0.5;
    const { width, pixels, palette } = this.board;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    for (const index of indices) {
      const x = index % width;
      const y = (index - x) / width;
      // The device pixels whose centres fall in board pixel (x, y), the ones the
      // nearest-neighbour scaling of drawAll gives it; whole pixels, so no blending.
      const x0 = Math.ceil(left + x * s);
      const x1 = Math.ceil(left + (x + 1) * s);
      const y0 = Math.ceil(top + y * s);
      const y1 = Math.ceil(top + (y + 1) * s);
      if (x1 <= x0 || y1 <= y0) continue; // zoomed out: no device pixel shows it
      ctx.fillStyle = palette[pixels[index]] ?? "#000000";
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
  }

  drawAll() {
    this.stale = false;
    this.shown = this.board;
    const ctx = this.context;
    const ratio = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.board) return;
    // Nearest-neighbour: a board pixel is a sharp square at every zoom.
    ctx.imageSmoothingEnabled = false;
    const s = ratio * this.scale;
    ctx.setTransform(s, 0, 0, s, ratio * this.offsetX, ratio * this.offsetY);
    ctx.drawImage(this.board.surface, 0, 0);
    if (this.painted !== this.board && this.sized) {
      // A new board (a snapshot) is now wholly on the canvas. Its frame is produced after
      // this callback; the next animation frame starts once it has been, so the mark there
      // times the paint rather than the draw call. Benchmarks read it.
      this.painted = this.board;
      const version = this.board.version;
      requestAnimationFrame(() => performance.mark("canvas-painted", { detail: { version } }));
    }
    if (this.hover && this.scale >= 4) {
      // Outline the pixel a click would paint; only when pixels are big enough to see it.
      ctx.lineWidth = 1 / this.scale;
      ctx.strokeStyle = "rgba(0, 0, 0, 0.6)";
      ctx.strokeRect(this.hover.x, this.hover.y, 1, 1);
    }
  }
}
