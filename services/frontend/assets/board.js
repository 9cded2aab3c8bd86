// The canvas in memory: palette indices plus an RGBA image of them on an off-screen
// <canvas>. Updates only touch memory and grow a dirty rectangle; the view copies the
// dirty part to the GPU once per animation frame, however many updates arrived.

/** "#RRGGBB" → [r, g, b]. */
function rgb(hex) {
  const value = Number.parseInt(hex.slice(1), 16);
  return [(value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];
}

export class Board {
  /** `snapshot` from wire.parseSnapshot; `palette` the hello's "#RRGGBB" list. */
  constructor(snapshot, palette) {
    this.width = snapshot.width;
    this.height = snapshot.height;
    this.version = snapshot.version;
    this.palette = palette;
    this.colours = palette.map(rgb);
    this.pixels = new Uint8Array(snapshot.pixels);
    this.image = new ImageData(this.width, this.height);
    this.surface = document.createElement("canvas");
    this.surface.width = this.width;
    this.surface.height = this.height;
    this.context = this.surface.getContext("2d");
    for (let i = 0; i < this.pixels.length; i++) this.paint(i, this.pixels[i]);
    this.dirty = { x0: 0, y0: 0, x1: this.width, y1: this.height };
  }

  paint(index, colour) {
    const [r, g, b] = this.colours[colour] ?? [0, 0, 0];
    const data = this.image.data;
    const at = index * 4;
    data[at] = r;
    data[at + 1] = g;
    data[at + 2] = b;
    data[at + 3] = 255;
  }

  contains(x, y) {
    return Number.isInteger(x) && Number.isInteger(y) && x >= 0 && y >= 0 && x < this.width && y < this.height;
  }

  /**
   * Applies the placement that makes version `this.version + 1`. Out-of-range updates are
   * skipped (the version still advances: the server counted them), so one bad update
   * cannot wedge the page.
   */
  apply({ version, x, y, colour }) {
    this.version = version;
    if (!this.contains(x, y) || colour >= this.colours.length) return;
    const index = y * this.width + x;
    this.pixels[index] = colour;
    this.paint(index, colour);
    const d = this.dirty;
    this.dirty = d
      ? { x0: Math.min(d.x0, x), y0: Math.min(d.y0, y), x1: Math.max(d.x1, x + 1), y1: Math.max(d.y1, y + 1) }
      : { x0: x, y0: y, x1: x + 1, y1: y + 1 };
  }

  colourAt(x, y) {
    return this.contains(x, y) ? this.pixels[y * this.width + x] : undefined;
  }

  /** Copies what changed since the last call to the off-screen canvas. */
  flush() {
    const d = this.dirty;
    if (!d) return;
    this.dirty = null;
    this.context.putImageData(this.image, 0, 0, d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
  }
}
