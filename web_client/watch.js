// The viewer's page, /watch?session=<id>&token=<watch_token>: plays someone else's session, no prompt.
//
// WHEP first (whep.js: receive-only WebRTC), and when that fails (an answer other than 201, no
// connection within a few seconds of the answer, no WebRTC in this browser) the fMP4 watch socket
// (GET /v1/sessions/{id}/watch, played through Media Source Extensions by ws_player.js, the owner's
// WebSocket player). `&transport=whep|fmp4` forces one. A refusal is shown for what it means: 401 a
// link whose token does not work, 404 a session that is not live (ended, or unknown here), 503 a
// session with all the viewers it takes (tried again after its Retry-After). A browser cannot read
// the HTTP status of a refused WebSocket, so after a watch socket that never opened the page asks
// the same URL over plain HTTP (a valid token is answered 400 there: no upgrade).
// The end of the stream: ltx2_stream_complete on the watch socket; over WHEP (no channel) the page
// asks GET /v1/sessions/{id}/frames once no video has come for a while or the connection is lost:
// 404 means the session ended, 200 that it lives on (paused, or the connection to reconnect).
// The stats overlay (stats.js) and the sound control (ui.js: muted until the viewer unmutes) are
// the owner page's.

import { authHeaders, loadAccessToken } from "./auth.js";
import { StreamModel } from "./protocol.js";
import { StatsOverlay } from "./stats.js";
import { SoundControl, announce, getUi, setBadge, setStatus, showNotice } from "./ui.js";
import { WhepViewer } from "./whep.js";
import { WebSocketTransport } from "./ws_player.js";

const LABELS = { whep: "WHEP · WebRTC", fmp4: "fMP4 · MSE" };
const RECONNECT_DELAYS_MS = [0, 1000, 2000, 4000]; // a lost connection to a session still live
const STEADY_MS = 10_000; // connected this long: a later loss starts the reconnect schedule afresh
const PROBE_TIMEOUT_MS = 3000;
const PROBE_EVERY_MS = 2000; // while WHEP video has stalled
const DEFAULT_FULL_RETRY_S = 10;
const END_TEXTS = {
  segment_cap: "The session reached its segment limit.",
  stop_requested: "Its owner stopped it.",
  timeout: "The session had no input for too long.",
  error: "It ended on an error.",
};

const ui = getUi();
ui.prompt = ui.status; // where focus goes when a notice is dismissed (ui.js)
const model = new StreamModel();
const sound = new SoundControl(ui, ui.video);

const viewer = {
  sessionId: null,
  watchToken: null,
  accessToken: null,
  mode: "auto", // "auto" | "whep" | "fmp4"
  transport: null, // WhepViewer | WebSocketTransport
  draining: null, // the watch socket of a stream that ended, playing out what it buffered
  path: null, // "whep" | "fmp4": what plays now
  note: "",
  state: "connecting", // connecting | playing | stalled | reconnecting | ended | refused | failed
  attempt: 0,
  connectedAt: 0,
  timer: null,
  probing: null,
  notice: null,
  refusal: null, // {status, via}: the last refusal shown (tests, debugging)
};

// -- what the page shows ---------------------------------------------------------------------

function showPath(path, note = "") {
  viewer.path = path;
  viewer.note = note;
  ui.transport.textContent = note ? `${LABELS[path]} (${note})` : LABELS[path];
  ui.transport.dataset.transport = path;
  const other = path === "whep" ? "fmp4" : "whep";
  const query = new URLSearchParams(location.search);
  query.set("transport", other);
  ui.transportSwitch.href = `?${query}`;
  ui.transportSwitch.textContent = `use ${other === "whep" ? "WHEP" : "fMP4"}`;
}

function setState(state) {
  viewer.state = state;
  document.body.dataset.viewerState = state;
}

function notice(options, reason) {
  if (viewer.notice) viewer.notice.remove();
  viewer.notice = showNotice(ui, options);
  viewer.notice.el.dataset.reason = reason;
  return viewer.notice;
}

function clearNotice() {
  if (viewer.notice) viewer.notice.remove();
  viewer.notice = null;
}

function renderSegment() {
  ui.segment.textContent = model.segmentIdx === null ? "–" : `segment ${model.segmentIdx} · ${model.segmentsReceived} received`;
  ui.segment.dataset.segmentIdx = model.segmentIdx === null ? "" : String(model.segmentIdx);
  ui.segmentPrompt.textContent = model.segmentPrompt === null ? "–" : model.segmentPrompt;
}

function playing() {
  if (viewer.state === "playing") return;
  setState("playing");
  clearNotice();
  setStatus(ui, `watching over ${LABELS[viewer.path]}`);
  setBadge(ui, "live", `live · ${viewer.path === "whep" ? "WHEP" : "fMP4"}`);
  announce(ui, `Watching over ${LABELS[viewer.path]}.`);
}

function noPicture(text) {
  ui.placeholder.textContent = text;
  ui.placeholder.hidden = ui.video.readyState >= 2;
}

/** The stream is over: `reason` from ltx2_stream_complete, or null when only its absence is known. */
function ended(reason) {
  if (viewer.state === "ended") return;
  const transport = viewer.transport;
  viewer.transport = null;
  stop();
  // The watch socket's player plays out what it has buffered (the server closes the socket, 1000).
  if (transport && transport.kind === "ws") viewer.draining = transport;
  else if (transport) transport.close();
  setState("ended");
  const detail = END_TEXTS[reason] || (reason ? `It ended (${reason}).` : "The session is no longer live.");
  notice({ kind: "info", title: "The stream has ended", detail }, "ended");
  setStatus(ui, "the stream has ended");
  setBadge(ui, "ended", "ended");
  announce(ui, `The stream has ended. ${detail}`);
  noPicture("the stream has ended");
}

/** A refusal (HTTP status) of the WHEP offer or the watch socket. */
function refused(status, { retryAfterS = null, text = "" } = {}) {
  stop();
  viewer.refusal = { status };
  const retry = { label: "Retry", id: "retry", primary: true, run: () => start() };
  if (status === 401) {
    setState("refused");
    notice(
      {
        kind: "error",
        title: "This watch link does not work",
        detail: "The server refused its token. Ask the session's owner for a new link: a link stops working when their connection ends (a reconnected session has a new one).",
      },
      "401",
    );
    setStatus(ui, "this watch link does not work (HTTP 401)", "error");
    setBadge(ui, "error", "bad link");
  } else if (status === 404) {
    setState("refused");
    notice({ kind: "error", title: "This session is not live", detail: "It has ended, or the link names a session this server does not have.", actions: [retry] }, "404");
    setStatus(ui, "this session is not live (HTTP 404)", "error");
    setBadge(ui, "ended", "not live");
  } else if (status === 503) {
    setState("refused");
    const wait = retryAfterS || DEFAULT_FULL_RETRY_S;
    notice(
      {
        kind: "warning",
        title: "This session has all the viewers it can take",
        detail: `Trying again in ${wait} s.`,
        actions: [{ ...retry, label: "Try now" }],
      },
      "503",
    );
    setStatus(ui, `the session is full (HTTP 503): trying again in ${wait} s`, "error");
    setBadge(ui, "queued", "full");
    viewer.timer = setTimeout(() => start(), wait * 1000);
  } else {
    failed("Could not watch this session", text || `HTTP ${status}`, String(status));
  }
  noPicture("no stream");
}

// The way out of a forced WHEP that did not work.
const useFmp4 = {
  label: "Use fMP4",
  id: "use-fmp4",
  run: () => {
    viewer.mode = "fmp4";
    history.replaceState(history.state, "", ui.transportSwitch.href);
    start();
  },
};

function failed(title, detail, reason = "failed", extra = []) {
  stop();
  setState("failed");
  const retry = { label: "Retry", id: "retry", primary: true, run: () => start() };
  notice({ kind: "error", title, detail, actions: [retry, ...extra] }, reason);
  setStatus(ui, `${title}: ${detail}`, "error");
  setBadge(ui, "error", "disconnected");
  noPicture("no stream");
}

// -- asking the server -----------------------------------------------------------------------

async function statusOf(url, headers = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), PROBE_TIMEOUT_MS);
  try {
    const response = await fetch(url, { headers, cache: "no-store", signal: controller.signal });
    return { status: response.status, retryAfterS: Number(response.headers.get("Retry-After")) || null };
  } catch {
    return { status: null, retryAfterS: null };
  } finally {
    clearTimeout(timer);
  }
}

/** Whether the session lives: true (200), false (404), null (no answer). */
async function sessionLives() {
  const { status } = await statusOf(`/v1/sessions/${encodeURIComponent(viewer.sessionId)}/frames`);
  return status === 200 ? true : status === 404 ? false : null;
}

function watchSocketPath() {
  return `/v1/sessions/${encodeURIComponent(viewer.sessionId)}/watch`;
}

// -- playing ---------------------------------------------------------------------------------

/** Tears down the current connection, if any, and any pending timer. */
function stop() {
  clearTimeout(viewer.timer);
  clearTimeout(viewer.probing);
  viewer.timer = null;
  viewer.probing = null;
  const transport = viewer.transport;
  viewer.transport = null;
  if (transport) transport.close();
  if (viewer.draining) viewer.draining.close();
  viewer.draining = null;
}

/** Starts watching: WHEP first unless told otherwise or WebRTC is missing. */
function start({ reconnecting = false } = {}) {
  stop();
  if (!reconnecting) {
    viewer.attempt = 0;
    clearNotice();
  }
  model.reset();
  renderSegment();
  setState(reconnecting ? "reconnecting" : "connecting");
  setBadge(ui, reconnecting ? "reconnecting" : "connecting", reconnecting ? "reconnecting" : "connecting…");
  ui.placeholder.textContent = "waiting for video…";
  if (viewer.mode !== "fmp4" && typeof RTCPeerConnection === "function") startWhep();
  else startFmp4(viewer.mode === "fmp4" ? "" : "no WebRTC in this browser");
}

function startWhep() {
  showPath("whep");
  setStatus(ui, "connecting over WHEP…");
  const transport = new WhepViewer({
    video: ui.video,
    sessionId: viewer.sessionId,
    watchToken: viewer.watchToken,
    accessToken: viewer.accessToken,
    onEvent: (type, detail) => onTransportEvent(transport, onWhepEvent, type, detail),
  });
  viewer.transport = transport;
  transport.start();
}

// The events after which a transport is done: the page lets go of it before deciding what comes next.
const FINAL_EVENTS = new Set(["failed", "lost", "closed"]);

/** What both paths' events share, while `transport` is the page's: sound, and letting go of it. */
function onTransportEvent(transport, handle, type, detail = {}) {
  if (viewer.transport !== transport) return;
  if (type === "sound") sound.setAvailable(detail.available);
  else {
    if (FINAL_EVENTS.has(type)) viewer.transport = null;
    handle(type, detail);
  }
}

function onWhepEvent(type, detail) {
  switch (type) {
    case "progress":
      if (viewer.state !== "playing") setStatus(ui, `connecting over WHEP: ${detail.text}`);
      break;
    case "connected":
      viewer.connectedAt = performance.now();
      playing();
      break;
    case "failed":
      if (detail.status === 401) refused(401);
      else if (viewer.mode === "whep") {
        if ([404, 503].includes(detail.status)) refused(detail.status, detail);
        else {
          // 409: the owner is not on WebRTC, so there is no stream to send over WHEP; the watch socket has it.
          const title = detail.status === 409 ? "This session has no WHEP stream" : "WHEP did not work";
          failed(title, detail.text, detail.status ? String(detail.status) : "whep", [useFmp4]);
        }
      } else {
        console.info(`${detail.text}; falling back to the fMP4 watch socket`);
        startFmp4(`fallback: ${detail.status ? `WHEP HTTP ${detail.status}` : detail.text}`);
      }
      break;
    case "lost":
      lost(detail.text);
      break;
    case "stalled":
      probeWhileStalled();
      break;
    case "flowing":
      clearTimeout(viewer.probing);
      viewer.probing = null;
      setStatus(ui, `watching over ${LABELS.whep}`);
      setBadge(ui, "live", "live · WHEP");
      break;
    default:
      break;
  }
}

/** No WHEP video for a while: has the session ended, or is it only quiet (paused by its owner)? */
function probeWhileStalled() {
  const transport = viewer.transport;
  const check = async () => {
    const lives = await sessionLives();
    if (viewer.transport !== transport) return;
    if (lives === false) {
      ended(null);
      return;
    }
    setStatus(ui, "no new video: the session is live but sends nothing now (its owner may have paused it)");
    setBadge(ui, "paused", "quiet · WHEP");
    viewer.probing = setTimeout(check, PROBE_EVERY_MS);
  };
  check();
}

function startFmp4(note) {
  showPath("fmp4", note);
  setStatus(ui, "connecting to the watch socket…");
  let opened = false;
  const handle = (type, detail) => {
    if (type === "connected") opened = true;
    onWatchEvent(type, detail, opened);
  };
  const transport = new WebSocketTransport({
    video: ui.video,
    init: null,
    path: watchSocketPath(),
    token: viewer.watchToken,
    onMessage: (message) => {
      if (viewer.transport === transport) onWatchMessage(message);
    },
    onEvent: (type, detail) => onTransportEvent(transport, handle, type, detail),
  });
  viewer.transport = transport;
  transport.start();
}

function onWatchMessage(message) {
  model.apply(message);
  if (message.type === "ltx2_segment_start" || message.type === "media_init") {
    viewer.connectedAt = viewer.connectedAt || performance.now();
    playing();
  } else if (message.type === "ltx2_stream_complete") {
    ended(message.reason || null);
    return;
  }
  renderSegment();
}

function onWatchEvent(type, detail, opened) {
  switch (type) {
    case "connected":
      viewer.connectedAt = performance.now();
      setStatus(ui, "connected to the watch socket: waiting for the next segment");
      setBadge(ui, "connecting", "connected · fMP4");
      break;
    case "failed":
      if (!opened) diagnoseWatchSocket(detail.text);
      else if (/^playback error/.test(detail.text)) failed("Playback failed", detail.text, "playback");
      else lost(detail.text);
      break;
    case "closed":
      if (model.endReason !== null) ended(model.endReason);
      else lost(detail.text);
      break;
    default:
      break;
  }
}

/** A watch socket that never opened: the same URL over HTTP says why (see the top of this file). */
async function diagnoseWatchSocket(text) {
  const { status, retryAfterS } = await statusOf(watchSocketPath(), authHeaders(viewer.watchToken));
  if (viewer.transport !== null) return; // started again meanwhile
  if (status === 401 || status === 404 || status === 503) refused(status, { retryAfterS });
  else failed("Could not open the watch socket", `${text}${status ? ` (HTTP ${status} without the upgrade)` : ""}`, "socket");
}

/** The connection went away: the session ended, or reconnect (the schedule in RECONNECT_DELAYS_MS). */
async function lost(text) {
  if (viewer.state === "ended") return;
  if (performance.now() - viewer.connectedAt > STEADY_MS) viewer.attempt = 0;
  setState("reconnecting");
  setStatus(ui, `connection lost (${text}): checking the session`);
  const lives = await sessionLives();
  if (viewer.transport !== null || viewer.state !== "reconnecting") return;
  if (lives === false) {
    ended(model.endReason);
    return;
  }
  if (viewer.attempt >= RECONNECT_DELAYS_MS.length) {
    failed("Connection lost", `${text}; gave up after ${viewer.attempt} attempts to reconnect`, "lost");
    return;
  }
  const delay = RECONNECT_DELAYS_MS[viewer.attempt];
  viewer.attempt += 1;
  setStatus(ui, `connection lost (${text}): reconnecting (attempt ${viewer.attempt} of ${RECONNECT_DELAYS_MS.length})`);
  setBadge(ui, "reconnecting", "reconnecting");
  announce(ui, "Connection lost; reconnecting.");
  viewer.timer = setTimeout(() => start({ reconnecting: true }), delay);
}

// -- start -----------------------------------------------------------------------------------

async function main() {
  const query = new URLSearchParams(location.search);
  viewer.sessionId = query.get("session") || "";
  viewer.watchToken = query.get("token") || "";
  const mode = (query.get("transport") || "auto").toLowerCase();
  const stats = new StatsOverlay(document, ui.video, () => ({ model, transport: viewer.transport }));
  // For debugging and tests.
  window.watchClient = {
    viewer,
    model,
    frames: () => stats.counter.frames,
    path: () => viewer.path,
    state: () => viewer.state,
  };
  const hidePlaceholder = () => {
    ui.placeholder.hidden = true;
  };
  ui.video.addEventListener("playing", hidePlaceholder);
  ui.video.addEventListener("loadeddata", hidePlaceholder);
  window.addEventListener("pagehide", () => {
    const transport = viewer.transport;
    viewer.transport = null;
    if (transport) transport.leave();
  });
  if (!viewer.sessionId || !viewer.watchToken) {
    setState("refused");
    notice({ kind: "error", title: "This watch link is incomplete", detail: "A watch link names a session and its token: /watch?session=…&token=…. Ask the session's owner for the whole link." }, "incomplete");
    setStatus(ui, "this watch link is incomplete", "error");
    setBadge(ui, "error", "bad link");
    noPicture("no stream");
    return;
  }
  if (!["auto", "whep", "fmp4"].includes(mode)) {
    setState("failed");
    setStatus(ui, `unknown transport "${mode}": use &transport=whep or &transport=fmp4`, "error");
    setBadge(ui, "error", "not started");
    return;
  }
  viewer.mode = mode;
  ({ token: viewer.accessToken } = await loadAccessToken());
  start();
}

main().catch((error) => {
  console.error(error);
  showNotice(ui, { kind: "error", title: "Page error", detail: String(error && error.message ? error.message : error) });
});
