// The page: picks a transport, runs one session at a time, and wires the controls.
//
// Transport: ?transport=webrtc|ws forces one; without it WebRTC is tried first and the page falls
// back to the WebSocket/MSE path when WebRTC fails to connect within a few seconds of the server's
// answer, or fails later. ?relay=1 makes WebRTC use TURN-relayed paths only (iceTransportPolicy
// "relay"): a check that the TURN server works, and what a viewer behind a strict firewall gets.
// Both transports speak the same control protocol (protocol.js) and share one StreamModel.
//
// Resume: the server names each session and gives it a resume token in session_info (kept here, in
// memory only: it is a bearer credential for the session; a new one comes after every resume). When
// the connection carrying a session that has one drops (a retryable gpu_unavailable/worker_failed
// error, a WebSocket closed other than normally, a peer connection lost, or video that stopped while
// the session's server no longer answers for it), the page shows "reconnecting" and opens a new
// connection over the same transport to its own origin (a router places it on a healthy server)
// with session_init_v2.resume_session, after RESUME_DELAYS_MS. The <video>, its buffered media (the
// WebSocket path keeps its MediaSource) and the controls stay as they are; the status panel goes on
// from the segment the new server continues at. A refused resume (a spent or unknown token: error
// invalid_message naming resume_session, HTTP 400 on the offer) or no server taking it back within
// the attempts ends with a notice and "Start over". This is not the WebRTC -> WebSocket fallback,
// which only happens before a session has its session_info.
// Modules: webrtc_player.js (POST /v1/webrtc/offer, RTP video, data channel "control"),
// ws_player.js (GET /v1/stream, fMP4 into Media Source Extensions; fmp4.js reads the few boxes it
// needs), stats.js (overlay), ui.js (DOM), auth.js (the access token: URL fragment, this tab's
// storage or client-config.json), av_sync.js (A/V offset from the sync clicks and frame markers;
// marker.js reads the marker, click_worklet.js finds the clicks), share.js (the watch link for
// viewers, from session_info.watch_token; the viewer's page is watch.html), recording.js (the
// session's recording: REC, stop/start, the files to download).

import { forgetStoredToken, loadAccessToken } from "./auth.js";
import {
  IMAGE_MIME_TYPES,
  MAX_IMAGE_BYTES,
  StreamModel,
  describeError,
  describeRejection,
  pausedMessage,
  promptMessage,
  rewriteMessage,
  seedPromptsMessage,
  sessionInit,
  snapshotFromFile,
  snapshotMessage,
  toggleMessage,
} from "./protocol.js";
import { AvSync } from "./av_sync.js";
import { RecordingControl } from "./recording.js";
import { ShareControl } from "./share.js";
import { StatsOverlay } from "./stats.js";
import {
  SoundControl,
  TRANSPORT_LABELS,
  announce,
  getUi,
  renderModel,
  renderSeeds,
  setBadge,
  setStatus,
  showNotice,
  showTransport,
} from "./ui.js";
import { WebRtcTransport } from "./webrtc_player.js";
import { WebSocketTransport } from "./ws_player.js";

const STORAGE_KEY = "live-video.settings.v1";
const DEFAULT_SEEDS = [
  "a lighthouse on a rocky coast at dusk, waves rolling in",
  "a neon-lit city street in the rain at night",
  "hot air balloons drifting over autumn forests",
];
const REQUEST_TIMEOUT_MS = 15000; // snapshot / rewrite answers
const INFO_NOTICE_MS = 8000;
// Before each attempt to resume a dropped session (the first at once); then it is given up.
const RESUME_DELAYS_MS = [0, 250, 500, 1000, 2000, 4000];
// An attempt the server has not answered (no message at all) by then is dropped for the next one.
const RESUME_ATTEMPT_TIMEOUT_MS = 10_000;
const MAX_OUTBOX = 50; // control messages kept while reconnecting, sent once the session is back
// Retryable errors that say the session's server went away, not that the session ended.
const DROP_ERRORS = new Set(["gpu_unavailable", "worker_failed"]);

const ui = getUi();
const model = new StreamModel();
// Sound: the page starts muted; the control shows for a stream with sound; the A/V offset is measured
// once the viewer unmutes (the AudioContext needs that gesture).
const avSync = new AvSync(ui.video, { fps: () => (model.stream ? model.stream.fps : null) });
const sound = new SoundControl(ui, ui.video, { onUnmute: () => avSync.start() });
// Share: the watch link for viewers (watch.html), from session_info's watch_token.
const share = new ShareControl(document, { announce: (text) => announce(ui, text) });
// Recording: shown when the server records the session (recording_updated); the files for the owner.
const recording = new RecordingControl(document, { send: (message) => send(message), announce: (text) => announce(ui, text) });

const app = {
  mode: "auto", // "auto" | "webrtc" | "ws"
  relay: false, // ?relay=1: WebRTC through TURN only
  settings: loadSettings(), // persisted: seeds and live toggles
  staged: { singleClip: false, initialImage: null, continuationState: null, continuationFallback: "fresh" },
  applied: { singleClip: false, initialImage: null }, // what the running session started with
  paused: false,
  // {n, kind, init, transport, connected, ended, stopping, errorNotice, fallbackNote,
  //  resume: {sessionId, token} | null (the latest session_info), reconnect: {...} | null while
  //  reconnecting, resumes (done), player (the MsePlayer a resumed WebSocket goes on with), outbox}
  session: null,
  sessions: 0,
  resumeLog: [], // one entry per resume done: {session, kind, reason, attempts, ms, segmentIdx} (tests, debugging)
  startTicket: 0,
  webrtcBroken: false, // WebRTC could not connect here: later sessions go straight to the WebSocket
  lastUserPrompt: null,
  pending: null, // {kind: "snapshot"|"rewrite", message, index?, timer}
  rewrites: new Map(), // seed index -> {busy, alternatives}
  token: null, // access token for the server, null when none was given (auth.js)
  tokenSource: null, // "fragment" | "session" | "client-config" | null
};

// -- settings --------------------------------------------------------------------------------

function loadSettings() {
  const defaults = { seeds: [...DEFAULT_SEEDS], enhancement: false, autoExtension: false, loop: false };
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    if (stored && Array.isArray(stored.seeds)) {
      return {
        seeds: stored.seeds.filter((s) => typeof s === "string"),
        enhancement: Boolean(stored.enhancement),
        autoExtension: Boolean(stored.autoExtension),
        loop: Boolean(stored.loop),
      };
    }
  } catch {
    // storage unavailable or corrupt: defaults
  }
  return defaults;
}

function saveSettings() {
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(app.settings));
  } catch {
    // private mode or quota: settings just do not persist
  }
}

// -- sessions --------------------------------------------------------------------------------

function isLive() {
  return Boolean(app.session && !app.session.ended);
}

function preferredKind() {
  if (app.mode !== "auto") return app.mode;
  if (app.webrtcBroken || typeof RTCPeerConnection === "undefined") return "ws";
  return "webrtc";
}

function buildInit(kind) {
  return sessionInit(
    {
      curatedPrompts: app.settings.seeds,
      enhancement: app.settings.enhancement,
      autoExtension: app.settings.autoExtension,
      loop: app.settings.loop,
      singleClip: app.staged.singleClip,
      initialImage: app.staged.initialImage,
      continuationState: app.staged.continuationState,
      continuationFallback: app.staged.continuationFallback,
    },
    kind === "webrtc" ? "webrtc" : "av_fmp4",
  );
}

/** Ends the running session, if any, politely (the server frees its slot at once). */
async function endSession() {
  const session = app.session;
  if (!session || session.ended) return;
  session.stopping = true;
  session.ended = true;
  stopReconnecting(session);
  recording.ended(); // its files stay listed (the last one is finalised as the session ends)
  await session.transport.stop();
}

/**
 * Starts a new session. `kind` defaults to the preferred transport; `init` reuses an init (a
 * fallback keeps the same settings); `resend` is a prompt to send first; `note` explains the transport.
 */
async function startSession({ kind = preferredKind(), init = null, resend = null, note = "" } = {}) {
  const ticket = ++app.startTicket;
  await endSession();
  if (ticket !== app.startTicket) return; // a later start (e.g. a second click) took over
  const sessionInit = init ? { ...init, stream_mode: kind === "webrtc" ? "webrtc" : "av_fmp4" } : buildInit(kind);
  if (!init) {
    app.applied = { singleClip: app.staged.singleClip, initialImage: app.staged.initialImage };
    app.staged.continuationState = null; // one-shot
  }
  const session = {
    n: ++app.sessions,
    kind,
    init: sessionInit,
    transport: null,
    connected: false,
    ended: false,
    stopping: false,
    errorNotice: null,
    fallbackNote: note,
    resume: null,
    reconnect: null,
    resumes: 0,
    player: null,
    outbox: [],
  };
  openTransport(session, sessionInit);
  app.session = session;
  model.reset();
  avSync.reset();
  onSound({ available: false }); // until the new stream says
  clearPending();
  app.rewrites.clear();
  setPaused(false, { send: false });
  showTransport(ui, kind, note);
  setBadge(ui, "connecting", `connecting · ${TRANSPORT_LABELS[kind]}`);
  setStatus(ui, `connecting over ${TRANSPORT_LABELS[kind]}…`);
  ui.placeholder.hidden = false;
  ui.placeholder.textContent = "waiting for video…";
  if (resend) session.transport.send(promptMessage(resend));
  render();
  updateSessionButtons();
  try {
    await session.transport.start();
  } catch (error) {
    onTransportEvent(session, "failed", { text: `could not start: ${error.message || error}`, retryable: true });
  }
}

/**
 * A connection for `session` over its transport, as its current one. Events and messages from a
 * connection the session has left (a dropped one, an attempt given up) are not heard.
 */
function openTransport(session, init, { resuming = false } = {}) {
  const Transport = session.kind === "webrtc" ? WebRtcTransport : WebSocketTransport;
  const transport = new Transport({
    video: ui.video,
    init,
    onMessage: (message) => {
      if (session.transport === transport) onMessage(session, message);
    },
    onEvent: (type, detail) => {
      if (session.transport === transport) onTransportEvent(session, type, detail);
    },
    token: app.token,
    relay: app.relay,
    resuming,
    player: resuming ? session.player : null,
    idleExpected: () => app.paused || (app.applied.singleClip && !model.generating),
  });
  session.transport = transport;
  return transport;
}

function restart() {
  startSession().catch(reportBug);
}

// -- resuming a dropped session --------------------------------------------------------------

function canResume(session) {
  return Boolean(session.resume) && !session.ended && !session.stopping && model.endReason === null;
}

/** session_init_v2 that resumes `session` where its stored state stands, with the page's current toggles. */
function resumeInit(session) {
  const init = { ...session.init };
  delete init.initial_image; // the session has long started from it
  delete init.continuation_state; // resume_session replaces it (the server refuses both)
  delete init.continuation_fallback; // a refused resume must say so, not start a fresh stream
  return {
    ...init,
    curated_prompts: app.settings.seeds.filter((p) => p.trim() !== ""),
    enhancement_enabled: app.settings.enhancement,
    auto_extension_enabled: app.settings.autoExtension,
    loop_generation_enabled: app.settings.loop,
    resume_session: { session_id: session.resume.sessionId, resume_token: session.resume.token },
  };
}

function onSessionInfo(session, message) {
  if (typeof message.session_id !== "string" || typeof message.resume_token !== "string") return;
  // Memory only, never storage or the URL: whoever holds it can take the session over.
  session.resume = { sessionId: message.session_id, token: message.resume_token };
  session.transport.markResumable(message.session_id);
  share.update(message.session_id, message.watch_token);
  recording.bind(message.session_id, message.resume_token);
  if (session.reconnect) finishReconnecting(session);
}

/**
 * The connection carrying `session` is gone (or an attempt to resume it failed): leave it, keeping
 * the picture (and, over the WebSocket, the MediaSource), and try (again) to resume the session.
 */
function onDrop(session, reason) {
  const player = session.transport.abandon();
  if (player) session.player = player;
  let reconnect = session.reconnect;
  if (!reconnect) {
    reconnect = { reason, noticedAt: performance.now(), attempt: 0, timer: null, attemptTimer: null, answered: false };
    session.reconnect = reconnect;
    console.info(`session ${session.resume.sessionId.slice(0, 8)} dropped (${reason}); resuming`);
    announce(ui, "Connection lost; reconnecting.");
    showTransport(ui, session.kind, "reconnecting");
  }
  clearTimeout(reconnect.attemptTimer);
  if (reconnect.attempt >= RESUME_DELAYS_MS.length) {
    giveUpResume(session, {
      title: "Could not reconnect",
      detail: `No server took the session back after ${reconnect.attempt} attempts (first: ${reconnect.reason}; last: ${reason}).`,
    });
    return;
  }
  const delay = RESUME_DELAYS_MS[reconnect.attempt];
  reconnect.attempt += 1;
  const attempt = `attempt ${reconnect.attempt} of ${RESUME_DELAYS_MS.length}`;
  setStatus(ui, `reconnecting (${attempt}): ${reason}`);
  setBadge(ui, "reconnecting", "reconnecting");
  reconnect.timer = setTimeout(() => attemptResume(session), delay);
  updateSessionButtons();
}

function attemptResume(session) {
  const reconnect = session.reconnect;
  if (session !== app.session || session.ended || !reconnect) return;
  session.connected = false;
  reconnect.answered = false;
  const transport = openTransport(session, resumeInit(session), { resuming: true });
  reconnect.attemptTimer = setTimeout(() => {
    if (session.transport === transport && session.reconnect === reconnect && !reconnect.answered) {
      onDrop(session, `no answer within ${RESUME_ATTEMPT_TIMEOUT_MS / 1000} s`);
    }
  }, RESUME_ATTEMPT_TIMEOUT_MS);
  transport.start().catch((error) => {
    if (session.transport === transport) onDrop(session, `could not start: ${error.message || error}`);
  });
}

/** session_info on the new connection: the session is back. */
function finishReconnecting(session) {
  const reconnect = session.reconnect;
  stopReconnecting(session);
  session.resumes += 1;
  model.lastError = null; // the error that announced the drop is over
  app.resumeLog.push({
    session: session.n,
    kind: session.kind,
    reason: reconnect.reason,
    attempts: reconnect.attempt,
    ms: Math.round(performance.now() - reconnect.noticedAt),
    segmentIdx: model.segmentIdx,
  });
  // The page's own choices win over whatever the server restored (a change may not have reached it).
  const transport = session.transport;
  transport.send(toggleMessage("enhancement", app.settings.enhancement));
  transport.send(toggleMessage("autoExtension", app.settings.autoExtension));
  transport.send(toggleMessage("loop", app.settings.loop));
  transport.send(pausedMessage(app.paused));
  for (const message of session.outbox.splice(0)) transport.send(message);
  showTransport(ui, session.kind, session.resumes > 1 ? `resumed ×${session.resumes}` : "resumed");
  announce(ui, "Reconnected; the stream goes on.");
  updateSessionButtons();
}

function stopReconnecting(session) {
  const reconnect = session.reconnect;
  if (!reconnect) return;
  clearTimeout(reconnect.timer);
  clearTimeout(reconnect.attemptTimer);
  session.reconnect = null;
}

/** Ends a session that could not be resumed: says why and offers to start over. */
function giveUpResume(session, { title, detail, code = null }) {
  stopReconnecting(session);
  session.ended = true;
  const player = session.transport.abandon();
  if (player) session.player = player;
  if (session.player) session.player.end(); // what is buffered plays out
  session.resume = null;
  session.errorNotice = showNotice(ui, {
    kind: "error",
    title,
    code,
    detail,
    actions: [{ label: "Start over", id: "restart", primary: true, run: restart }],
  });
  setStatus(ui, `${title}: ${detail}`, "error");
  setBadge(ui, "error", "disconnected");
  showTransport(ui, session.kind, "not resumed");
  ui.placeholder.textContent = "no stream";
  ui.placeholder.hidden = ui.video.readyState >= 2;
  updateSessionButtons();
}

/** Whether a failed attempt to resume was refused for good (trying again cannot help). */
function resumeRefusal(detail) {
  const status = detail.status;
  if (status === 400 || status === 401 || status === 403) return true;
  if (detail.code === 1003 || detail.code === 4401 || detail.code === 1009) return true;
  return Boolean(detail.error && detail.error.code === "unauthorized");
}

function onTransportEvent(session, type, detail = {}) {
  if (session !== app.session) return; // a session already replaced
  const reconnecting = Boolean(session.reconnect);
  switch (type) {
    case "progress":
      if (reconnecting) setStatus(ui, `reconnecting (attempt ${session.reconnect.attempt}): ${detail.text}`);
      else if (!session.connected) setStatus(ui, `connecting over ${TRANSPORT_LABELS[session.kind]}: ${detail.text}`);
      else setStatus(ui, detail.text);
      break;
    case "connected":
      session.connected = true;
      if (reconnecting) {
        setStatus(ui, `reconnecting: connected over ${TRANSPORT_LABELS[session.kind]}, resuming the session`);
        break;
      }
      setBadge(ui, "connecting", `connected · ${TRANSPORT_LABELS[session.kind]}`);
      setStatus(ui, `connected over ${TRANSPORT_LABELS[session.kind]}, waiting for the stream`);
      announce(ui, `Connected over ${TRANSPORT_LABELS[session.kind]}.`);
      render(); // messages may have come first
      break;
    case "failed":
      onTransportFailed(session, detail);
      break;
    case "sound":
      onSound(detail);
      break;
    case "closed":
      if (reconnecting && model.endReason === null) {
        onDrop(session, `closed: ${detail.text}`); // an attempt closed before the session came back
        break;
      }
      session.ended = true;
      if (!session.stopping && model.endReason === null) {
        setStatus(ui, `connection closed: ${detail.text}`);
        setBadge(ui, "ended", "ended");
      }
      updateSessionButtons();
      break;
    default:
      break;
  }
}

/** Whether the stream on the <video> has sound ({available, stream}: WebRTC's MediaStream, else MSE). */
function onSound({ available, stream = null }) {
  sound.setAvailable(available);
  avSync.setSource(available ? (stream ? { stream } : { element: true }) : null);
}

function onTransportFailed(session, detail) {
  if (session.stopping) return;
  if (session.reconnect) {
    // An attempt to resume failed: refused for good, or try the next one.
    if (resumeRefusal(detail)) {
      const described = detail.error ? describeError(detail.error) : null;
      if (described && described.code === "unauthorized") forgetStoredToken();
      giveUpResume(session, {
        title: described && described.code === "unauthorized" ? described.title : "The session could not be resumed",
        detail: detail.text,
        code: described ? described.code : null,
      });
    } else {
      onDrop(session, detail.text);
    }
    return;
  }
  if (detail.drop && canResume(session)) {
    onDrop(session, detail.text);
    return;
  }
  session.ended = true;
  if (detail.fallback && app.mode === "auto" && session.kind === "webrtc" && model.endReason === null) {
    if (detail.connectivity) app.webrtcBroken = true;
    const reason = detail.text;
    console.info(`WebRTC failed (${reason}); falling back to the WebSocket/MSE path`);
    announce(ui, "WebRTC did not work; switching to the WebSocket stream.");
    // Mid-stream, the scene goes on with the last prompt the viewer typed.
    const resend = session.connected ? app.lastUserPrompt : null;
    setStatus(ui, `WebRTC failed (${reason}); switching to WebSocket…`);
    Promise.resolve(session.transport.released)
      .then(() => {
        if (app.session === session) return startSession({ kind: "ws", init: session.init, resend, note: `fallback: ${reason}` });
        return null;
      })
      .catch(reportBug);
    return;
  }
  const described = detail.error ? describeError(detail.error) : null;
  const unauthorized = Boolean(described && described.code === "unauthorized");
  if (unauthorized) forgetStoredToken(); // a reload must not present a refused token again
  const retryable = !unauthorized && detail.retryable !== false && (described ? described.retryable || detail.status >= 500 : true);
  let text = detail.text;
  if (session.errorNotice) {
    // The server already said why (e.g. error{session_rejected} before close 1013): add the close to it.
    session.errorNotice.append(detail.text);
    const last = model.lastError;
    if (last) text = `error (${last.code}): ${last.message}; ${detail.text}`;
  } else {
    const title = described ? described.title : session.connected ? "Connection lost" : "Could not connect";
    const wait = detail.retryAfterS ? ` The server suggests retrying in ${detail.retryAfterS} s.` : "";
    const hint = described && described.hint ? ` ${described.hint}` : "";
    let actions = [];
    // Starting again with the same refused token cannot work: no Retry, no Restart.
    if (retryable) actions = [{ label: "Retry", id: "retry", primary: true, run: restart }];
    else if (!unauthorized) actions = [{ label: "Restart", id: "restart", run: restart }];
    session.errorNotice = showNotice(ui, {
      kind: "error",
      title,
      code: described ? described.code : null,
      detail: `${detail.text}.${wait}${hint}`,
      actions,
    });
  }
  if (unauthorized) text = described.title; // the notice has the server's words
  setStatus(ui, text, "error");
  setBadge(ui, "error", unauthorized ? "not authorized" : "disconnected");
  ui.placeholder.textContent = "no stream";
  ui.placeholder.hidden = ui.video.readyState >= 2;
  updateSessionButtons();
}

function onMessage(session, message) {
  if (session !== app.session) return;
  const reconnect = session.reconnect;
  if (reconnect && !reconnect.answered) {
    reconnect.answered = true; // a server has the attempt: its own answers decide from here
    clearTimeout(reconnect.attemptTimer);
  }
  if (message.type === "error" && onErrorWhileResumable(session, message)) return;
  const change = model.apply(message);
  switch (message.type) {
    case "error":
      onServerError(session, message);
      break;
    case "session_info":
      onSessionInfo(session, message);
      break;
    case "recording_updated":
      recording.update(message.enabled);
      break;
    case "prompt_rejected": {
      const { title, detail } = describeRejection(message);
      showNotice(ui, {
        kind: "warning",
        title,
        detail,
        actions: [{ label: "Edit prompt", id: "edit", primary: true, run: () => editPrompt(message.prompt) }],
      });
      if (model.nextPrompt && model.nextPrompt.prompt === message.prompt) model.nextPrompt = null;
      break;
    }
    case "prompt_received":
      announce(ui, `Prompt received for segment ${message.segment_idx ?? "next"}.`);
      break;
    case "continuation_state_snapshot":
      onSnapshot(message.state);
      break;
    case "rewrite_seed_prompts_started":
      break;
    case "rewrite_seed_prompts_complete":
      onRewriteComplete(message);
      break;
    case "ltx2_stream_complete":
      onStreamComplete(session, message.reason);
      break;
    case "session_timeout":
      session.ended = true;
      stopReconnecting(session);
      recording.ended();
      showNotice(ui, {
        kind: "warning",
        title: "Session ended",
        detail: `No input for ${message.timeout_seconds} s, so the server closed the session.`,
        actions: [{ label: "Restart", id: "restart", primary: true, run: restart }],
      });
      break;
    default:
      break;
  }
  if (change.promptChanged && model.segmentPrompt !== null) {
    announce(ui, `Now generating: ${model.segmentPrompt}`);
  }
  if (message.type === "ltx2_segment_start" && message.segment_idx === 0) ui.placeholder.textContent = "first segment on its way…";
  render();
}

/**
 * An error that is about the session's connection rather than a request: the server went away
 * (resume), or, while resuming, the attempt was refused. True when handled here.
 */
function onErrorWhileResumable(session, message) {
  if (session.reconnect) {
    // Every server full right now is worth the next attempt of the bounded resume schedule.
    if (message.retryable || message.code === "session_rejected") {
      onDrop(session, `error (${message.code}): ${message.message}`); // e.g. no healthy server yet
    } else {
      const described = describeError(message);
      if (described.code === "unauthorized") forgetStoredToken();
      const refused = message.code === "invalid_message" && /resume_session/.test(String(message.message));
      giveUpResume(session, {
        title: refused ? "The session could not be resumed" : described.title,
        detail: described.detail,
        code: described.code,
      });
    }
    return true;
  }
  if (message.retryable && DROP_ERRORS.has(message.code) && canResume(session)) {
    model.apply(message);
    onDrop(session, `error (${message.code}): ${message.message}`);
    return true;
  }
  return false;
}

function onServerError(session, message) {
  const described = describeError(message);
  if (described.code === "unauthorized") forgetStoredToken();
  const actions = [];
  const pending = app.pending;
  const forRewrite = pending && pending.kind === "rewrite" && (/rewrit/i.test(message.message) || message.code === "invalid_message");
  const forSnapshot = pending && pending.kind === "snapshot" && /snapshot/i.test(message.message);
  if (forRewrite) {
    app.rewrites.delete(pending.index);
    clearPending();
    renderSeedList();
  } else if (forSnapshot) {
    clearPending();
  }
  if (described.retryable) {
    const retry = forSnapshot || forRewrite ? () => sendRequest(pending.kind, pending.message, pending.index) : restart;
    actions.push({ label: "Retry", id: "retry", primary: true, run: retry });
  }
  if (/continuation_state/i.test(message.message) && !described.retryable) {
    actions.push({ label: "Start fresh", id: "fresh", primary: true, run: restart });
  }
  const detail = [described.detail, described.hint].filter(Boolean).join(" ");
  const notice = showNotice(ui, { kind: "error", title: described.title, code: described.code, detail, actions });
  if (!forRewrite && !forSnapshot) session.errorNotice = notice;
}

function onStreamComplete(session, reason) {
  session.ended = true;
  stopReconnecting(session);
  recording.ended();
  const texts = {
    segment_cap: "stream complete: the segment limit was reached",
    stop_requested: "stopped",
    error: "stream ended by an error",
  };
  const text = texts[reason] || `stream complete: ${reason}`;
  if (reason === "error") {
    const last = model.lastError;
    setStatus(ui, last ? `error (${last.code}): ${last.message}; stream ended` : text, "error");
    setBadge(ui, "error", "ended by an error");
  } else {
    setStatus(ui, text);
    setBadge(ui, "ended", reason === "stop_requested" ? "stopped" : "complete");
  }
  announce(ui, text);
  updateSessionButtons();
}

// -- status ----------------------------------------------------------------------------------

function render() {
  renderModel(ui, model, { enhancement: app.settings.enhancement });
  const session = app.session;
  if (!session || session.ended || !session.connected || session.reconnect) return;
  const label = TRANSPORT_LABELS[session.kind];
  if (model.queuePosition > 0) {
    setStatus(ui, `waiting in the queue: position ${model.queuePosition}`);
    setBadge(ui, "queued", `queued #${model.queuePosition}`);
  } else if (model.segmentIdx === null) {
    setStatus(ui, model.gpuId === null ? "admitted, starting" : `starting on GPU ${model.gpuId}`);
    setBadge(ui, "connecting", "starting");
  } else if (app.paused) {
    setStatus(ui, "paused: no new segments until you resume");
    setBadge(ui, "paused", `paused · ${label}`);
  } else if (app.applied.singleClip && !model.generating && !model.nextPrompt) {
    setStatus(ui, "single clip done: send a prompt for the next one");
    setBadge(ui, "paused", `waiting · ${label}`);
  } else {
    setStatus(ui, `streaming over ${label}`);
    setBadge(ui, "live", `live · ${label}`);
  }
}

function updateSessionButtons() {
  const live = isLive();
  share.keepFor(live && app.session.resume ? app.session.resume.sessionId : null); // no link for an ended or new session
  ui.stop.disabled = !live;
  ui.snapshot.disabled = !live || (app.pending && app.pending.kind === "snapshot");
  ui.restart.textContent = live ? "Restart" : "Start";
  const changed = app.staged.singleClip !== app.applied.singleClip || app.staged.initialImage !== app.applied.initialImage;
  ui.restart.classList.toggle("attention", changed);
  ui.sessionHint.textContent = changed
    ? "Restart to apply the changed session settings."
    : "Single clip and the initial image apply when the session restarts.";
}

function reportBug(error) {
  console.error(error);
  showNotice(ui, { kind: "error", title: "Page error", detail: String(error && error.message ? error.message : error) });
}

// -- requests with answers (snapshot, rewrite) -----------------------------------------------

function clearPending() {
  if (app.pending && app.pending.timer) clearTimeout(app.pending.timer);
  app.pending = null;
  updateSessionButtons();
}

function send(message) {
  const session = app.session;
  if (!session || session.ended) return false;
  if (session.reconnect) {
    // Sent once the session is back (toggles and pause are sent again then anyway).
    if (session.outbox.length < MAX_OUTBOX) session.outbox.push(message);
    return true;
  }
  return session.transport.send(message);
}

function sendRequest(kind, message, index = null) {
  if (!send(message)) {
    showNotice(ui, { kind: "warning", title: "Not connected", detail: "Start a session first.", actions: [{ label: "Start", id: "restart", run: restart }] });
    return;
  }
  clearPending();
  const timer = setTimeout(() => {
    if (app.pending && app.pending.message === message) {
      if (kind === "rewrite") app.rewrites.delete(index);
      clearPending();
      renderSeedList();
      showNotice(ui, { kind: "warning", title: "No answer", detail: `The server did not answer the ${kind} request.` });
    }
  }, REQUEST_TIMEOUT_MS);
  app.pending = { kind, message, index, timer };
  if (kind === "rewrite") {
    app.rewrites.set(index, { busy: true, alternatives: [] });
    renderSeedList();
  }
  updateSessionButtons();
}

function onSnapshot(state) {
  clearPending();
  const segment = model.lastCompleteIdx;
  const file = {
    format: "live-video-snapshot",
    version: 1,
    saved_at: new Date().toISOString(),
    segment_idx: segment,
    prompt: model.segmentPrompt,
    state,
  };
  const blob = new Blob([JSON.stringify(file, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `snapshot-segment-${segment ?? 0}.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  showNotice(ui, {
    kind: "info",
    title: "Snapshot saved",
    detail: `${link.download} (after segment ${segment ?? "?"}). Choose it under “Resume from a snapshot file” to continue from here later.`,
    timeoutMs: INFO_NOTICE_MS,
  });
}

function onRewriteComplete(message) {
  const pending = app.pending;
  let index = pending && pending.kind === "rewrite" ? pending.index : -1;
  if (app.settings.seeds[index] !== message.seed_prompt) {
    const found = app.settings.seeds.indexOf(message.seed_prompt);
    if (found >= 0) index = found;
  }
  if (pending && pending.kind === "rewrite") clearPending();
  if (index < 0) return;
  const alternatives = (message.alternatives || []).filter((a) => typeof a === "string" && a.trim());
  app.rewrites.set(index, { busy: false, alternatives });
  renderSeedList();
  announce(ui, alternatives.length ? `${alternatives.length} variations of seed prompt ${index + 1} to choose from.` : "No variations came back.");
}

// -- controls --------------------------------------------------------------------------------

function editPrompt(text) {
  ui.prompt.value = text;
  ui.prompt.focus();
  ui.prompt.select();
}

function submitPrompt(text, source = "user") {
  const prompt = text.trim();
  if (!prompt) return false;
  if (source === "user") app.lastUserPrompt = prompt;
  if (!isLive()) {
    startSession({ resend: prompt }).catch(reportBug);
    return true;
  }
  if (!send(promptMessage(prompt, source))) {
    showNotice(ui, { kind: "warning", title: "Prompt not sent", detail: "The session is not connected.", actions: [{ label: "Restart", id: "restart", run: restart }] });
    return false;
  }
  return true;
}

function setPaused(paused, { send: shouldSend = true } = {}) {
  app.paused = paused;
  ui.pause.checked = paused;
  if (shouldSend) {
    send(pausedMessage(paused));
    announce(ui, paused ? "Generation paused." : "Generation resumed.");
  }
  render();
}

function setSeeds(seeds, { send: shouldSend = true } = {}) {
  app.settings.seeds = seeds;
  saveSettings();
  if (shouldSend) send(seedPromptsMessage(seeds));
  renderSeedList();
}

function renderSeedList() {
  renderSeeds(ui, app.settings.seeds, app.rewrites, {
    edit(i, text) {
      const value = text.trim();
      if (value === app.settings.seeds[i]) return;
      const seeds = [...app.settings.seeds];
      if (value) seeds[i] = value;
      else seeds.splice(i, 1);
      app.rewrites.delete(i);
      setSeeds(seeds);
    },
    play(i) {
      const text = app.settings.seeds[i];
      if (text && submitPrompt(text, "curated")) announce(ui, `Seed prompt ${i + 1} sent.`);
    },
    rewrite(i) {
      const text = app.settings.seeds[i];
      if (text) sendRequest("rewrite", rewriteMessage(text, 3), i);
    },
    remove(i) {
      const seeds = app.settings.seeds.filter((_, k) => k !== i);
      app.rewrites.clear();
      setSeeds(seeds);
      const next = document.getElementById(`seed-${Math.min(i, seeds.length - 1)}`);
      (next || ui.seedNew).focus();
    },
    use(i, alternative) {
      const seeds = [...app.settings.seeds];
      seeds[i] = alternative;
      app.rewrites.delete(i);
      setSeeds(seeds);
      const input = document.getElementById(`seed-${i}`);
      if (input) input.focus();
      announce(ui, `Seed prompt ${i + 1} replaced.`);
    },
  });
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error || new Error("cannot read the file"));
    reader.readAsDataURL(file);
  });
}

async function onImageChosen() {
  const file = ui.initialImage.files && ui.initialImage.files[0];
  if (!file) return;
  if (!IMAGE_MIME_TYPES.includes(file.type)) {
    showNotice(ui, { kind: "warning", title: "Unsupported image", detail: `${file.name}: use PNG, JPEG or WebP.` });
    ui.initialImage.value = "";
    return;
  }
  if (file.size > MAX_IMAGE_BYTES) {
    showNotice(ui, { kind: "warning", title: "Image too large", detail: `${file.name} is over 32 MiB.` });
    ui.initialImage.value = "";
    return;
  }
  const data = await readAsBase64(file);
  app.staged.initialImage = { mime: file.type, name: file.name, data };
  ui.imageThumb.src = `data:${file.type};base64,${data}`;
  ui.imageThumb.alt = `Initial image ${file.name}`;
  ui.imageName.textContent = file.name;
  ui.imagePreview.hidden = false;
  updateSessionButtons();
  announce(ui, `${file.name} will start the next session. Restart to use it.`);
}

async function onResumeChosen() {
  const file = ui.resumeFile.files && ui.resumeFile.files[0];
  ui.resumeFile.value = ""; // the same file may be chosen again later
  if (!file) return;
  let state = null;
  try {
    state = snapshotFromFile(JSON.parse(await file.text()));
  } catch {
    state = null;
  }
  if (!state) {
    showNotice(ui, { kind: "error", title: "Not a snapshot", detail: `${file.name} does not hold a continuation state ({kind, payload}).` });
    return;
  }
  app.staged.continuationState = state;
  app.staged.continuationFallback = ui.resumeFresh.checked ? "fresh" : "error";
  announce(ui, `Resuming from ${file.name}.`);
  await startSession();
}

function wireControls() {
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (submitPrompt(ui.prompt.value)) ui.prompt.value = "";
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Escape") ui.prompt.value = "";
  });
  const toggles = [
    [ui.enhancement, "enhancement"],
    [ui.autoExtension, "autoExtension"],
    [ui.loop, "loop"],
  ];
  for (const [input, key] of toggles) {
    input.checked = app.settings[key];
    input.addEventListener("change", () => {
      app.settings[key] = input.checked;
      saveSettings();
      send(toggleMessage(key, input.checked));
      render();
    });
  }
  ui.pause.addEventListener("change", () => setPaused(ui.pause.checked));
  ui.seedAdd.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.seedNew.value.trim();
    if (!text) return;
    setSeeds([...app.settings.seeds, text]);
    ui.seedNew.value = "";
    announce(ui, `Seed prompt ${app.settings.seeds.length} added.`);
  });
  ui.stop.addEventListener("click", async () => {
    const session = app.session;
    if (!session || session.ended) return;
    await endSession();
    setStatus(ui, "stopped");
    setBadge(ui, "ended", "stopped");
    announce(ui, "Stream stopped.");
    updateSessionButtons();
    ui.restart.focus();
  });
  ui.restart.addEventListener("click", restart);
  ui.snapshot.addEventListener("click", () => sendRequest("snapshot", snapshotMessage()));
  ui.singleClip.addEventListener("change", () => {
    app.staged.singleClip = ui.singleClip.checked;
    updateSessionButtons();
  });
  ui.initialImage.addEventListener("change", () => onImageChosen().catch(reportBug));
  ui.imageClear.addEventListener("click", () => {
    app.staged.initialImage = null;
    ui.initialImage.value = "";
    ui.imagePreview.hidden = true;
    ui.imageThumb.removeAttribute("src");
    updateSessionButtons();
    ui.initialImage.focus();
  });
  ui.resumeFile.addEventListener("change", () => onResumeChosen().catch(reportBug));
  ui.resumeFresh.addEventListener("change", () => {
    app.staged.continuationFallback = ui.resumeFresh.checked ? "fresh" : "error";
  });
  const hidePlaceholder = () => {
    ui.placeholder.hidden = true;
  };
  ui.video.addEventListener("playing", hidePlaceholder);
  ui.video.addEventListener("loadeddata", hidePlaceholder);
}

async function main() {
  // First: take a token out of the address bar before anything else can read or show it.
  const access = loadAccessToken();
  const query = new URLSearchParams(location.search);
  const requested = query.get("transport");
  app.relay = ["1", "true", "yes"].includes((query.get("relay") || "").toLowerCase());
  const mode = requested === null || requested === "" ? "auto" : requested.toLowerCase();
  wireControls();
  renderSeedList();
  updateSessionButtons();
  const stats = new StatsOverlay(document, ui.video, () => ({ model, transport: app.session ? app.session.transport : null, avSync }));
  // For debugging and tests.
  window.liveClient = {
    app,
    model,
    frames: () => stats.counter.frames,
    transport: () => (app.session ? app.session.kind : null),
    reconnecting: () => Boolean(app.session && app.session.reconnect),
    resumes: () => app.resumeLog,
    // The sound control and the A/V measurement: {available, muted, volume, context, level, offsets, ...}.
    sound: () => ({ available: !ui.sound.hidden, muted: ui.video.muted, volume: ui.video.volume, ...avSync.debug() }),
    // Feeds a server message to the page as if it had arrived (tests of answers this server cannot give yet).
    inject: (message) => app.session && onMessage(app.session, message),
  };
  if (!["auto", "webrtc", "ws"].includes(mode)) {
    showTransport(ui, "none", `unknown transport "${requested}"`);
    setStatus(ui, `unknown transport "${requested}": use ?transport=webrtc or ?transport=ws`, "error");
    setBadge(ui, "error", "not started");
    return;
  }
  app.mode = mode;
  ({ token: app.token, source: app.tokenSource } = await access);
  window.addEventListener("pagehide", () => {
    const session = app.session;
    if (session && !session.ended) {
      session.stopping = true;
      session.transport.leave();
    }
  });
  await startSession();
}

main().catch(reportBug);
