// Just enough ISO BMFF (fragmented MP4) reading for the WebSocket player: the media timescale of
// an init segment (moov/trak/mdia/mdhd) and the decode time a fragment starts at (moof/traf/tfdt).
// Pure code on ArrayBuffers: no DOM, no network. The player needs them to place the stream of a
// resumed session, whose timestamps start wherever its new server's encoder starts, right after
// what is already buffered (MsePlayer.continueTimeline).

/**
 * The payload of the first box named `type` among the boxes in view[start, end): {start, end}, or
 * null when there is none or the boxes do not parse.
 */
function findBox(view, type, start, end) {
  let at = start;
  while (at + 8 <= end) {
    let size = view.getUint32(at);
    let header = 8;
    if (size === 1) {
      if (at + 16 > end) return null;
      size = Number(view.getBigUint64(at + 8)); // a 64-bit size
      header = 16;
    } else if (size === 0) {
      size = end - at; // to the end
    }
    if (size < header || at + size > end) return null;
    const name = String.fromCharCode(view.getUint8(at + 4), view.getUint8(at + 5), view.getUint8(at + 6), view.getUint8(at + 7));
    if (name === type) return { start: at + header, end: at + size };
    at += size;
  }
  return null;
}

/** The payload of the box at `path` (e.g. ["moof", "traf", "tfdt"]), or null. */
function boxAt(buffer, path) {
  const view = new DataView(buffer);
  let range = { start: 0, end: view.byteLength };
  for (const type of path) {
    range = findBox(view, type, range.start, range.end);
    if (range === null) return null;
  }
  return { view, ...range };
}

/** An init segment's media timescale (ticks per second, from mdhd); null when `buffer` has none. */
export function initTimescale(buffer) {
  const box = boxAt(buffer, ["moov", "trak", "mdia", "mdhd"]);
  if (box === null) return null;
  const offset = box.view.getUint8(box.start) === 1 ? 20 : 12; // version 1: 64-bit creation/modification times
  if (box.start + offset + 4 > box.end) return null;
  const timescale = box.view.getUint32(box.start + offset);
  return timescale > 0 ? timescale : null;
}

/** A fragment's base media decode time (tfdt) in timescale ticks; null when `buffer` has none. */
export function fragmentDecodeTime(buffer) {
  const box = boxAt(buffer, ["moof", "traf", "tfdt"]);
  if (box === null) return null;
  const version = box.view.getUint8(box.start);
  if (box.start + (version === 1 ? 12 : 8) > box.end) return null;
  return version === 1 ? Number(box.view.getBigUint64(box.start + 4)) : box.view.getUint32(box.start + 4);
}
