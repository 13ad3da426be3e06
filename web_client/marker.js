// The frame marker the synthetic generator draws in every frame's top-left corner (gpu/frame_marker.py
// documents the layout): an 8x8 grid of black/white cells holding the segment index (bits 0-15), the
// stream frame number (16-39), a prompt tag (40-55) and a CRC-8 (56-63); bit i sits in row i / 8,
// column i % 8, white is 1. Row k is therefore byte k of the little-endian bit string.
// Pure code: reading pixels off a <video> is av_sync.js's job. No DOM, no network.

export const GRID_COLS = 8;
export const GRID_ROWS = 8;
// Cell edge (px) by frame width: the first whose minimum width the frame reaches.
const CELL_PX_BY_MIN_WIDTH = [
  [512, 16],
  [128, 8],
  [0, 4],
];
const MIN_CONTRAST = 48; // luma levels between the darkest and brightest cell
const MIN_CELL_MARGIN = 0.55; // every cell this far from the midpoint (fraction of half the range)
const CRC_POLY = 0x07;
const CRC_XOR_OUT = 0x55;
const DATA_BYTES = 7; // segment (2), frame number (3), prompt tag (2); byte 7 is the CRC

const CRC8_TABLE = (() => {
  const table = new Uint8Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x80 ? ((crc << 1) ^ CRC_POLY) & 0xff : (crc << 1) & 0xff;
    table[byte] = crc;
  }
  return table;
})();

/** CRC-8 (poly 0x07, xor-out 0x55) of the marker's data bytes. */
export function crc8(bytes) {
  let crc = 0;
  for (let i = 0; i < DATA_BYTES; i++) crc = CRC8_TABLE[crc ^ bytes[i]];
  return crc ^ CRC_XOR_OUT;
}

/** The cell edge in pixels the marker uses on a frame `width` pixels wide. */
export function cellSizeForWidth(width) {
  for (const [minWidth, cell] of CELL_PX_BY_MIN_WIDTH) if (width >= minWidth) return cell;
  return 4;
}

/** The square (px) the marker covers at the top-left of a frame `width` pixels wide. */
export function markerSize(width) {
  return GRID_COLS * cellSizeForWidth(width);
}

/**
 * Decodes the marker from one brightness value per cell (64 numbers, row by row, any scale: the
 * thresholds are relative to `levels`, the span of one full black-to-white step, 255 for 8-bit
 * luma). {segmentIdx, frameNumber, promptTag}, or null when there is no valid marker: too little
 * contrast, a cell near the midpoint (a wrong cell size, a blurred frame) or a bad checksum.
 */
export function decodeCells(cells, levels = 255) {
  if (cells.length !== GRID_COLS * GRID_ROWS) return null;
  let darkest = Infinity;
  let brightest = -Infinity;
  for (const value of cells) {
    if (value < darkest) darkest = value;
    if (value > brightest) brightest = value;
  }
  const range = brightest - darkest;
  if (range < (MIN_CONTRAST * levels) / 255) return null;
  const bytes = new Uint8Array(GRID_ROWS);
  for (let i = 0; i < cells.length; i++) {
    const centred = cells[i] * 2 - (darkest + brightest);
    if (Math.abs(centred) < MIN_CELL_MARGIN * range) return null;
    if (centred > 0) bytes[Math.floor(i / GRID_COLS)] |= 1 << i % GRID_COLS;
  }
  if (crc8(bytes) !== bytes[DATA_BYTES]) return null;
  return {
    segmentIdx: bytes[0] | (bytes[1] << 8),
    frameNumber: bytes[2] | (bytes[3] << 8) | (bytes[4] << 16),
    promptTag: bytes[5] | (bytes[6] << 8),
  };
}

/**
 * Reads the marker from RGBA pixels (ImageData.data) of a square image of the marker region scaled
 * to `pxPerCell` pixels a cell: averages the green channel (the cells are grey) over each cell's
 * inner half, away from edges that codecs and scaling blur.
 */
export function readMarker(rgba, pxPerCell) {
  const side = GRID_COLS * pxPerCell;
  if (rgba.length < side * side * 4) return null;
  const lo = Math.floor(pxPerCell / 4);
  const hi = pxPerCell - lo;
  const cells = new Array(GRID_COLS * GRID_ROWS);
  for (let row = 0; row < GRID_ROWS; row++) {
    for (let col = 0; col < GRID_COLS; col++) {
      let sum = 0;
      let count = 0;
      for (let y = row * pxPerCell + lo; y < row * pxPerCell + hi; y++) {
        for (let x = col * pxPerCell + lo; x < col * pxPerCell + hi; x++) {
          sum += rgba[(y * side + x) * 4 + 1];
          count += 1;
        }
      }
      cells[row * GRID_COLS + col] = sum / count;
    }
  }
  return decodeCells(cells);
}
