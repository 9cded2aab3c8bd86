// The canvas in memory: palette indices plus an RGBA image of them on an off-screen
// <canvas>. Updates only touch memory and note what changed; the view copies the changes
// to the off-screen canvas once per animation frame, however many updates arrived.

/** "#RRGGBB" → [r, g, b]. */
function rgb(hex) {
  const value = Number.parseInt(hex.slice(1), 16);
  return [(value >> 16) & 0xff, (value >> 8) & 0xff, value & 0xff];
}

/** Whether a Uint32Array over RGBA bytes reads them as 0xAABBGGRR (every common CPU). */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** An opaque colour as one 32-bit word of an RGBA image in this machine's byte order. */
function word([r, g, b]) {
  const value = LITTLE_ENDIAN ? (0xff << 24) | (b << 16) | (g << 8) | r : (r << 24) | (g << 16) | (b << 8) | 0xff;
  return value >>> 0;
}

/** Past this many changed pixels between two frames, one rectangle is copied instead. */
const MAX_DIRTY_PIXELS = 512;

export class Board {
  /** `snapshot` from wire.parseSnapshot; `palette` the hello's "#RRGGBB" list. */
  constructor(snapshot, palette) {
    this.width = snapshot.width;
    this.height = snapshot.height;
    this.version = snapshot.version;
    this.palette = palette;
    this.colours = palette.map(rgb);
    // One word per possible byte: an index outside the palette paints black.
    this.words = new Uint32Array(256).fill(word([0, 0, 0]));
    this.colours.forEach((colour, index) => {
      this.words[index] = word(colour);
    });
    const converting = performance.now();
    // The fetched bytes themselves, not a copy (16 MiB at 4096x4096): nothing else keeps them.
    this.pixels = snapshot.pixels;
    this.image = new ImageData(this.width, this.height);
    // The image seen as one word per pixel: a million pixels convert in a few ms.
    this.rgba = new Uint32Array(this.image.data.buffer);
    const { pixels, rgba, words } = this;
    for (let i = 0; i < pixels.length; i++) rgba[i] = words[pixels[i]];
    performance.measure("board-convert", { start: converting });
    this.surface = document.createElement("canvas");
    this.surface.width = this.width;
    this.surface.height = this.height;
    this.context = this.surface.getContext("2d");
    this.dirty = { x0: 0, y0: 0, x1: this.width, y1: this.height };
    /** The pixels changed since the last flush (indices) while few; null: use `dirty`. */
    this.dirtyPixels = null;
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
    this.rgba[index] = this.words[colour];
    if (this.dirtyPixels !== null) {
      this.dirtyPixels.push(index);
      if (this.dirtyPixels.length > MAX_DIRTY_PIXELS) this.dirtyPixels = null;
    }
    const d = this.dirty;
    this.dirty = d
      ? { x0: Math.min(d.x0, x), y0: Math.min(d.y0, y), x1: Math.max(d.x1, x + 1), y1: Math.max(d.y1, y + 1) }
      : { x0: x, y0: y, x1: x + 1, y1: y + 1 };
  }

  colourAt(x, y) {
    return this.contains(x, y) ? this.pixels[y * this.width + x] : undefined;
  }

  /**
   * Copies what changed since the last call to the off-screen canvas: pixel by pixel when
   * few changed (placements land all over the board, so their bounding rectangle is
   * nearly all of it), else that rectangle. Returns the changed pixels' indices, or null
   * when a rectangle was copied (a new board, or many changes).
   */
  flush() {
    const d = this.dirty;
    if (!d) return [];
    const few = this.dirtyPixels;
    this.dirty = null;
    this.dirtyPixels = [];
    if (few !== null && few.length < (d.x1 - d.x0) * (d.y1 - d.y0)) {
      for (const index of few) {
        const x = index % this.width;
        const y = (index - x) / this.width;
        this.context.putImageData(this.image, 0, 0, x, y, 1, 1);
      }
      return few;
    }
    this.context.putImageData(this.image, 0, 0, d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    return null;
  }
}
