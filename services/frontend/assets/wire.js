// The binary formats of docs/protocol.md: the canvas snapshot (GET <apiBase>/canvas) and
// the pixel-update frame (binary WebSocket message). Integers are big-endian; versions are
// u64 on the wire and JavaScript numbers here (exact up to 2^53, far beyond any canvas).

const SNAPSHOT_MAGIC = [0x50, 0x58, 0x53, 0x4e]; // "PXSN"
const SNAPSHOT_HEADER = 18;
const FRAME_HEADER = 12;
const UPDATE_SIZE = 5;
const FRAME_PIXEL_UPDATES = 0x01;
const FORMAT = 1;

/** A u64 as a number, refusing values a number cannot hold exactly. */
function readVersion(view, offset) {
  const value = view.getBigUint64(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(`version ${value} is beyond what the page can count`);
  }
  return Number(value);
}

/**
 * Decodes a snapshot. Returns {width, height, paletteLength, version, pixels} where
 * `pixels` is a Uint8Array of palette indices, row-major. Throws on anything the protocol
 * says a reader rejects, so a corrupt answer never paints garbage.
 */
export function parseSnapshot(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < SNAPSHOT_HEADER) throw new Error("snapshot too short");
  SNAPSHOT_MAGIC.forEach((byte, i) => {
    if (view.getUint8(i) !== byte) throw new Error("not a snapshot (bad magic)");
  });
  if (view.getUint8(4) !== FORMAT) throw new Error("unknown snapshot format");
  const paletteLength = view.getUint8(5);
  const width = view.getUint16(6);
  const height = view.getUint16(8);
  if (paletteLength < 2 || paletteLength > 32) throw new Error("bad palette length");
  if (width < 1 || width > 4096 || height < 1 || height > 4096) throw new Error("bad size");
  if (buffer.byteLength !== SNAPSHOT_HEADER + width * height) {
    throw new Error("snapshot length does not match its size");
  }
  const version = readVersion(view, 10);
  const pixels = new Uint8Array(buffer, SNAPSHOT_HEADER);
  // A plain loop: a callback per pixel costs a noticeable part of the first paint.
  for (let i = 0; i < pixels.length; i++) {
    if (pixels[i] >= paletteLength) throw new Error("pixel outside palette");
  }
  return { width, height, paletteLength, version, pixels };
}

/**
 * Decodes an update frame into {first, updates: [{version, x, y, colour}]}, oldest first.
 * Bounds are checked by the board, which knows the canvas.
 */
export function parseFrame(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < FRAME_HEADER) throw new Error("frame too short");
  if (view.getUint8(0) !== FRAME_PIXEL_UPDATES) throw new Error("unknown frame type");
  if (view.getUint8(1) !== FORMAT) throw new Error("unknown frame format");
  const first = readVersion(view, 2);
  const count = view.getUint16(10);
  if (count < 1 || buffer.byteLength !== FRAME_HEADER + UPDATE_SIZE * count) {
    throw new Error("frame length does not match its count");
  }
  const updates = new Array(count);
  for (let i = 0; i < count; i++) {
    const at = FRAME_HEADER + UPDATE_SIZE * i;
    updates[i] = {
      version: first + i,
      x: view.getUint16(at),
      y: view.getUint16(at + 2),
      colour: view.getUint8(at + 4),
    };
  }
  return { first, updates };
}
